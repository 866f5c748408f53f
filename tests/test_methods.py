"""The compared methods as dynamics rows: QCFS integrate-and-fire neurons and ECMT's expectation
compensation with multi-threshold neurons, each against its equations on hand-sized inputs and
against the ANN in a small network."""
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import signgd_jax as sg
from signgd_jax import dynamics, metrics


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(levels=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_qcfs_neuron_with_a_constant_input_emits_the_quantised_count(levels, seed):
    """Membrane 1/2, threshold 1, reset by subtraction: after L steps of input z the count is
    ``clip(floor(z L + 1/2), 0, L)``, the QCFS activation times L."""
    z = np.random.default_rng(seed).uniform(-0.3, 1.3, 64).astype(np.float32)
    z = z[np.abs(z * levels + 0.5 - np.round(z * levels + 0.5)) > 1e-3]  # no float ties at a threshold
    rate = np.asarray(sg.neuron_trajectory("qcfs", z, levels, dynamics="qcfs", levels=levels))[-1]
    count = np.round(rate * levels)
    np.testing.assert_array_equal(count, np.clip(np.floor(z * levels + 0.5), 0, levels))
    np.testing.assert_allclose(rate, sg.nn.qcfs(z, 1.0, levels), atol=1e-6)


class QcfsNet(fnn.Module):
    levels: int = 4

    @fnn.compact
    def __call__(self, x):
        x = sg.nn.QCFS(self.levels, init_threshold=2.0)(fnn.Dense(16)(x))
        x = sg.nn.QCFS(self.levels, init_threshold=2.0)(fnn.Dense(16)(x))
        return fnn.Dense(3)(x)


def test_qcfs_network_reaches_its_ann_at_t_equals_l_and_other_networks_are_refused():
    model = QcfsNet()
    x = jax.random.normal(jax.random.key(0), (64, 5))
    variables = model.init(jax.random.key(1), x)
    snn = sg.convert(model, variables, x, dynamics="qcfs")
    ann = np.asarray(model.apply(variables, x))
    out = np.asarray(sg.simulate(snn, x, (1, 4, 64)))
    err = np.abs(out - ann[None]).mean(axis=(1, 2))
    assert err[2] < err[0] / 3
    assert np.mean(out[1].argmax(-1) == ann.argmax(-1)) >= 0.8
    with pytest.raises(sg.UnsupportedOperation, match="QCFS-trained networks"):
        sg.convert(_Relu(), _Relu().init(jax.random.key(0), x), x, dynamics="qcfs")


def test_qcfs_network_converges_to_its_clip_network_as_t_grows():
    """As T grows, each rate tends to ``clip(z, 0, 1)`` (the floor's steps get finer), so a
    QCFS SNN converges to the network with its QCFS activations replaced by clipping, not to the
    L-level ANN it was trained as: the error to that clip network falls like 1/T, while the
    distance to the quantised ANN stays."""
    model = QcfsNet(levels=2)
    x = jax.random.normal(jax.random.key(0), (64, 5))
    variables = model.init(jax.random.key(1), x)
    apply = lambda v, inputs: model.apply(v, inputs)

    def clipped(index, kind, options, inputs):
        if kind == "qcfs":
            return jnp.clip(inputs[0], 0, 1)
        return sg.interpret.ann_site(index, kind, options, inputs)

    clip_net = np.asarray(sg.interpret.evaluate(apply, variables, x, clipped))
    ann = np.asarray(model.apply(variables, x))
    out = np.asarray(sg.simulate(sg.convert(model, variables, x, dynamics="qcfs"), x, (64, 1024)))
    to_clip = np.abs(out - clip_net[None]).max(axis=(1, 2))
    assert to_clip[1] < to_clip[0] / 4, to_clip
    assert to_clip[1] < 0.02 * np.abs(clip_net).max(), to_clip
    assert np.abs(out[1] - ann).max() > 10 * to_clip[1]  # the limit is not the 2-level ANN


class _Relu(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return fnn.Dense(3)(sg.nn.relu(fnn.Dense(8)(x)))


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(kind=st.sampled_from(["gelu", "relu", "exp", "tanh", "square"]), steps=st.integers(1, 12),
       seed=st.integers(0, 2**16))
def test_expectation_compensation_sums_to_t_times_f_of_the_mean(kind, steps, seed):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(0, 1, (steps, 7)).astype(np.float32)
    phi = dynamics.kinds.get(kind).ann
    cumulative, total, sums = jnp.zeros(7), jnp.zeros(7), jnp.zeros(7)
    for t in range(1, steps + 1):
        sums = sums + inputs[t - 1]
        out, cumulative = dynamics.expectation_compensation((sums,), jnp.float32(t), phi, {}, cumulative)
        total = total + out
        np.testing.assert_allclose(total, t * phi(inputs[:t].mean(0)), rtol=1e-5, atol=1e-5)


def test_multi_threshold_neuron_sends_powers_of_two_and_keeps_the_rest():
    theta = jnp.float32(0.25)
    membrane = jnp.asarray([0.0, 0.12, 0.13, 0.3, 1.0, 40.0, -0.5, -0.37])
    emitted, fired = dynamics.multi_threshold(membrane, theta, theta, 4)  # spikes +-0.25 * {1, 2, 4, 8}
    np.testing.assert_allclose(emitted, [0, 0, 0.25, 0.25, 1.0, 2.0, -0.5, -0.25])
    np.testing.assert_array_equal(fired, [0, 0, 1, 1, 1, 1, 1, 1])
    # whatever is within reach ends within half the smallest threshold
    reachable = jnp.abs(membrane) <= theta * 8.5
    assert np.all(np.abs(np.asarray(membrane - emitted))[reachable] <= 0.125 + 1e-7)


class Mixed(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = fnn.LayerNorm()(fnn.Dense(12)(x))
        x = fnn.gelu(fnn.Dense(12)(x))
        return fnn.Dense(4)(jax.nn.softmax(fnn.Dense(6)(x)) * 3)


def test_ecmt_network_approaches_its_ann_and_counts_one_accumulate_per_spike():
    model = Mixed()
    x = jax.random.normal(jax.random.key(2), (48, 5))
    variables = model.init(jax.random.key(3), x)
    snn = sg.convert(model, variables, x, dynamics="ecmt")
    assert snn.dynamics.spike_levels == 8 and snn.dynamics.bits_per_step == pytest.approx(np.log2(17))
    ann = np.asarray(model.apply(variables, x))
    out, counts = sg.simulate(snn, x, (1, 4, 32), return_spike_counts=True)
    err = np.abs(np.asarray(out) - ann[None]).mean(axis=(1, 2))
    assert err[2] < err[0] / 4 and err[2] < err[1]
    stats = metrics.spike_statistics(snn, counts, len(x), 32, x)
    assert all(0 <= layer["firing_rate"] <= 1 for layer in stats["layers"].values())
    two = snn.with_spike_levels(2)
    assert two.dynamics.label == "ecmt K=2" and two.dynamics.bits_per_step == pytest.approx(np.log2(5))
