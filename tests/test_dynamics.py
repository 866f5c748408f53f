"""Neuron-level checks against the equations of docs/design.md ("The dynamics")."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import signgd_jax as sg
from signgd_jax import dynamics

PHI = {
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.1 * x),
    "gelu": lambda x: x / (1 + np.exp(-1.702 * x)),
    "abs": np.abs,
    "square": np.square,
    "exp": np.exp,
}


def test_exponential_schedule_matches_formula():
    etas = np.asarray(sg.make_schedule().step_sizes(100), np.float64)
    expected = 0.15 * 0.95 ** np.arange(100)
    np.testing.assert_allclose(etas, expected, rtol=1e-6)
    assert abs(etas.sum() - 0.15 * (1 - 0.95 ** 100) / 0.05) < 1e-5


def test_other_schedules():
    np.testing.assert_allclose(sg.make_schedule("inverse", eta0=0.5).step_sizes(4), [0.5, 0.25, 0.5 / 3, 0.125], rtol=1e-6)
    np.testing.assert_allclose(sg.make_schedule("constant", eta0=0.2).step_sizes(3), [0.2] * 3, rtol=1e-6)
    optax_schedule = optax.exponential_decay(0.15, transition_steps=1, decay_rate=0.9)
    np.testing.assert_allclose(sg.make_schedule(optax_schedule).step_sizes(3), [0.15, 0.135, 0.1215], rtol=1e-5)
    with pytest.raises(ValueError, match="unknown schedule"):
        sg.make_schedule("cosine")


def test_float_codec_reaches_c_t_times_image():
    # c_t = 1 - prod(1 - eta_k): the reference's float codec only reaches 0.956 of the image.
    image = jnp.array([0.3, 1.0, -0.7])
    etas = sg.make_schedule().step_sizes(64)
    c = 1 - np.cumprod(1 - np.asarray(etas, np.float64))
    f = jnp.zeros(3)
    for t, eta in enumerate(etas, start=1):
        emitted, f = dynamics.encode("float", f, image, eta)
        np.testing.assert_allclose(f, c[t - 1] * np.asarray(image), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(c[[7, 31, 63]], [0.661, 0.921, 0.951], atol=5e-4)  # docs/design.md's figures


AFFINE_W = np.array([[1.0, -2.0], [0.5, 0.25], [3.0, 1.0]], np.float32)
AFFINE_B = np.array([0.1, -0.2], np.float32)


def affine_net(variables, x):
    return x @ variables["w"] + variables["b"]


@pytest.mark.parametrize("mode", ["paper", "improved"])
def test_decoder_of_an_affine_network_is_the_affine_map_of_the_codec_estimate(mode):
    """No neurons: ``y_t = A(f_t)`` with ``f_t = c_t * image`` (paper) or the image itself (improved's
    exact codec), for any schedule."""
    images = np.array([[0.3, -1.0, 0.7], [1.0, 0.2, -0.4]], np.float32)
    steps = (1, 2, 8, 64, 300)
    snn = sg.convert(affine_net, {"w": AFFINE_W, "b": AFFINE_B}, [images], dynamics=mode, eta0=0.2, gamma=0.9)
    out = np.asarray(sg.simulate(snn, images, steps), np.float64)
    etas = 0.2 * 0.9 ** np.arange(max(steps))
    c = 1 - np.cumprod(1 - etas) if mode == "paper" else np.ones(max(steps))
    expected = np.stack([(c[t - 1] * images.astype(np.float64)) @ AFFINE_W + AFFINE_B for t in steps])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_exact_float_codec_delivers_image():
    image = jnp.array([0.3, 1.0, -0.7, 2.5])
    f = jnp.zeros(4)
    for eta in sg.make_schedule().step_sizes(3):
        _, f = dynamics.encode("float", f, image, eta, exact=True)
        np.testing.assert_allclose(f, image, atol=1e-6)


def test_spike_codec_tracks_image():
    image = jnp.array([0.3, 1.0, -0.7])
    f = jnp.zeros(3)
    etas = sg.make_schedule().step_sizes(200)
    for eta in etas:
        spike, f = dynamics.encode("spike", f, image, eta)
        assert set(np.unique(spike)) <= {0.0, 1.0}
    assert np.all(np.abs(f - image) <= 2 * etas[-1] + 1e-6)


@pytest.mark.parametrize("kind", sorted(PHI))
def test_neuron_tracks_target_within_step_size(kind):
    x = np.linspace(-1.2, 1.0, 23).astype(np.float32)
    options = {"negative_slope": 0.1} if kind == "leaky_relu" else {}
    v = np.asarray(sg.neuron_trajectory(kind, x, 120, **options))
    assert v.shape == (120, 23)
    etas = np.asarray(sg.make_schedule().step_sizes(120))
    phi = PHI[kind](x)
    reach = np.cumsum(etas)
    # once the estimate has had time to reach the target (|phi| <= 2.72 < 3), it stays within eta_t
    converged = reach > np.abs(phi).max() + etas[0]
    error = np.abs(v - phi[None])
    assert np.all(error[converged] <= etas[converged, None] + 1e-5)
    assert converged.sum() >= 60


def test_paper_mode_saturates_and_improved_mode_does_not():
    x = np.array([2.5, 3.0], np.float32)  # square targets 6.25 and 9, beyond eta0/(1-gamma) = 3
    paper = np.asarray(sg.neuron_trajectory("square", x, 300))
    improved = np.asarray(sg.neuron_trajectory("square", x, 300, dynamics="improved"))
    # never above its target, the estimate never fires: v_t = eta_1 + ... + eta_t, at most 3
    reach = np.cumsum(0.15 * 0.95 ** np.arange(300))
    np.testing.assert_allclose(paper, np.broadcast_to(reach[:, None], paper.shape), rtol=1e-5)
    assert reach[-1] < 3.0
    np.testing.assert_allclose(improved[-1], x ** 2, atol=1e-4)


def test_tie_rules():
    # relu, square and exp fire when v == target; the others only above it.
    v = jnp.array([0.5])
    assert float(dynamics.fire("relu", v, [jnp.array([0.5])])[0]) == 1.0
    assert float(dynamics.fire("square", jnp.array([0.25]), [jnp.array([0.5])])[0]) == 1.0
    assert float(dynamics.fire("abs", v, [jnp.array([-0.5])])[0]) == 0.0
    assert float(dynamics.fire("leaky_relu", v, [jnp.array([0.5])])[0]) == 0.0
    assert float(dynamics.fire("maximum", v, [jnp.array([0.5]), jnp.array([0.1])])[0]) == 0.0
    # relu compares with relu(x): a negative input makes it fire at v = 0
    assert float(dynamics.fire("relu", jnp.array([0.0]), [jnp.array([-2.0])])[0]) == 1.0


def test_binary_neurons():
    assert float(dynamics.fire("rsqrt_mul", jnp.array([1.1]), [jnp.array([2.0]), jnp.array([4.0])])[0]) == 1.0
    assert float(dynamics.fire("rsqrt_mul", jnp.array([0.9]), [jnp.array([2.0]), jnp.array([4.0])])[0]) == 0.0
    # x2 <= 0: silent
    assert float(dynamics.fire("rsqrt_mul", jnp.array([5.0]), [jnp.array([-2.0]), jnp.array([0.0])])[0]) == 0.0
    assert float(dynamics.fire("divide", jnp.array([2.1]), [jnp.array([4.0]), jnp.array([2.0])])[0]) == 1.0
    assert float(dynamics.fire("product", jnp.array([7.9]), [jnp.array([4.0]), jnp.array([2.0])])[0]) == 0.0


def test_if_neuron_is_a_rate():
    x = np.array([0.0, 0.25, 0.5, 0.9, 1.5], np.float32)
    v = np.asarray(sg.neuron_trajectory("relu", x, 2000, dynamics="if"))
    np.testing.assert_allclose(v[-1], np.clip(x, 0, 1), atol=2e-3)


def test_trajectory_vmaps_over_schedule():
    sweep = jax.vmap(lambda e, g: sg.neuron_trajectory("gelu", jnp.array([0.8]), 50,
                                                        schedule=sg.Schedule(eta0=e, gamma=g)))
    out = sweep(jnp.array([0.1, 0.15, 0.3]), jnp.array([0.9, 0.95, 0.97]))
    assert out.shape == (3, 50, 1)
    single = sg.neuron_trajectory("gelu", jnp.array([0.8]), 50, eta0=0.3, gamma=0.97)
    np.testing.assert_allclose(out[2], single, atol=1e-5)


def test_bad_kind_is_rejected():
    with pytest.raises(ValueError, match="supported"):
        sg.neuron_trajectory("sin", np.zeros(2), 4)
