"""Simulation: one jit-compiled ``lax.scan`` over time-steps.

    images --encode--> scan(t = 1..T: codec, neurons in topological order, decoder) --> logits[t]

Within a step the codec, every neuron and the decoder use the spikes of the same step (no
delay). The scan carry holds the codec state, every neuron's output estimate and a buffer with
one row per requested time-step, so memory does not grow with T. Neuron state is a pytree keyed
by site name; nothing lives in Python objects. Input estimates are not stored: they are the
affine layers applied to the output estimates below (see :func:`step`).
"""
from __future__ import annotations

import warnings
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from signgd_jax import interpret
from signgd_jax.convert import calibration_arrays
from signgd_jax.cpu_forms import cpu_conv_rule, platform_of
from signgd_jax.types import SNN


def check_timesteps(timesteps) -> tuple[int, ...]:
    """Validated, sorted, de-duplicated time-steps (positive integers; a bare integer T is
    ``(T,)``). The one check behind ``simulate``, ``sweep`` and ``tune_schedule``."""
    if isinstance(timesteps, (int, np.integer)) and not isinstance(timesteps, bool):
        timesteps = (timesteps,)
    try:
        if isinstance(timesteps, (str, bytes)) or any(isinstance(t, bool) for t in timesteps):
            raise TypeError
        values = [int(t) for t in timesteps]
        if any(int(t) != float(t) for t in timesteps):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"timesteps must be positive integers, got {timesteps!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"timesteps must be positive integers, got {timesteps!r}")
    return tuple(sorted(set(values)))


def check_snn(snn) -> SNN:
    """``snn`` if it is a converted network; a TypeError saying how to get one otherwise (an orbax
    restore without a target gives a plain dict)."""
    if isinstance(snn, SNN) and snn.dynamics is not None:
        return snn
    hint = (" (an SNN restored without a target is a plain dict: use signgd_jax.load, or restore with the "
            "converted SNN as the target)" if isinstance(snn, dict) else "")
    raise TypeError(f"expected an SNN from signgd_jax.convert, got {type(snn).__name__}{hint}")


def network_images(images):
    """One float32 array ``[batch, ...]`` from an array or the batch forms :func:`signgd_jax.convert`
    takes (a list of arrays, ``(images, labels)`` pairs or dicts with an ``'image'`` entry)."""
    if isinstance(images, (jax.Array, np.ndarray)):
        return jnp.asarray(images, jnp.float32)
    arrays = calibration_arrays(images)
    return arrays[0] if len(arrays) == 1 else jnp.concatenate(arrays)


def neurons_of(snn: SNN) -> dict:
    """``{site name: Neuron}`` of the SNN's dynamics (pure ``(init, step)`` pairs)."""
    return {name: snn.dynamics.neuron(site) for name, site in snn.sites.items()}


def initial_state(snn: SNN, images):
    """Neuron, codec and decoder state at t = 0 for a batch of images."""
    batch = images.shape[0]
    neurons = {name: neuron.init(batch) for name, neuron in neurons_of(snn).items()}
    decoder = snn.dynamics.initial_decoder(snn.decoder.a0, batch)
    return dict(codec=jnp.zeros_like(images), neurons=neurons, decoder=decoder)


def uncorrected_inputs(site, inputs, elapsed):
    """The inputs a neuron receives without the offset correction: ``x_t - S_t A(0)`` per input.

    ``A(0)`` is ``Site.a0``, recorded in the neuron's scaled units where ``Site.in_scale`` is set
    (paper-mode ReLU), so divided by it here; positions where it is not finite are left as they
    are. ``elapsed`` is ``S_t = eta_1 + ... + eta_t``. See :func:`simulate`.
    """
    out = []
    for z, a0 in zip(inputs, site.a0):
        if site.in_scale is not None:
            a0 = a0 / site.in_scale
        out.append(z - elapsed * jnp.where(jnp.isfinite(a0), a0, 0).astype(z.dtype))
    return out


