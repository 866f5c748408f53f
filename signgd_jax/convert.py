"""The model transformer: a trained network and calibration data in, an SNN pytree out.

    trained variables --fold BN--> --calibrate--> --probe A(1), A(0)--> SNN

* BatchNorm (eval mode) is folded into the preceding convolution or dense layer.
* Calibration runs the ANN over the caller's batches and records, per site and per position
  of one sample, the maximum (and, for improved mode, the minimum and mean) of its output.
* paper mode: each ReLU is rewritten ``relu(z) = relu(z * s) / s`` with ``s = 1/m`` (``m`` the
  calibrated maximum, 1 where ``m <= 1e-5``), so its neuron works in [0, 1].
* improved mode: every site's output is represented as ``o + r * v`` with the calibrated mean
  ``o`` as start value and range ``r = max |phi - o|``, so no neuron saturates, and the float
  codec delivers the image exactly.
* The probe pass sets the codec output and every neuron output to ones, then zeros, and records
  each neuron input (``A(1)``, ``A(0)``) and the logits (for the decoder).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp

from signgd_jax import interpret
from signgd_jax.dynamics import CODECS, Schedule, make_schedule
from signgd_jax.fold import fold_batch_norm
from signgd_jax.frontends import as_apply_fn
from signgd_jax.nn import ann_op

MODES = ("paper", "improved", "if")
_IF_KINDS = ("relu", "maximum")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SNN:
    """A converted network: a pytree of arrays plus static structure (savable with orbax).

    variables: the model's variables with BatchNorm folded.
    sites: ``{name: {"a0": [A(0) per input], "offset": [A(1) + A(0) per input],
    "in_scale", "out_scale", "out_offset" (optional)}}``, arrays shaped like one sample
    (leading axis 1), broadcast over the batch. Site names are ``"{index:03d}_{kind}"`` in
    evaluation order.
    decoder: ``{"a0": logits at all-zero input, "offset": A(1) + A(0)}``.
    schedule: the step sizes (its ``eta0``/``gamma`` are leaves, so they can be ``vmap``-ed).
    """

    variables: Any
    sites: dict
    decoder: dict
    schedule: Schedule
    apply_fn: Callable = dataclasses.field(metadata=dict(static=True))
    mode: str = dataclasses.field(default="paper", metadata=dict(static=True))
    codec: str = dataclasses.field(default="float", metadata=dict(static=True))
    site_kinds: tuple = dataclasses.field(default=(), metadata=dict(static=True))

    def replace(self, **changes) -> "SNN":
        return dataclasses.replace(self, **changes)

    def with_schedule(self, eta0=None, gamma=None) -> "SNN":
        """The same SNN with other schedule parameters (traced values allowed, for vmap)."""
        s = self.schedule
        return self.replace(schedule=dataclasses.replace(
            s, eta0=s.eta0 if eta0 is None else eta0, gamma=s.gamma if gamma is None else gamma))


def site_name(index: int, kind: str) -> str:
    return f"{index:03d}_{kind}"


def _calibration_statistics(apply_fn, variables, batches):
    """Per site: per-position max, min and mean of the ANN output over all batches."""

    @jax.jit
    def batch_stats(variables, x):
        stats = {}

        def on_site(index, kind, options, inputs):
            out = ann_op(kind, options)(*inputs)
            stats[site_name(index, kind)] = (out.max(0, keepdims=True), out.min(0, keepdims=True),
                                             out.sum(0, keepdims=True))
            return out

        interpret.evaluate(apply_fn, variables, x, on_site)
        return stats

    total, count = None, 0
    for x in batches:
        x = jnp.asarray(x, jnp.float32)
        stats = batch_stats(variables, x)
        count += x.shape[0]
        if total is None:
            total = stats
        else:
            total = {k: (jnp.maximum(total[k][0], s[0]), jnp.minimum(total[k][1], s[1]), total[k][2] + s[2])
                     for k, s in stats.items()}
    if total is None:
        raise ValueError("calibration_batches is empty: pass at least one batch of training images")
    return {k: (hi, lo, sums / count) for k, (hi, lo, sums) in total.items()}, x


def _site_transforms(mode, kinds, statistics):
    """Input scaling and output representation of every site for the chosen mode."""
    transforms = {}
    for name, (kind, _) in kinds.items():
        hi, lo, mean = statistics[name]
        if mode == "improved":
            spread = jnp.maximum(hi - mean, mean - lo)
            transforms[name] = dict(out_offset=mean, out_scale=jnp.where(spread <= 1e-5, 1.0, spread))
        elif kind == "relu":
            scale = (1.0 / jnp.where(hi <= 1e-5, 1.0, hi)).astype(jnp.float32)
            transforms[name] = dict(in_scale=scale, out_scale=1.0 / scale)
        else:
            transforms[name] = {}
    return transforms


def _probe(apply_fn, variables, sample, transforms, mode):
    """A(1) and A(0) of every neuron input and of the logits (batch of one sample)."""
    recorded = {}

    def probe_with(level):
        def on_site(index, kind, options, inputs):
            name = site_name(index, kind)
            t = transforms[name]
            if "in_scale" in t:
                inputs = [z * t["in_scale"] for z in inputs]
            recorded.setdefault(name, {})[level] = inputs
            if mode == "if" and kind == "maximum":  # the baseline keeps max-pooling as a max of spikes
                return jnp.maximum(*inputs)
            out = jnp.full_like(inputs[0], float(level))
            if "out_scale" in t:
                out = out * t["out_scale"]
            if "out_offset" in t:
                out = out + t["out_offset"]
            return out

        return interpret.evaluate(apply_fn, variables, jnp.full_like(sample, float(level)), on_site)

    logits_one, logits_zero = probe_with(1), probe_with(0)
    sites = {}
    for name, levels in recorded.items():
        sites[name] = dict(a0=list(levels[0]), offset=[a1 + a0 for a1, a0 in zip(levels[1], levels[0])],
                           **transforms[name])
    return sites, dict(a0=logits_zero, offset=logits_one + logits_zero)


def convert(model, variables, calibration_batches: Iterable, dynamics: str = "paper", *, codec: str = "float",
            schedule="exponential", eta0: float = 0.15, gamma: float = 0.95, fold_bn: bool = True) -> SNN:
    """Converts a trained network into a signGD spiking network.

    Args:
      model: a ``flax.linen.Module`` whose nonlinearities are ``signgd_jax.nn`` sites (called
        as ``model.apply(variables, x, train=False)`` if it takes ``train``), or a function
        ``apply_fn(variables, x) -> logits``.
      variables: its trained variables (``{"params": ..., "batch_stats": ...}``).
      calibration_batches: iterable of NHWC (or any input-shaped) image batches; the ReLU
        maxima (and improved-mode ranges) come from these. The reference uses a dozen
        training batches; the result depends on how many.
      dynamics: 'paper' (the reference behaviour), 'improved' (calibrated ranges for every
        neuron, exact float input) or 'if' (integrate-and-fire baseline, ReLU networks only).
      codec: 'float', 'spike' or 'stochastic' (signGD modes).
      schedule, eta0, gamma: step sizes (name, Schedule or optax schedule); ignored by 'if'.
      fold_bn: fold eval-mode BatchNorm into the preceding conv / dense layer.

    Example, a user's own model::

        class Net(flax.linen.Module):
            @flax.linen.compact
            def __call__(self, x):
                x = flax.linen.Conv(16, (3, 3))(x)
                x = signgd_jax.nn.relu(x)
                x = signgd_jax.nn.max_pool(x, (2, 2))
                x = flax.linen.Dense(32)(x.reshape(x.shape[0], -1))
                x = signgd_jax.nn.LayerNorm()(x)
                x = signgd_jax.nn.gelu(x)
                return flax.linen.Dense(10)(x)

        snn = signgd_jax.convert(Net(), variables, [train_images[:128]])
        logits = signgd_jax.simulate(snn, test_images, timestamps=(8, 32, 128))

    Raises:
      interpret.UnsupportedOperation: naming any operation that has no neuron.
    """
    if dynamics not in MODES:
        raise ValueError(f"unknown dynamics {dynamics!r}; supported: {', '.join(MODES)}")
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; supported: {', '.join(CODECS)}")
    apply_fn = as_apply_fn(model)
    batches = [jnp.asarray(b, jnp.float32) for b in calibration_batches]
    if fold_bn and batches:
        variables, apply_fn = fold_batch_norm(model, variables, batches[0], apply_fn)
    statistics, last = _calibration_statistics(apply_fn, variables, batches)
    kinds = _site_kinds(apply_fn, variables, last[:1])
    if dynamics == "if":
        unsupported = sorted({k for k, _ in kinds.values() if k not in _IF_KINDS})
        if unsupported:
            raise interpret.UnsupportedOperation(
                f"the integrate-and-fire baseline converts ReLU networks only (relu, max-pooling); "
                f"this network has {', '.join(unsupported)}")
    transforms = _site_transforms("improved" if dynamics == "improved" else "paper", kinds, statistics)
    sites, decoder = _probe(apply_fn, variables, jnp.asarray(last[:1]), transforms, dynamics)
    return SNN(variables=variables, sites=sites, decoder=decoder,
               schedule=make_schedule(schedule, eta0, gamma), apply_fn=apply_fn, mode=dynamics, codec=codec,
               site_kinds=tuple((name, kind, tuple(sorted(opts.items()))) for name, (kind, opts) in kinds.items()))


def _site_kinds(apply_fn, variables, sample):
    kinds = {}

    def on_site(index, kind, options, inputs):
        kinds[site_name(index, kind)] = (kind, options)
        return ann_op(kind, options)(*inputs)

    jax.eval_shape(lambda v, x: interpret.evaluate(apply_fn, v, x, on_site), variables, sample)
    return kinds
