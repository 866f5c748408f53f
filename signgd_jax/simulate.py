"""Simulation: one jit-compiled ``lax.scan`` over time-steps.

    images --encode--> scan(t = 1..T: codec, neurons in topological order, decoder) --> logits[t]

Within a step the codec, every neuron and the decoder use the spikes of the same step (no
delay). The scan carry holds the codec state, every neuron's input and output estimates, the
decoder's estimate and a buffer with one row per requested time-step, so memory does not grow
with T. Neuron state is a pytree keyed by site name; nothing lives in Python objects.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from signgd_jax import interpret
from signgd_jax.convert import SNN, site_name
from signgd_jax.dynamics import average, encode, fire, step_output, subgradient_step_sizes, track_input


def check_timestamps(timestamps) -> tuple[int, ...]:
    """Validated, sorted, de-duplicated time-steps (positive integers)."""
    try:
        values = [int(t) for t in timestamps]
        if any(int(t) != float(t) for t in timestamps):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"timestamps must be positive integers, got {timestamps!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"timestamps must be positive integers, got {timestamps!r}")
    return tuple(sorted(set(values)))


def initial_state(snn: SNN, images):
    """Neuron, codec and decoder state at t = 0 for a batch of images."""
    batch = images.shape[0]

    def per_batch(a):
        return jnp.broadcast_to(a, (batch, *a.shape[1:]))

    neurons = {}
    for name, kind, _ in snn.site_kinds:
        params = snn.sites[name]
        if snn.mode == "if" and kind == "maximum":
            continue  # the baseline's max-pooling is a stateless max of spikes
        xs = [per_batch(a0) for a0 in params["a0"]]
        neurons[name] = dict(x=xs, v=jnp.zeros_like(xs[0]))
    decoder = per_batch(snn.decoder["a0"])
    if snn.mode == "if":
        decoder = jnp.zeros_like(decoder)
    return dict(codec=jnp.zeros_like(images), neurons=neurons, decoder=decoder)


def _neuron(snn: SNN, state, new_state, spikes, eta):
    """``on_site`` for the SNN step: updates one neuron from this step's input ``A(s_t)``."""

    def on_site(index, kind, options, inputs):
        name = site_name(index, kind)
        params = snn.sites[name]
        if "in_scale" in params:
            inputs = [z * params["in_scale"] for z in inputs]
        if snn.mode == "if":
            if kind == "maximum":
                return jnp.maximum(*inputs)
            old = state[name]
            x = average(old["x"][0], inputs[0], eta)
            spike = (x > old["v"]).astype(x.dtype)
            new_state[name] = dict(x=[x], v=average(old["v"], spike, eta))
        else:
            old = state[name]
            xs = [track_input(x, z, off, eta) for x, z, off in zip(old["x"], inputs, params["offset"])]
            spike = fire(kind, old["v"], xs, options, params.get("out_offset"), params.get("out_scale"))
            new_state[name] = dict(x=xs, v=step_output(old["v"], spike, eta))
        spikes[name] = spike
        out = spike * params["out_scale"] if "out_scale" in params else spike
        return out + params["out_offset"] if "out_offset" in params else out

    return on_site


def step(snn: SNN, state, images, eta, key=None):
    """One time-step of the whole network; returns ``(new_state, logits_t, spikes_t)``."""
    if snn.mode == "if":
        emitted, codec_state = images, state["codec"]  # the baseline feeds the image as is
    else:
        emitted, codec_state = encode(snn.codec, state["codec"], images, eta, key,
                                      exact=snn.mode == "improved")
    neurons, spikes = {}, {}
    a_now = interpret.evaluate(snn.apply_fn, snn.variables, emitted,
                               _neuron(snn, state["neurons"], neurons, spikes, eta))
    if snn.mode == "if":
        logits = average(state["decoder"], a_now, eta)
    else:
        logits = track_input(state["decoder"], a_now, snn.decoder["offset"], eta)
    return dict(codec=codec_state, neurons=neurons, decoder=logits), logits, spikes


