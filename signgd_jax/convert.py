"""The model transformer: a trained network and calibration data in, an SNN pytree out.

    trained variables --fold BN--> --trace once--> --calibrate--> --probe A(1), A(0)--> SNN

* BatchNorm (eval mode) is folded into the preceding convolution or dense layer.
* The network is traced to one jaxpr, at the shape of the first calibration batch; every later
  pass (calibration, probe) evaluates that jaxpr.
* Calibration runs the ANN over the caller's batches and records, per site and per position
  of one sample, the maximum, minimum and mean of its output; the dynamics turns these into
  each site's units (paper mode: ReLU scaling; improved mode: calibrated ranges;
  :mod:`signgd_jax.dynamics`).
* The probe pass sets the codec output and every neuron output to ones, then zeros, and records
  each neuron input (``A(1)``, ``A(0)``) and the logits (for the decoder).
"""
from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from signgd_jax import interpret
from signgd_jax.codecs import check_codec
from signgd_jax.dynamics import NAMES, Dynamics, Statistics
from signgd_jax.dynamics import get as get_dynamics
from signgd_jax.expand import expanded
from signgd_jax.fold import fold_batch_norm
from signgd_jax.frontends import as_apply_fn, model_and_variables
from signgd_jax.kinds import ann_op
from signgd_jax.schedules import make_schedule
from signgd_jax.types import SNN, Decoder, Site, site_name

__all__ = ["convert", "SNN", "NAMES", "site_name", "calibration_arrays", "as_apply_fn"]

_IMAGE_KEYS = ("image", "images", "x", "inputs")


def _as_images(batch, position: int):
    if isinstance(batch, dict):
        key = next((k for k in _IMAGE_KEYS if k in batch), None)
        if key is None:
            raise TypeError(f"calibration batch {position} is a dict without an image entry "
                            f"(expected one of {', '.join(_IMAGE_KEYS)}; got keys {sorted(batch)})")
        batch = batch[key]
    elif isinstance(batch, (tuple, list)) and len(batch) == 2 and hasattr(batch[0], "shape"):
        batch = batch[0]  # (images, labels)
    if not hasattr(batch, "shape") or np.ndim(batch) < 2:
        raise TypeError(f"calibration batch {position} is not an image batch: expected an array "
                        f"[batch, ...], an (images, labels) pair or a dict with 'image'; got {type(batch).__name__}"
                        + (f" of shape {np.shape(batch)}" if hasattr(batch, "shape") else ""))
    images = jnp.asarray(batch, jnp.float32)
    if not isinstance(images, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(images))):
        raise ValueError(f"calibration batch {position} contains NaN or Inf values")
    return images


def layout_hint(shape) -> str | None:
    """A one-line hint when an image batch looks channels-first ([batch, C, H, W]), else None."""
    if len(shape) == 4 and shape[1] in (1, 3, 4) and shape[-1] not in (1, 3, 4) and shape[2] > 4:
        return (f"the images have shape {tuple(shape)}, which looks like [batch, C, H, W]; Flax models take "
                "[batch, H, W, C]: transpose them with images.transpose(0, 2, 3, 1)")
    return None


def calibration_arrays(calibration_batches) -> list:
    """The calibration images as a list of float32 arrays ``[batch, ...]``.

    Accepts one array, a list or iterator of arrays, of ``(images, labels)`` pairs, or of TFDS
    style dicts with an ``'image'`` entry; anything else is a TypeError saying what was given.
    """
    if hasattr(calibration_batches, "shape"):
        calibration_batches = [calibration_batches]
    elif isinstance(calibration_batches, dict):
        calibration_batches = [calibration_batches]
    try:
        batches = list(calibration_batches)
    except TypeError:
        raise TypeError("calibration_batches must be an array or an iterable of batches, got "
                        f"{type(calibration_batches).__name__}") from None
    if not batches:
        raise ValueError("calibration_batches is empty: pass at least one batch of training images")
    return [_as_images(b, i) for i, b in enumerate(batches)]


def _calibration_statistics(run, leaves, batches):
    """Per site: its (kind, options) and per-position max, min, mean and mean square of the ANN output."""
    size = batches[0].shape[0]
    found = {}

    @jax.jit
    def batch_stats(leaves, x, weight):
        stats = {}

        def on_site(name, kind, options, inputs):
            out = ann_op(kind, options)(*inputs)
            found[name] = (kind, tuple(sorted(options.items())))
            w = weight.reshape((-1,) + (1,) * (out.ndim - 1)).astype(out.dtype)
            stats[name] = (out.max(0, keepdims=True), out.min(0, keepdims=True), (out * w).sum(0, keepdims=True),
                           (out * out * w).sum(0, keepdims=True))
            return out

        run(leaves, x, on_site)
        return stats

    total, count = None, 0
    for x in batches:
        real = x.shape[0]
        if real > size or x.shape[1:] != batches[0].shape[1:]:
            raise ValueError(f"calibration batches must share one shape (at most {batches[0].shape}), "
                             f"got {x.shape}")
        # a smaller last batch is padded with copies of its first image, which do not change
        # the max and min, and carry weight 0 in the mean
        x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (size - real, *x.shape[1:]))]) if real < size else x
        stats = batch_stats(leaves, x, jnp.arange(size) < real)
        count += real
        total = stats if total is None else {
            k: (jnp.maximum(total[k][0], s[0]), jnp.minimum(total[k][1], s[1]), total[k][2] + s[2], total[k][3] + s[3])
            for k, s in stats.items()}
    return found, {k: Statistics(hi, lo, sums / count, squares / count) for k, (hi, lo, sums, squares) in total.items()}


