"""Simulation: one jit-compiled ``lax.scan`` over time-steps.

    images --encode--> scan(t = 1..T: codec, neurons in topological order, decoder) --> logits[t]

Within a step the codec, every neuron and the decoder use the spikes of the same step (no
delay). The scan carry holds the codec state, every neuron's output estimate and a buffer with
one row per requested time-step, so memory does not grow with T. Neuron state is a pytree keyed
by site name; nothing lives in Python objects. Input estimates are not stored: they are the
affine layers applied to the output estimates below (see :func:`step`).
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from signgd_jax import interpret
from signgd_jax.convert import SNN, site_name
from signgd_jax.cpu_forms import cpu_conv_rule, platform_of
from signgd_jax.dynamics import average, encode, fire, step_output, subgradient_step_sizes


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
    """Neuron and codec (and, for the baseline, decoder) state at t = 0 for a batch of images."""
    batch = images.shape[0]

    def per_batch(a):
        return jnp.broadcast_to(a, (batch, *a.shape[1:]))

    neurons = {}
    for name, kind, _ in snn.site_kinds:
        params = snn.sites[name]
        a0 = params["a0"]
        if snn.mode != "if":  # output estimates in the units of phi: out_offset + out_scale * v_0
            neurons[name] = dict(v=per_batch(params.get("out_offset", jnp.zeros_like(a0[0]))).astype(a0[0].dtype))
        elif kind != "maximum":  # the baseline's max-pooling is a stateless max of spikes
            xs = [per_batch(a) for a in a0]
            neurons[name] = dict(x=xs, v=jnp.zeros_like(xs[0]))
    state = dict(codec=jnp.zeros_like(images), neurons=neurons)
    if snn.mode == "if":
        state["decoder"] = jnp.zeros((batch, *snn.decoder["a0"].shape[1:]), snn.decoder["a0"].dtype)
    return state


def _signgd_neuron(snn: SNN, state, new_state, spikes, eta):
    """``on_site`` for a signGD step: ``inputs`` are this step's input estimates ``x_t``.

    The state is the output estimate in the units of ``phi``, ``u = out_offset + out_scale * v``
    (paper-mode ReLU: ``u = m v``), so that it is also the value passed on: one pass over memory
    per neuron and step. ``H(v - phi(x s)) = H(u - phi(x))`` (ReLU is positively homogeneous;
    improved mode compares ``o + r v`` with ``phi`` by definition), and ``v``'s sign step of
    ``eta_t`` is a step of ``r eta_t`` in ``u``.
    """

    def on_site(index, kind, options, inputs):
        name = site_name(index, kind)
        params = snn.sites[name]
        u = state[name]["v"]
        spike = fire(kind, u, inputs, options)
        step_size = eta * params["out_scale"] if "out_scale" in params else eta
        u = step_output(u, spike, step_size)
        new_state[name] = dict(v=u)
        spikes[name] = spike
        return u

    return on_site


def _if_neuron(snn: SNN, state, new_state, spikes, eta):
    """``on_site`` for a baseline step: ``inputs`` are ``A(s_t)``, the input of this step's spikes."""

    def on_site(index, kind, options, inputs):
        name = site_name(index, kind)
        params = snn.sites[name]
        inputs = [z * params["in_scale"] for z in inputs] if "in_scale" in params else inputs
        if kind == "maximum":
            return jnp.maximum(*inputs)
        old = state[name]
        x = average(old["x"][0], inputs[0], eta)
        spike = (x > old["v"]).astype(x.dtype)
        new_state[name] = dict(x=[x], v=average(old["v"], spike, eta))
        spikes[name] = spike
        return spike * params["out_scale"] if "out_scale" in params else spike

    return on_site