def step(snn: SNN, state, images, eta, key=None, affine_rule=None, *, elapsed=None):
    """One time-step of the whole network; returns ``(new_state, logits_t, spikes_t)``.

    signGD modes evaluate the network on the estimates themselves. A neuron's input estimate
    ``x_t = x_{t-1} - eta_t (2 A(s_t) - A(1) - A(0))``, ``x_0 = A(0)``, equals ``A(v_t)`` exactly,
    ``v_t`` being the upstream output estimates (the codec's ``f_t`` for the input layer), since
    ``v_t - v_{t-1} = -eta_t (2 s_t - 1)`` and ``A`` is affine; the decoder's ``y_t`` is likewise
    the network output on them. So a neuron keeps only ``v`` and reads ``x_t`` from the layer
    below: one state array per neuron, read and written once per step; the same spikes and
    values up to float rounding (which can flip a spike at a near-tie). The integrate-and-fire
    baseline keeps its max of spikes, which is not affine, so it tracks its inputs step by step.
    ``affine_rule`` (``interpret.run``) may evaluate the affine layers in another form, e.g.
    :func:`signgd_jax.cpu_forms.cpu_conv_rule`. ``elapsed`` (``S_t``, signGD modes only) switches
    the offset correction off: every neuron input and the logits become ``A(v_t) - S_t A(0)``
    (``simulate(..., offset_correction=False)``); None (default) keeps it.
    """
    dynamics = snn.dynamics
    neurons = neurons_of(snn)
    network_input, codec_state = dynamics.network_input(snn.codec)(state["codec"], images, eta, key)
    new_neurons, spikes = {}, {}

    def on_site(name, kind, options, inputs):
        if elapsed is not None:
            inputs = uncorrected_inputs(snn.sites[name], inputs, elapsed)
        new_neurons[name], out, spikes[name] = neurons[name].step(state["neurons"][name], inputs, eta)
        return out

    outputs = interpret.evaluate(snn.apply_fn, snn.variables, network_input, on_site, affine_rule)
    if elapsed is not None:
        a0 = snn.decoder.a0
        outputs = outputs - elapsed * jnp.where(jnp.isfinite(a0), a0, 0).astype(outputs.dtype)
    decoder, logits = dynamics.decode(state["decoder"], outputs, eta)
    return dict(codec=codec_state, neurons=new_neurons, decoder=decoder), logits, spikes


def cast(snn: SNN, dtype) -> SNN:
    """The SNN with its floating-point arrays (weights, corrections) in ``dtype``."""
    def to(a):
        return a.astype(dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a
    return snn.replace(**{field: jax.tree_util.tree_map(to, getattr(snn, field))
                          for field in ("variables", "sites", "decoder")})


def _simulate_impl(snn: SNN, images, key, timesteps: tuple, with_spike_counts: bool, dtype=None,
                   offset_correction: bool = True, affine_rule=None):
    num_steps = max(timesteps)
    dynamics = snn.dynamics
    etas = dynamics.step_sizes(snn.schedule, num_steps)
    # S_t = eta_1 + ... + eta_t, a scan input only where the offset correction is off
    elapsed = None if offset_correction else jnp.cumsum(etas)
    if dtype is not None:  # reduced-precision simulation: state, weights and step sizes alike
        snn, images, etas = cast(snn, dtype), images.astype(dtype), etas.astype(dtype)
        elapsed = None if elapsed is None else elapsed.astype(dtype)
    # Row of the output buffer that step t writes: its rank among the requested time-steps,
    # or a scratch row past the end; only len(timesteps) + 1 rows are ever kept.
    rows = np.full(num_steps, len(timesteps), np.int32)
    rows[np.asarray(timesteps) - 1] = np.arange(len(timesteps))
    # Only the stochastic codec draws random numbers; the others carry no keys through the scan.
    keys = jax.random.split(key, num_steps) if dynamics.draws_random(snn.codec) else None
    state = initial_state(snn, images)
    num_classes = snn.decoder.a0.shape[1:]
    buffer = jnp.zeros((len(timesteps) + 1, images.shape[0], *num_classes), snn.decoder.a0.dtype)
    counts = None

    def body(carry, inputs):
        state, buffer, counts = carry
        eta, row, step_key, elapsed_t = inputs
        new_state, logits, spikes = step(snn, state, images, eta, step_key, affine_rule, elapsed=elapsed_t)
        # a model op may promote a reduced-precision value (e.g. a float32 constant): keep the
        # carry in the dtype it started with
        state = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), new_state, state)
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, logits.astype(buffer.dtype), row, 0)
        if counts is not None:
            totals = {k: counts[0][k] + jnp.sum(spikes[k], axis=0) for k in counts[0]}
            snapshots = None if counts[1] is None else {  # the totals so far, in the row of step t
                k: jax.lax.dynamic_update_index_in_dim(counts[1][k], totals[k], row, 0) for k in totals}
            counts = (totals, snapshots)
        return (state, buffer, counts), None

    if with_spike_counts:  # one counter per neuron position, shaped like its output estimate
        shapes = jax.eval_shape(lambda: step(snn, state, images, etas[0], None if keys is None else keys[0],
                                             affine_rule)[2])
        counts = ({k: jnp.zeros(v.shape[1:], jnp.float32) for k, v in shapes.items()}, None)
        if with_spike_counts == "per_timestep":
            counts = (counts[0], {k: jnp.zeros((len(timesteps) + 1, *v.shape[1:]), jnp.float32)
                                  for k, v in shapes.items()})
    (state, buffer, counts), _ = jax.lax.scan(body, (state, buffer, counts), (etas, jnp.asarray(rows), keys, elapsed))
    if counts is not None:
        counts = counts[0] if counts[1] is None else {k: v[:-1] for k, v in counts[1].items()}
    return buffer[:-1].astype(jnp.float32), counts