def _probe(run, leaves, example, units, dynamics):
    """A(1) and A(0) of every neuron input and of the logits (one sample)."""
    recorded = {}

    def probe_with(level):
        def on_site(name, kind, options, inputs):
            u = units[name]
            if "in_scale" in u:
                inputs = [z * u["in_scale"] for z in inputs]
            recorded.setdefault(name, {})[level] = [z[:1] for z in inputs]
            if dynamics.passes_probe(kind):
                return jnp.maximum(*inputs)
            shape = jax.eval_shape(ann_op(kind, options), *inputs)  # vector neurons: not input-shaped
            out = jnp.full(shape.shape, float(level), shape.dtype)
            if "out_scale" in u:
                out = out * u["out_scale"]
            if "out_offset" in u:
                out = out + u["out_offset"]
            return out

        return run(leaves, jnp.full_like(example, float(level)), on_site)[:1]

    logits_one, logits_zero = probe_with(1), probe_with(0)
    offsets = {name: tuple(a1 + a0 for a1, a0 in zip(levels[1], levels[0])) for name, levels in recorded.items()}
    a0s = {name: tuple(levels[0]) for name, levels in recorded.items()}
    return a0s, offsets, Decoder(a0=logits_zero, a1_plus_a0=logits_one + logits_zero)


def check_spread(spread, takes_spread: bool = True, dynamics: str = "improved"):
    """``spread`` as a float (None stays None); a ValueError unless it is a positive finite number
    of standard deviations for a dynamics that takes one (improved mode)."""
    if spread is None:
        return None
    if (not takes_spread or isinstance(spread, bool) or not isinstance(spread, (int, float, np.number))
            or not np.isfinite(spread) or spread <= 0):
        raise ValueError(f"spread applies to dynamics='improved' and is a positive number of standard "
                         f"deviations, got spread={spread!r} with dynamics={dynamics!r}")
    return float(spread)


def convert(model, variables, calibration_batches: Iterable, dynamics: str | Dynamics = "paper", *,
            codec: str = "float", schedule="exponential", eta0: float = 0.15, gamma: float = 0.95,
            fold_bn: bool = True, spread: float | None = None, spike_levels: int | None = None) -> SNN:
    """Converts a trained network into a signGD spiking network.

    Args:
      model: a ``flax.linen.Module`` (called as ``model.apply(variables, x, train=False)`` if it
        takes ``train``), a ``flax.nnx.Module`` (evaluated in eval mode on a copy), or a function
        ``apply_fn(variables, x) -> logits``; its nonlinearities must be recognised operations
        (``signgd_jax.nn`` sites or the standard ones listed in the README).
      variables: the trained variables (``{"params": ..., "batch_stats": ...}``); for an NNX
        module None (its own state), an ``nnx.State`` or a pure dict of one.
      calibration_batches: training images, as one array ``[batch, ...]``, or a list or iterator
        of arrays, ``(images, labels)`` pairs or dicts with an ``'image'`` entry. The ReLU maxima
        (and improved-mode ranges) come from these. The reference uses a dozen training
        batches; the result depends on how many.
      dynamics: 'paper' (the reference behaviour), 'improved' (calibrated ranges for every
        neuron, exact float input; graded with ``spike_levels``), 'if' (integrate-and-fire
        baseline, ReLU networks only), 'qcfs' (integrate-and-fire neurons of a QCFS-trained
        network) or 'ecmt' (expectation compensation and multi-threshold neurons, any network);
        a name or a :class:`signgd_jax.dynamics.Dynamics`.
      codec: 'float', 'spike' or 'stochastic' (signGD modes).
      schedule, eta0, gamma: step sizes (name, Schedule or optax schedule); ignored by 'if'.
      fold_bn: fold eval-mode BatchNorm into the preceding conv / dense layer.
      spread: improved mode's range ``r`` per neuron position: None (the largest deviation from
        the mean over the calibration images) or a number k (k standard deviations; robust to
        outlier images, finer steps at low T). Paper mode keeps the reference's ReLU maxima.
      spike_levels: levels per step and side: graded signGD's K (improved mode; 1, the
        default, is the binary neuron) or ECMT's n thresholds per sign (default 8).

    Raises:
      interpret.UnsupportedOperation: naming any operation that has no neuron.
      ValueError / TypeError: bad arguments, NaN or Inf in the calibration images.
    """
    chosen = get_dynamics(dynamics, spike_levels)
    spread = check_spread(spread, chosen.takes_spread, chosen.name)
    check_codec(codec)
    apply_fn, variables = model_and_variables(model, variables)
    batches = calibration_arrays(calibration_batches)
    try:
        if fold_bn:
            variables, apply_fn = fold_batch_norm(model, variables, batches[0], apply_fn)
        apply_fn = expanded(apply_fn, chosen.expands)
        run, leaves = interpret.traced(apply_fn, variables, batches[0])
    except interpret.UnsupportedOperation:
        raise
    except Exception as e:  # a shape error from Flax or lax: say what layout we expect
        hint = layout_hint(batches[0].shape)
        if hint is None:
            raise
        raise ValueError(f"{hint}; the model failed on them: {str(e).splitlines()[0][:300]}") from e
    found, statistics = _calibration_statistics(run, leaves, batches)
    chosen.check_kinds(kind for kind, _ in found.values())
    units = {name: chosen.site_units(kind, statistics[name], spread) for name, (kind, _) in found.items()}
    a0s, offsets, decoder = _probe(run, leaves, batches[0], units, chosen)
    sites = {name: Site(kind=kind, options=options, a0=a0s[name], a1_plus_a0=offsets[name], **units[name])
             for name, (kind, options) in found.items()}
    return SNN(variables=variables, sites=sites, decoder=decoder, schedule=make_schedule(schedule, eta0, gamma),
               apply_fn=apply_fn, dynamics=chosen, codec=codec)