def step(snn: SNN, state, images, eta, key=None, affine_rule=None):
    """One time-step of the whole network; returns ``(new_state, logits_t, spikes_t)``.

    signGD modes evaluate the network on the estimates themselves. A neuron's input estimate
    ``x_t = x_{t-1} - eta_t (2 A(s_t) - A(1) - A(0))``, ``x_0 = A(0)``, equals ``A(v_t)`` exactly,
    ``v_t`` being the upstream output estimates (the codec's ``f_t`` for the input layer), since
    ``v_t - v_{t-1} = -eta_t (2 s_t - 1)`` and ``A`` is affine; the decoder's ``y_t`` is likewise
    the network output on them. So a neuron keeps only ``v`` and reads ``x_t`` from the layer
    below: one state array per neuron, read and written once per step, instead of ``x``, ``v``
    and a separate output; the same spikes and values up to float rounding (which can flip a
    spike at a near-tie; see DESIGN 1b). The integrate-and-fire baseline keeps its max of spikes, which is not
    affine, so it tracks its inputs step by step. ``affine_rule`` (``interpret.run``) may evaluate
    the affine layers in another form, e.g. :func:`signgd_jax.cpu_forms.cpu_conv_rule`.
    """
    neurons, spikes = {}, {}
    if snn.mode == "if":  # the baseline feeds the image as is and averages A(s_t)
        a_now = interpret.evaluate(snn.apply_fn, snn.variables, images,
                                   _if_neuron(snn, state["neurons"], neurons, spikes, eta), affine_rule)
        logits = average(state["decoder"], a_now, eta)
        return dict(codec=state["codec"], neurons=neurons, decoder=logits), logits, spikes
    _, estimate = encode(snn.codec, state["codec"], images, eta, key, exact=snn.mode == "improved")
    logits = interpret.evaluate(snn.apply_fn, snn.variables, estimate,
                                _signgd_neuron(snn, state["neurons"], neurons, spikes, eta), affine_rule)
    return dict(codec=estimate, neurons=neurons), logits, spikes


def cast(snn: SNN, dtype) -> SNN:
    """The SNN with its floating-point arrays (weights, corrections) in ``dtype``."""
    def to(a):
        return a.astype(dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a
    return snn.replace(variables=jax.tree_util.tree_map(to, snn.variables),
                       sites=jax.tree_util.tree_map(to, snn.sites), decoder=jax.tree_util.tree_map(to, snn.decoder))


def _simulate_impl(snn: SNN, images, key, timestamps: tuple, with_spike_counts: bool, dtype=None,
                   affine_rule=None):
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
    num_classes = snn.decoder["a0"].shape[1:]
    buffer = jnp.zeros((len(timestamps) + 1, images.shape[0], *num_classes), snn.decoder["a0"].dtype)
    counts = None

    def body(carry, inputs):
        state, buffer, counts = carry
        eta, row, step_key = inputs
        new_state, logits, spikes = step(snn, state, images, eta, step_key, affine_rule)
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


_STATIC = ("timestamps", "with_spike_counts", "dtype")
_simulate = jax.jit(_simulate_impl, static_argnames=_STATIC)
# On CPU: convolutions in the forms XLA:CPU runs fastest (signgd_jax.cpu_forms), and without
# XLA:CPU's YNNPACK fusions, which run this loop's many small convolutions and matmuls slower
# than XLA's own kernels (12-17% of the simulation time of the five small models,
# benchmarks/simulate.py). Compiler options cannot be set inside a caller's jit or vmap, hence
# the variant without them.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_simulate_impl_cpu = partial(_simulate_impl, affine_rule=cpu_conv_rule)
_simulate_cpu_forms = jax.jit(_simulate_impl_cpu, static_argnames=_STATIC)
_simulate_cpu = jax.jit(_simulate_impl_cpu, static_argnames=_STATIC, compiler_options=CPU_COMPILER_OPTIONS)


def compiled_simulation(snn: SNN, images, key=None):
    """The jitted simulation for where these arrays live, called as ``fn(snn, images, key,
    timestamps, with_spike_counts, dtype)``: on CPU with :mod:`signgd_jax.cpu_forms` and, for
    concrete arrays, :data:`CPU_COMPILER_OPTIONS`; XLA's defaults on other platforms."""
    if platform_of(images, snn, key) != "cpu":
        return _simulate
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((snn, images, key)))
    return _simulate_cpu_forms if traced else _simulate_cpu


def _run(*args):
    fn = compiled_simulation(*args[:3])
    try:
        return fn(*args)
    except jax.errors.JaxRuntimeError as e:  # a jaxlib without the option: XLA's defaults
        if fn is not _simulate_cpu or "xla_cpu_experimental_ynn_fusion_type" not in str(e):
            raise
        return _simulate_cpu_forms(*args)


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
    logits, counts = _run(snn, images, key, timestamps, return_spike_counts, dtype)
    return (logits, counts) if return_spike_counts else logits
