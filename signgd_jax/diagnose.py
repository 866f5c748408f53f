"""Where a conversion loses accuracy: each site's output estimate against the ANN, per time-step.

For a site with ANN activation ``a = phi_ann(ANN inputs)`` (the network evaluated as an ANN on
the same images) and output estimate ``u_t`` (``o + r v_t`` in the units of ``phi``; the
baseline's firing rate times its scale), :func:`layer_errors` reports

    absolute error    e_t = mean |u_t - a|          (over the images and the site's positions)
    normalised error  e_t / mean |a|

at each requested t, and the same for the decoded logits against the ANN's logits. The SNN is
run by one compiled ``lax.scan`` whose body is :func:`signgd_jax.simulate.step`, so memory does
not depend on T. A site whose error stays high while the sites below it converge is where the
conversion lags (a saturated paper-mode estimate, a range calibrated too narrow, a schedule too
short for the depth).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from signgd_jax import interpret
from signgd_jax.cpu_forms import cpu_conv_rule, platform_of
from signgd_jax.kinds import ann_op
from signgd_jax.simulate import check_timesteps, initial_state, step
from signgd_jax.types import SNN

LOGITS = "logits"  # the entry for the decoded output among the sites


class LayerErrors(NamedTuple):
    """Per site (in evaluation order, then :data:`LOGITS`), arrays ``[len(timesteps)]``.

    timesteps: the time-steps, ascending. absolute: ``mean |u_t - a|``. normalised: that divided
    by ``ann_scale`` (NaN where it is 0). ann_scale: ``mean |a|`` of the ANN activation.
    Sites whose neurons keep no estimate (the baseline's max of spikes) are left out.
    """

    timesteps: tuple
    absolute: dict
    normalised: dict
    ann_scale: dict


def ann_activations(snn: SNN, images, affine_rule=None):
    """``({site: ANN activation [batch, ...]}, ANN logits)`` of the converted network's ANN."""
    recorded = {}

    def record(name, kind, options, inputs):
        out = ann_op(kind, options)(*inputs)
        recorded[name] = out
        return out

    logits = interpret.evaluate(snn.apply_fn, snn.variables, images, record, affine_rule)
    return recorded, logits


def tracked_sites(snn: SNN) -> tuple:
    """The sites whose neurons keep an output estimate (all but the baseline's max of spikes)."""
    dynamics = snn.dynamics
    neurons = {name: dynamics.neuron(site) for name, site in snn.sites.items()}
    return tuple(name for name, neuron in neurons.items()
                 if jax.eval_shape(lambda: neuron.estimate(neuron.init(1))) is not None)


def _layer_errors_impl(snn: SNN, images, key, timesteps: tuple, tracked: tuple, affine_rule=None):
    dynamics = snn.dynamics
    neurons = {name: dynamics.neuron(snn.sites[name]) for name in tracked}
    ann, ann_logits = ann_activations(snn, images, affine_rule)
    state = initial_state(snn, images)
    num_steps = max(timesteps)
    etas = dynamics.step_sizes(snn.schedule, num_steps)
    rows = np.full(num_steps, len(timesteps), np.int32)  # a scratch row for the other steps
    rows[np.asarray(timesteps) - 1] = np.arange(len(timesteps))
    keys = jax.random.split(key, num_steps) if dynamics.draws_random(snn.codec) else None
    buffer = jnp.zeros((len(timesteps) + 1, len(tracked) + 1), jnp.float32)

    def body(carry, inputs):
        state, buffer = carry
        eta, row, step_key = inputs
        new_state, logits, _ = step(snn, state, images, eta, step_key, affine_rule)
        state = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), new_state, state)
        errors = [jnp.mean(jnp.abs(neurons[n].estimate(state["neurons"][n]) - ann[n])) for n in tracked]
        errors.append(jnp.mean(jnp.abs(logits - ann_logits)))
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, jnp.stack(errors).astype(jnp.float32), row, 0)
        return (state, buffer), None

    (_, buffer), _ = jax.lax.scan(body, (state, buffer), (etas, jnp.asarray(rows), keys))
    scales = jnp.stack([jnp.mean(jnp.abs(ann[n])) for n in tracked] + [jnp.mean(jnp.abs(ann_logits))])
    return buffer[:-1], scales


_layer_errors = jax.jit(_layer_errors_impl, static_argnames=("timesteps", "tracked", "affine_rule"))


def layer_errors(snn: SNN, images, timesteps: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128), *,
                 key=None) -> LayerErrors:
    """The error of every site's output estimate against the ANN activation on ``images``.

    Returns a :class:`LayerErrors` (see the module docstring); ``key`` seeds the 'stochastic'
    codec as in :func:`signgd_jax.simulate`. Runs one compiled scan of ``max(timesteps)`` steps.
    """
    timesteps = check_timesteps(timesteps)
    images = jnp.asarray(images, jnp.float32)
    if images.ndim < 2:
        raise ValueError(f"images must be a batch [batch, ...], got shape {images.shape}")
    if not bool(jnp.all(jnp.isfinite(images))):
        raise ValueError("images contain NaN or Inf values")
    key = jax.random.PRNGKey(0) if key is None else key
    rule = cpu_conv_rule if platform_of(images, snn) == "cpu" else None
    names = tracked_sites(snn)
    errors, scales = _layer_errors(snn, images, key, timesteps, names, rule)
    errors = np.asarray(errors, np.float64)
    scales = np.asarray(scales, np.float64)
    names = (*names, LOGITS)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(scales > 0, errors / np.where(scales > 0, scales, 1.0), np.nan)
    return LayerErrors(timesteps=timesteps,
                       absolute={n: errors[:, i] for i, n in enumerate(names)},
                       normalised={n: normalised[:, i] for i, n in enumerate(names)},
                       ann_scale={n: float(scales[i]) for i, n in enumerate(names)})