def cast(snn: SNN, dtype) -> SNN:
    """The SNN with its floating-point arrays (weights, corrections) in ``dtype``."""
    def to(a):
        return a.astype(dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a
    return snn.replace(variables=jax.tree_util.tree_map(to, snn.variables),
                       sites=jax.tree_util.tree_map(to, snn.sites), decoder=jax.tree_util.tree_map(to, snn.decoder))


@partial(jax.jit, static_argnames=("timestamps", "with_spike_counts", "dtype"))
def _simulate(snn: SNN, images, key, timestamps: tuple, with_spike_counts: bool, dtype=None):
    num_steps = max(timestamps)
    if snn.mode == "if":
        etas = subgradient_step_sizes(num_steps)
    else:
        etas = snn.schedule.step_sizes(num_steps)
    if dtype is not None:  # reduced-precision simulation: state, weights and step sizes alike
        snn, images, etas = cast(snn, dtype), images.astype(dtype), etas.astype(dtype)
    # Row of the output buffer that step t writes: its rank among the requested time-steps,
    # or a scratch row past the end; only len(timestamps) + 1 rows are ever kept.
    rows = np.full(num_steps, len(timestamps), np.int32)
    rows[np.asarray(timestamps) - 1] = np.arange(len(timestamps))
    # Only the stochastic codec draws random numbers; the others carry no keys through the scan.
    keys = jax.random.split(key, num_steps) if snn.codec == "stochastic" and snn.mode != "if" else None
    state = initial_state(snn, images)
    num_classes = state["decoder"].shape[1:]
    buffer = jnp.zeros((len(timestamps) + 1, images.shape[0], *num_classes), state["decoder"].dtype)
    counts = None

    def body(carry, inputs):
        state, buffer, counts = carry
        eta, row, step_key = inputs
        new_state, logits, spikes = step(snn, state, images, eta, step_key)
        # a model op may promote a reduced-precision value (e.g. a float32 constant): keep the
        # carry in the dtype it started with
        state = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), new_state, state)
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, logits.astype(buffer.dtype), row, 0)
        if counts is not None:
            counts = {k: counts[k] + jnp.sum(spikes[k], axis=0) for k in counts}
        return (state, buffer, counts), None

    if with_spike_counts:  # one counter per neuron position, shaped like its output estimate
        counts = {k: jnp.zeros(n["v"].shape[1:], jnp.float32) for k, n in state["neurons"].items()}
    (state, buffer, counts), _ = jax.lax.scan(body, (state, buffer, counts), (etas, jnp.asarray(rows), keys))
    return buffer[:-1].astype(jnp.float32), counts


def simulate(snn: SNN, images, timestamps: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128), *, key=None,
             return_spike_counts: bool = False, dtype=None):
    """Runs the SNN on ``images`` and returns the decoded logits at each requested time-step.

    Returns an array ``[len(timestamps), batch, classes]`` (time-steps sorted ascending);
    with ``return_spike_counts`` also ``{site: spikes per position summed over the batch and
    all T steps}``. Any T works (no table limit); memory is independent of T. Works under
    ``vmap`` (e.g. over ``snn.with_schedule(eta0=...)``) and with a batch sharded over devices.
    ``key`` seeds the 'stochastic' codec. ``dtype`` (e.g. ``jnp.bfloat16``) runs the whole
    simulation in that precision; logits are returned as float32.
    """
    timestamps = check_timestamps(timestamps)
    images = jnp.asarray(images, jnp.float32)
    key = jax.random.PRNGKey(0) if key is None else key
    dtype = None if dtype is None else jnp.dtype(dtype)
    logits, counts = _simulate(snn, images, key, timestamps, return_spike_counts, dtype)
    return (logits, counts) if return_spike_counts else logits
