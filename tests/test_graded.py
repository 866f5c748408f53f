"""Graded signGD (improved mode, ``spike_levels=K``): K = 1 is today's neuron bit for bit, the
graded neuron's error bound for every kind, integer events through the affine layers, and the
synaptic operations counted as additions."""
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import signgd_jax as sg
from signgd_jax import dynamics, kinds, metrics


class Tiny(fnn.Module):
    """Dense -> GELU -> Dense: the hidden layer's input is the image through one affine map."""

    @fnn.compact
    def __call__(self, x):
        return fnn.Dense(3, name="out")(fnn.gelu(fnn.Dense(5, name="hidden")(x)))


class Deeper(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = sg.nn.relu(fnn.Dense(12)(x))
        x = fnn.LayerNorm()(fnn.Dense(12)(x))
        return fnn.Dense(4)(fnn.gelu(x))


def _net(model, n=32, features=6, seed=0):
    x = jax.random.normal(jax.random.key(seed), (n, features))
    return model, model.init(jax.random.key(seed + 1), x), x


def test_one_level_is_the_binary_neuron_bit_for_bit():
    model, variables, x = _net(Deeper())
    binary = sg.convert(model, variables, x, dynamics="improved")
    graded = sg.convert(model, variables, x, dynamics="improved", spike_levels=1)
    assert graded.dynamics is dynamics.IMPROVED and binary.dynamics.label == "improved"
    a, counts_a = sg.simulate(binary, x, (1, 3, 16), return_spike_counts=True)
    b, counts_b = sg.simulate(graded, x, (1, 3, 16), return_spike_counts=True)
    np.testing.assert_array_equal(a, b)
    for name in counts_a:
        np.testing.assert_array_equal(counts_a[name], counts_b[name])
    three = graded.with_spike_levels(3)
    assert three.dynamics.spike_levels == 3 and three.dynamics.label == "improved K=3"
    assert three.with_spike_levels(1).dynamics is dynamics.IMPROVED
    assert not np.array_equal(sg.simulate(three, x, (3,)), a[1:2])


def test_spike_levels_are_refused_where_they_mean_nothing():
    model, variables, x = _net(Tiny())
    for bad in (0, -2, 1.5, True, "3"):
        with pytest.raises(ValueError, match="spike_levels must be a positive integer"):
            sg.convert(model, variables, x, dynamics="improved", spike_levels=bad)
    with pytest.raises(ValueError, match="spike_levels applies to"):
        sg.convert(model, variables, x, dynamics="paper", spike_levels=3)


def _bound(phi, start, etas, scale, levels):
    """``B_t = max(h_t, B_{t-1} - K h_t)``, ``B_0 = |phi - u_0|``, ``h_t = eta_t r``: after a step
    the error is at most one step, or it shrank by K steps (docs/design.md, graded signGD)."""
    bound = np.abs(phi - start)
    for eta in etas:
        h = eta * scale
        bound = np.maximum(h, bound - levels * h)
    return bound


UNARY = [k for k in kinds.UNARY_KINDS if k not in ("max_pool", "qcfs")]


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(kind=st.sampled_from(UNARY), levels=st.sampled_from([1, 2, 3, 7]),
       eta0=st.floats(0.02, 1.0), decay=st.floats(0.3, 1.0), num_steps=st.integers(1, 12),
       seed=st.integers(0, 2**16))
def test_graded_error_bound_for_every_kind(kind, levels, eta0, decay, num_steps, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.5, 2.5, (2, 5)).astype(np.float32)
    options = {"axis": (-1,)} if kind in ("softmax", "layer_norm") else {}
    gamma = decay ** (1 / max(num_steps - 1, 1))
    phi = np.asarray(dynamics.IMPROVED.target_of(kinds.get(kind))(jnp.asarray(x), **options), np.float64)
    offset = rng.uniform(-1, 1, phi.shape).astype(np.float32)
    scale = rng.uniform(0.05, 1.5, phi.shape).astype(np.float32)
    u = np.asarray(sg.neuron_trajectory(kind, x, num_steps, dynamics="improved", spike_levels=levels, eta0=eta0,
                                        gamma=gamma, out_offset=offset, out_scale=scale, **options), np.float64)
    etas = np.asarray(sg.make_schedule("exponential", eta0, gamma).step_sizes(num_steps), np.float64)
    bound = _bound(phi, offset, etas, scale, levels)
    assert np.all(np.abs(u[-1] - phi) <= bound * (1 + 1e-4) + 1e-5)


def test_more_levels_reach_a_far_target_sooner():
    x = np.linspace(-3, 3, 7, dtype=np.float32)
    errors = []
    for levels in (1, 3, 7):
        u = sg.neuron_trajectory("gelu", x, 4, dynamics="improved", spike_levels=levels, eta0=0.2, gamma=0.7,
                                 out_offset=0.0, out_scale=1.0)
        errors.append(float(np.abs(np.asarray(u[-1]) - np.asarray(jax.nn.gelu(x))).max()))
    assert errors[2] < errors[1] < errors[0]


def test_integer_events_through_the_affine_layers():
    """The receiving layer sees ``x_t = x_{t-1} + eta_t L(r q_t)`` with integer ``q_t`` in
    ``{-K..-1, 1..K}``: tracked literally from the events, the logits equal simulate's (the
    tracking identity ``x_t = A(estimates below)``)."""
    model, variables, x = _net(Tiny(), n=8)
    levels, num_steps = 3, 10
    snn = sg.convert(model, variables, x, dynamics="improved", spike_levels=levels, eta0=0.3, gamma=0.8)
    ((name, site),) = snn.sites.items()
    p = snn.variables["params"]
    pre = np.asarray(x @ p["hidden"]["kernel"] + p["hidden"]["bias"], np.float32)  # the exact codec's image
    target = np.asarray(jax.nn.gelu(pre))  # improved mode tracks the ANN's own (tanh) GELU
    r, u = np.asarray(site.out_scale[0]), np.broadcast_to(np.asarray(site.out_offset[0]), pre.shape).copy()
    w2 = np.asarray(p["out"]["kernel"], np.float64)
    logits = np.broadcast_to(np.asarray(snn.decoder.a0[0], np.float64), (len(x), 3)).copy()
    etas = np.asarray(snn.schedule.step_sizes(num_steps), np.float32)
    literal, events = [], []
    for eta in etas:
        size = (eta * r).astype(np.float32)
        spike = (u > target).astype(np.float32)
        k = np.clip(np.floor(np.abs((target - u) / size) + 0.5), 1, levels)
        q = -(2 * spike - 1) * k
        assert np.all(np.isin(q, [-3, -2, -1, 1, 2, 3]))
        u = (u + size * q).astype(np.float32)
        logits = logits + eta * (q * r) @ w2
        literal.append(logits.copy())
        events.append(k - 1 + spike)
    fast, counts = sg.simulate(snn, x, range(1, num_steps + 1), return_spike_counts=True)
    np.testing.assert_allclose(np.asarray(fast), np.stack(literal), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(counts[name]), np.sum(events, axis=(0, 1)), atol=1e-3)


def test_synaptic_operations_count_graded_events_as_additions():
    """Hand-sized: 2 inputs -> 3 ReLUs -> 2 logits, one zero weight. Each event of a ReLU neuron
    costs one addition per nonzero outgoing weight; a move of k steps is k - 1 + s events."""
    class Hand(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Dense(2, name="out")(sg.nn.relu(fnn.Dense(3, name="hidden")(x)))

    model = Hand()
    x = jnp.asarray([[1.0, -0.5], [0.3, 0.8], [-1.0, 0.2], [0.5, 0.5]])
    variables = model.init(jax.random.key(0), x)
    variables["params"]["out"]["kernel"] = variables["params"]["out"]["kernel"].at[1, 0].set(0.0)
    snn = sg.convert(model, variables, x, dynamics="improved", spike_levels=3, eta0=0.4, gamma=0.8)
    num_steps = 6
    _, counts = sg.simulate(snn, x, (num_steps,), return_spike_counts=True)
    stats = metrics.spike_statistics(snn, counts, len(x), num_steps, x)
    fan = np.array([2, 1, 2])  # nonzero weights leaving each hidden neuron
    expected = float(np.sum(np.asarray(counts["000_relu@Hand"]) * fan)) / (len(x) * num_steps)
    assert stats["sops_per_image_step"] == pytest.approx(expected, rel=1e-6)
    assert stats["bits_per_neuron_step"] == pytest.approx(np.log2(6))
    assert stats["layers"]["000_relu@Hand"]["firing_rate"] <= 3
    with pytest.raises(ValueError, match="at most 3"):
        metrics.spike_statistics(snn, counts, len(x), 1, x)  # counts of 6 steps said to be of 1


def test_tuning_chooses_levels_and_schedule_per_budget():
    model, variables, x = _net(Deeper(), n=48)
    snn = sg.convert(model, variables, x, dynamics="improved")
    choice = sg.tune_schedule(snn, x, timesteps=(2, 4), spike_levels=(1, 3), eta0=(0.15, 0.45), decay=(0.3, 1.0),
                              images=48)
    assert set(choice.spike_levels) <= {1, 3}
    logits = sg.simulate_tuned(snn, choice, x)
    for i, t in enumerate(choice.timesteps):
        e, g = choice.point(t)
        own = sg.simulate(snn.with_schedule(eta0=e, gamma=g).with_spike_levels(choice.levels(t)), x, (t,))[0]
        np.testing.assert_array_equal(logits[i], own)
    fixed = sg.tune_schedule(snn, x, timesteps=(4,), spike_levels=(3,), eta0=(0.15, 0.45), decay=(1.0,), images=48)
    assert fixed.spike_levels == (3,) and fixed.as_dict()["4"]["spike_levels"] == 3


def test_spike_counts_per_timestep_are_the_totals_of_shorter_runs():
    model, variables, x = _net(Deeper(), n=8)
    snn = sg.convert(model, variables, x, dynamics="improved", spike_levels=2)
    _, per_t = sg.simulate(snn, x, (2, 5), return_spike_counts="per_timestep")
    for i, t in enumerate((2, 5)):
        _, alone = sg.simulate(snn, x, (t,), return_spike_counts=True)
        for name in alone:
            np.testing.assert_allclose(per_t[name][i], alone[name], rtol=1e-6)
    with pytest.raises(ValueError, match="per_timestep"):
        sg.simulate(snn, x, 2, return_spike_counts="each")
