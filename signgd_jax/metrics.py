"""Accuracy per time-step, firing rates, synaptic operations and an energy estimate.

Synaptic operations (SOPs): a spike of a neuron costs one accumulate in every unit of the next
weighted layer that it feeds through a nonzero weight, so ``SOPs = sum over neurons of spikes x
fan-out``. The fan-out of every neuron is counted on the converted network itself: the affine
map from all neuron outputs to all neuron inputs and the logits is evaluated with every weight
replaced by its indicator (``w != 0``), subtractions by additions and divisions (means) by sums;
a weighted sum (dense, conv, reduction) counts each of its used outputs once, and the
vector-Jacobian product of ones then gives, per neuron, the accumulations its spike triggers
(a residual path counts the weighted layers it reaches, not the paths through them).
The codec's real-valued output (float codec) drives the first layer with multiply-accumulates.

Graded spikes are counted by the additions a receiver performs, so that graded and binary runs
compare at equal energy (``Neuron.step``'s third output is this count per neuron and step):

* binary signGD: ``s_t`` (a move down; the move up needs no event, the constant correction
  ``A(1) + A(0)`` carries it);
* graded signGD (``q_t = -k_t (2 s_t - 1)``, ``k_t <= K``): ``k_t - 1 + s_t`` accumulates, i.e. a
  move of ``k`` steps costs ``k`` additions of the weight (``k - 1`` for a move up, by the same
  constant correction); we count additions rather than one multiply-accumulate because
  ``k <= 7`` additions (0.9 pJ each) cost at most 6.3 pJ against 4.6 pJ for a MAC plus the
  multiplier, and the count stays exact for ``K = 1``;
* ECMT's multi-threshold spike ``+-theta 2**i``: one accumulate (the power of two is a shift of
  the weight, as ECMT counts it); QCFS and integrate-and-fire spikes: one accumulate.

``bits_per_neuron_step`` is ``log2`` of the values a neuron can send in one step: 1 for binary
spikes, ``log2(2K)`` for graded signGD (no zero level: a signGD neuron always moves),
``log2(2n + 1)`` for ECMT's n thresholds per sign.

Energy uses the 45 nm CMOS figures of Horowitz (ISSCC 2014) that SNN papers quote:
0.9 pJ per 32-bit float accumulate and 4.6 pJ per 32-bit float multiply-accumulate. It is an
estimate of arithmetic only (no memory traffic), as in that literature.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from signgd_jax import interpret
from signgd_jax.types import SNN
from signgd_jax.nn import ann_op

ENERGY_PER_AC_PJ = 0.9
ENERGY_PER_MAC_PJ = 4.6


def accuracy_per_step(logits, labels):
    """``[len(timesteps)]`` accuracies from ``[len(timesteps), batch, classes]`` logits."""
    return jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(labels)[None], axis=-1)


@jax.custom_vjp
def _used(y):
    """Identity whose pullback marks each element as used (1) or not (0): the accumulations
    into ``y`` are counted once, however many later operations read ``y``."""
    return y


_used.defvjp(lambda y: (y, None), lambda _, ct: ((ct != 0).astype(ct.dtype),))


def _counting_rule(eqn, values, dynamic):
    """Evaluates an affine equation with indicator weights and no cancellations; the outputs
    of weighted sums (dense, conv, reductions) count once each (see :func:`_used`)."""
    name = eqn.primitive.name
    params = eqn.primitive.get_bind_params(eqn.params)
    dyn_values = [v for v, d in zip(values, dynamic) if d]
    if name in ("sub", "add", "add_any"):
        return [dyn_values[0] + dyn_values[1] if len(dyn_values) == 2 else dyn_values[0]]
    if name in ("neg", "div"):
        return [values[0]]
    if name in ("dot_general", "conv_general_dilated", "reduce_sum", "mul"):
        values = [v if d else (jnp.asarray(v) != 0).astype(jnp.float32) for v, d in zip(values, dynamic)]
        out = eqn.primitive.bind(*values, **params)
        return [out if name == "mul" else _used(out)]  # a product is not a sum: nothing to count once
    if name == "pad":
        return [eqn.primitive.bind(values[0], jnp.zeros((), values[0].dtype), **params)]
    return None


def fan_out(snn: SNN, sample):
    """Per neuron (per position of one sample) the number of downstream accumulations one
    spike triggers; key ``"input"`` gives the codec output's fan-out (first-layer MACs).
    ``sample``: a batch ``[n, ...]`` like the calibration images (its first image is used); a
    ValueError naming the expected shape when it does not fit the network."""
    given = jnp.asarray(sample, jnp.float32)
    sample = given[:1]
    shapes = {}

    def record(name, kind, options, inputs):
        out = ann_op(kind, options)(*inputs)
        shapes[name] = out
        return out

    try:
        jax.eval_shape(lambda v, x: interpret.evaluate(snn.apply_fn, v, x, record), snn.variables, sample)
    except Exception as e:  # shape errors surface from Flax or lax with no hint
        raise ValueError(f"sample must be a batch [n, ...] of network inputs like the calibration images (images "
                         f"[batch, H, W, C]); got shape {tuple(given.shape)}: {str(e).splitlines()[0][:200]}") from None
    zeros = {k: jnp.zeros(v.shape, jnp.float32) for k, v in shapes.items()}

    def downstream(site_outputs, x):
        received = {}

        def on_site(name, kind, options, inputs):
            received[name] = inputs
            return site_outputs[name]

        logits = interpret.evaluate(snn.apply_fn, snn.variables, x, on_site, affine_rule=_counting_rule)
        return received, logits

    primal, pullback = jax.vjp(downstream, zeros, sample)
    counts, input_counts = pullback(jax.tree_util.tree_map(jnp.ones_like, primal))
    counts = {k: np.asarray(v[0]) for k, v in counts.items()}
    counts["input"] = np.asarray(input_counts[0])
    return counts


def ann_macs(snn: SNN, sample) -> float:
    """Multiply-accumulates of one ANN forward pass (from XLA's cost analysis, flops / 2)."""
    def forward(variables, x):
        return interpret.evaluate(snn.apply_fn, variables, x, interpret.ann_site)

    compiled = jax.jit(forward).lower(snn.variables, jnp.asarray(sample[:1], jnp.float32)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) / 2


def check_spike_counts(snn: SNN, spike_counts: dict, num_images: int, num_steps: int) -> None:
    """A one-line ValueError for counts that cannot come from ``simulate(snn, num_images images,
    timesteps with max num_steps, return_spike_counts=True)``: unknown or missing sites,
    misshapen or negative counts, or more events per neuron and step than the dynamics can send
    (a firing rate above 1 for binary spikes: counts over more steps than ``num_steps``)."""
    for name, value in (("num_images", num_images), ("num_steps", num_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(spike_counts, dict) or set(spike_counts) != set(snn.sites):
        given = sorted(spike_counts) if isinstance(spike_counts, dict) else type(spike_counts).__name__
        raise ValueError(f"spike_counts must map every site of this SNN to its counts (simulate(..., "
                         f"return_spike_counts=True)); expected {sorted(snn.sites)}, got {given}")
    limit = snn.dynamics.max_events_per_step
    for name, counts in spike_counts.items():
        counts = np.asarray(counts, np.float64)
        rate = counts.max(initial=0.0) / (num_images * num_steps)
        if counts.min(initial=0.0) < 0 or rate > limit * (1 + 1e-6):
            raise ValueError(f"spike counts of {name} give {rate:.3g} events per neuron and step, but a "
                             f"{snn.dynamics.label!r} neuron sends at most {limit}: were they counted over "
                             f"{num_images} images and {num_steps} steps?")


def spike_statistics(snn: SNN, spike_counts: dict, num_images: int, num_steps: int, sample) -> dict:
    """Per-layer mean firing rate and SOPs per image per time-step, with the energy estimate.

    ``spike_counts``: from ``simulate(..., return_spike_counts=True)`` (events summed over the
    batch of ``num_images`` and ``num_steps`` steps, per position; graded events counted as
    the module docstring says). ``firing_rate`` is events per neuron and step.
    """
    return spike_statistics_per_timestep(snn, {k: np.asarray(v)[None] for k, v in spike_counts.items()},
                                         num_images, (num_steps,), sample)[num_steps]


def spike_statistics_per_timestep(snn: SNN, spike_counts: dict, num_images: int, timesteps, sample) -> dict:
    """``{T: spike_statistics over the first T steps}`` from ``simulate(...,
    return_spike_counts="per_timestep")`` counts (``{site: [len(timesteps), ...]}``), with the
    fan-out and the ANN's cost computed once."""
    timesteps = tuple(int(t) for t in timesteps)
    per_t = [{k: np.asarray(v, np.float64)[i] for k, v in spike_counts.items()} for i in range(len(timesteps))]
    for counts, t in zip(per_t, timesteps):
        check_spike_counts(snn, counts, num_images, t)
    fan = fan_out(snn, sample)
    macs = ann_macs(snn, sample)
    return {t: _statistics(snn, counts, num_images, t, fan, macs) for counts, t in zip(per_t, timesteps)}


def _statistics(snn: SNN, spike_counts: dict, num_images: int, num_steps: int, fan: dict, macs: float) -> dict:
    layers, total_sops = {}, 0.0
    for name, counts in spike_counts.items():
        counts = np.asarray(counts, np.float64)
        per_image_step = counts / (num_images * num_steps)
        sops = float(np.sum(per_image_step * fan[name]))
        layers[name] = dict(firing_rate=float(per_image_step.mean()), sops_per_image_step=sops,
                            neurons=int(counts.size))
        total_sops += sops
    # The first layer multiplies real values every step (float codec, or the baseline's image).
    input_macs = float(np.sum(fan["input"]))
    snn_energy = total_sops * ENERGY_PER_AC_PJ + input_macs * ENERGY_PER_MAC_PJ
    return dict(
        bits_per_neuron_step=snn.dynamics.bits_per_step,
        layers=layers,
        sops_per_image_step=total_sops,
        input_macs_per_image_step=input_macs,
        energy_pj_per_image_step=snn_energy,
        ann_macs_per_image=macs,
        ann_energy_pj_per_image=macs * ENERGY_PER_MAC_PJ,
        energy_costs_pj=dict(accumulate=ENERGY_PER_AC_PJ, multiply_accumulate=ENERGY_PER_MAC_PJ),
    )