_STATIC = ("timesteps", "with_spike_counts", "dtype", "offset_correction")
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
    timesteps, with_spike_counts, dtype[, offset_correction])``: on CPU with
    :mod:`signgd_jax.cpu_forms` and, for concrete arrays, :data:`CPU_COMPILER_OPTIONS`; XLA's
    defaults on other platforms."""
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


def simulate(snn: SNN, images, timesteps: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128), *, key=None,
             return_spike_counts: bool | str = False, dtype=None, timestamps=None, offset_correction: bool = True):
    """Runs the SNN on ``images`` and returns the decoded logits at each requested time-step.

    Returns an array ``[len(timesteps), batch, classes]`` (time-steps sorted ascending);
    with ``return_spike_counts`` also ``{site: spikes per position summed over the batch and
    all T steps}`` (events, as :mod:`signgd_jax.metrics` counts them), or with
    ``return_spike_counts="per_timestep"`` ``{site: [len(timesteps), ...]}``: the sums over the
    first T steps for each requested T, from the same run. Any T works (no table limit); memory is independent of T. Works under
    ``vmap`` (e.g. over ``snn.with_schedule(eta0=...)``) and with a batch sharded over devices.
    ``key`` seeds the 'stochastic' codec. ``dtype`` (e.g. ``jnp.bfloat16``) runs the whole
    simulation in that precision; logits are returned as float32. ``timestamps`` is the
    earlier name of ``timesteps`` (deprecated).

    ``offset_correction=False`` (an ablation; signGD modes only, the 'if' dynamics refuses it)
    drops the A(0)/A(1) correction: a neuron, and likewise the decoder, integrates the raw affine
    response of the signed spikes,

        x_0 = A(0),    x_t = x_{t-1} - eta_t A(2 s_t - 1)

    instead of ``x_t = x_{t-1} - eta_t (2 A(s_t) - A(1) - A(0))``. Here ``A(sigma)`` is the
    affine sub-network evaluated with every source ``j`` at level ``sigma_j``, i.e. at the value
    ``o_j + r_j sigma_j`` (a neuron's ``Site.out_offset`` and ``out_scale``; the codec is a source
    with ``o = 0``, ``r = 1`` whose level is its emitted value), the convention by which convert
    probes ``A(1)`` and ``A(0)``. ``A`` is affine in the levels of all its sources jointly (a
    residual add of two sources included): ``A(sigma) = A(0) + sum_j L_j r_j sigma_j``, so
    ``A(2 s - 1) = 2 A(s) - A(1) = (2 A(s) - A(1) - A(0)) + A(0)`` and, summing over the steps,

        x_t = A(v_t) - S_t A(0),    S_t = eta_1 + ... + eta_t,

    with ``v_t`` the upstream output estimates of the same (uncorrected) run: every neuron input
    and the logits are shifted by ``-S_t A(0)`` (``Site.a0``, ``SNN.decoder.a0``). ``A(0)`` is the
    affine path's constant term (its biases carried through its weights: BatchNorm shifts, and
    constants such as max-pooling's -1e9 padding and LayerNorm's eps) plus, in improved mode, the
    response ``sum_j L_j o_j`` to the calibrated means, so there it does not vanish with the
    biases. The codec is a source, not fed by an affine map: its estimate of the image is
    unchanged; only its receivers see the first layer's constant term. The default path is
    unchanged.
    """
    snn = check_snn(snn)
    if not offset_correction and not snn.dynamics.encodes:
        raise ValueError(f"offset_correction=False applies to the signGD dynamics (input estimates "
                         f"x_t = x_{{t-1}} - eta_t (2 A(s_t) - A(1) - A(0))); the {snn.dynamics.name!r} dynamics "
                         "integrates A(s_t) and has no such correction")
    if timestamps is not None:
        warnings.warn("simulate(timestamps=...) is deprecated; use timesteps=...", DeprecationWarning, stacklevel=2)
        timesteps = timestamps
    timesteps = check_timesteps(timesteps)
    if return_spike_counts not in (False, True, "per_timestep"):
        raise ValueError(f"return_spike_counts is True, False or 'per_timestep', got {return_spike_counts!r}")
    images = network_images(images)
    if not isinstance(images, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(images))):
        raise ValueError("images contain NaN or Inf values; the simulation would spread them to every output")
    key = jax.random.PRNGKey(0) if key is None else key
    dtype = None if dtype is None else jnp.dtype(dtype)
    if offset_correction:  # the default program, exactly as before
        logits, counts = _run(snn, images, key, timesteps, return_spike_counts, dtype)
    else:
        logits, counts = _run(snn, images, key, timesteps, return_spike_counts, dtype, False)
    return (logits, counts) if return_spike_counts else logits

