"""simulate(..., offset_correction=False): the signGD recursion without the A(1) + A(0) correction.

Corrected:    x_0 = A(0),  x_t = x_{t-1} - eta_t (2 A(s_t) - A(1) - A(0))
Uncorrected:  x_0 = A(0),  x_t = x_{t-1} - eta_t A(2 s_t - 1)

with ``A(sigma)`` the affine sub-network at source levels ``sigma`` (source j's value
``o_j + r_j sigma_j``; the codec's level is its emitted value). The literal float64 loops below
follow the uncorrected recursion from spikes, nothing else of the library.
"""
import importlib

import jax
import numpy as np
import pytest

import signgd_jax as sg

simulate_module = importlib.import_module("signgd_jax.simulate")


def relu(z):
    return np.maximum(z, 0.0)


def single(v, x):
    """One affine layer with bias into one ReLU, then the affine decoder."""
    return jax.nn.relu(x @ v["w1"] + v["b1"]) @ v["w2"] + v["b2"]


def residual(v, x):
    """A second ReLU fed by a residual add of two sources (the first ReLU and the codec); the
    decoder adds both ReLUs."""
    a = jax.nn.relu(x @ v["w1"] + v["b1"])
    z = jax.nn.relu(a @ v["w2"] + v["b2"] + x @ v["w3"] + v["b3"])
    return z @ v["w4"] + a @ v["w5"] + v["b4"]


def weights(seed: int, with_bias: bool = True):
    rng = np.random.default_rng(seed)
    shapes = dict(w1=(4, 6), b1=(6,), w2=(6, 5), b2=(5,), w3=(4, 5), b3=(5,), w4=(5, 3), w5=(6, 3), b4=(3,))
    v = {k: rng.normal(size=s).astype(np.float32) * (0.7 if k.startswith("w") else 1.0) for k, s in shapes.items()}
    if not with_bias:
        v = {k: (np.zeros_like(a) if k.startswith("b") else a) for k, a in v.items()}
    return v


def images(seed: int, n: int = 6):
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 4)).astype(np.float32)


def units(site):
    """(o, r) of a site's output estimate in float64: ``u = o + r v``."""
    o = 0.0 if site.out_offset is None else np.asarray(site.out_offset, np.float64)[0]
    r = 1.0 if site.out_scale is None else np.asarray(site.out_scale, np.float64)[0]
    return o, r


def literal_uncorrected(net: str, snn, v, image, etas):
    """Per step t = 1..len(etas): ({site: x_t}, {site: u_t}, {site: spike_t}, y_t), float64."""
    v = {k: np.asarray(a, np.float64) for k, a in v.items()}
    image = np.asarray(image, np.float64)
    names = sorted(snn.sites)
    (o1, r1), (o2, r2) = units(snn.sites[names[0]]), (units(snn.sites[names[1]]) if net == "residual" else (0, 1))
    exact = snn.dynamics.name == "improved"  # improved mode's float codec delivers the image exactly

    def a1(level_c):  # codec -> first ReLU
        return level_c @ v["w1"] + v["b1"]

    def a2(level_a, level_c):  # first ReLU and codec -> second ReLU (residual add)
        return (o1 + r1 * level_a) @ v["w2"] + v["b2"] + level_c @ v["w3"] + v["b3"]

    def decoder(level_a, level_z):
        if net == "single":
            return (o1 + r1 * level_a) @ v["w2"] + v["b2"]
        return (o2 + r2 * level_z) @ v["w4"] + (o1 + r1 * level_a) @ v["w5"] + v["b4"]

    zero_c, zero_a = np.zeros_like(image), np.zeros((len(image), v["w1"].shape[1]))
    zero_z = np.zeros((len(image), v["w2"].shape[1]))
    f = np.zeros_like(image)
    x1, u1 = a1(zero_c), o1 + 0 * zero_a
    x2, u2 = a2(zero_a, zero_c), o2 + 0 * zero_z
    y = decoder(zero_a, zero_z)
    out = []
    for eta in np.asarray(etas, np.float64):
        g = f - image
        emitted = (1 + (g / eta if exact else g)) / 2  # the codec's level e_t
        f = f - eta * (2 * emitted - 1)
        x1 = x1 - eta * a1(2 * emitted - 1)
        s1 = (u1 >= relu(x1)).astype(np.float64)  # H(0) = 1 for relu
        u1 = u1 - eta * r1 * (2 * s1 - 1)
        xs, us, ss = {names[0]: x1}, {names[0]: u1}, {names[0]: s1}
        s2 = zero_z
        if net == "residual":
            x2 = x2 - eta * a2(2 * s1 - 1, 2 * emitted - 1)
            s2 = (u2 >= relu(x2)).astype(np.float64)
            u2 = u2 - eta * r2 * (2 * s2 - 1)
            xs[names[1]], us[names[1]], ss[names[1]] = x2, u2, s2
        y = y - eta * decoder(2 * s1 - 1, 2 * s2 - 1)
        out.append((xs, us, ss, y))
    return out


def recorded_steps(snn, image, etas, monkeypatch):
    """The library's step, run eagerly with S_t: per step ({site: inputs}, {site: u_t}, spikes, logits)."""
    received = {}
    plain = simulate_module.neurons_of

    def recording(snn):
        def wrap(name, neuron):
            def step(state, inputs, eta):
                received[name] = np.asarray(inputs[0], np.float64)
                return neuron.step(state, inputs, eta)
            return neuron._replace(step=step)
        return {name: wrap(name, n) for name, n in plain(snn).items()}

    state = simulate_module.initial_state(snn, image)
    elapsed = np.cumsum(np.asarray(etas, np.float64)).astype(np.float32)
    out = []
    with monkeypatch.context() as patched:
        patched.setattr(simulate_module, "neurons_of", recording)
        for eta, s_t in zip(etas, elapsed):
            state, logits, spikes = simulate_module.step(snn, state, image, eta, elapsed=s_t)
            out.append((dict(received), {k: np.asarray(u, np.float64) for k, u in state["neurons"].items()},
                        {k: np.asarray(s) for k, s in spikes.items()}, np.asarray(logits, np.float64)))
    return out


def min_margin(literal, snn):
    """The smallest |u_{t-1} - relu(x_t)| over the literal loop's decisions, exact zero ties left out."""
    margins = []
    for name, site in snn.sites.items():
        u_prev = units(site)[0] + 0 * literal[0][0][name]
        for xs, us, _, _ in literal:
            gap = np.abs(u_prev - relu(xs[name]))
            margins.append(gap[(u_prev != 0) | (relu(xs[name]) != 0)])
            u_prev = us[name]
    return np.concatenate([m.ravel() for m in margins]).min()


@pytest.mark.parametrize("net", ["single", "residual"])
@pytest.mark.parametrize("mode", ["paper", "improved"])
def test_uncorrected_simulation_is_the_literal_uncorrected_recursion(net, mode, monkeypatch):
    fn, v, x = {"single": single, "residual": residual}[net], weights(1), images(2)
    snn = sg.convert(fn, v, [x], dynamics=mode)
    assert len(snn.sites) == (1 if net == "single" else 2)
    num_steps = 8
    etas = np.asarray(snn.schedule.step_sizes(num_steps))
    literal = literal_uncorrected(net, snn, v, x, etas)
    # the premise of comparing spikes exactly: no near-tie in any decision (exact ties 0 = relu(x) aside)
    assert min_margin(literal, snn) > 1e-4  # float32 rounding here is ~1e-6
    library = recorded_steps(snn, x, etas, monkeypatch)
    for t, ((xs, us, ss, y), (xr, ur, sr, yr)) in enumerate(zip(literal, library), start=1):
        for name in xs:
            np.testing.assert_allclose(xr[name], xs[name], rtol=1e-5, atol=1e-5, err_msg=f"x_{t} of {name}")
            np.testing.assert_array_equal(sr[name], ss[name], err_msg=f"spikes_{t} of {name}")
            np.testing.assert_allclose(ur[name], us[name], rtol=1e-5, atol=1e-5, err_msg=f"u_{t} of {name}")
        np.testing.assert_allclose(yr, y, rtol=1e-5, atol=1e-5, err_msg=f"y_{t}")
    # the compiled simulation gives the same logits at every step
    compiled = np.asarray(sg.simulate(snn, x, range(1, num_steps + 1), offset_correction=False), np.float64)
    np.testing.assert_allclose(compiled, np.stack([y for *_, y in literal]), rtol=1e-5, atol=1e-5)
    # and differs from the corrected one by more than rounding (the biases are not zero)
    corrected = np.asarray(sg.simulate(snn, x, range(1, num_steps + 1)), np.float64)
    assert np.abs(corrected - compiled).max() > 0.1


def test_affine_network_without_correction_ends_three_biases_away():
    """No neurons: ``y_t = A(f_t) - S_t A(0)`` with ``A(0) = b``, so at large T the logits miss the
    ANN's by ``S_inf b = eta0 / (1 - gamma) b = 3 b`` (improved mode's exact codec: f_t = image)."""
    w, b = np.array([[1.0, -2.0], [0.5, 0.25], [3.0, 1.0]], np.float32), np.array([0.4, -0.7], np.float32)
    x = images(3)[:, :3]
    snn = sg.convert(lambda v, z: z @ v["w"] + v["b"], {"w": w, "b": b}, [x], dynamics="improved")
    steps = (1, 8, 600)
    off = np.asarray(sg.simulate(snn, x, steps, offset_correction=False), np.float64)
    s = np.cumsum(0.15 * 0.95 ** np.arange(max(steps)))[np.asarray(steps) - 1]
    expected = x.astype(np.float64) @ w + b - s[:, None, None] * b
    np.testing.assert_allclose(off, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(off[-1] - (x @ w + b), np.broadcast_to(-3 * b, off[-1].shape), atol=1e-4)


@pytest.mark.parametrize("mode", ["paper", "improved"])
def test_without_correction_the_snn_does_not_approach_the_ann(mode):
    v, x = weights(4), images(5, 16)
    ann = np.asarray(residual(v, x), np.float64)
    snn = sg.convert(residual, v, [x], dynamics=mode)
    steps = (64, 256)
    on = np.abs(np.asarray(sg.simulate(snn, x, steps), np.float64) - ann).mean(axis=(1, 2))
    off = np.abs(np.asarray(sg.simulate(snn, x, steps, offset_correction=False), np.float64) - ann).mean(axis=(1, 2))
    # mean |ANN logit| is 1.25 here; measured: on 0.042 (paper, c_t < 1) and 5e-7 (improved) at
    # T=256, off 2.7 and 2.1, no closer at T=256 than at T=64
    assert on[-1] < 0.1
    assert off.min() > 1.0 and off[-1] > 0.9 * off[0]


@pytest.mark.parametrize("codec", ["float", "spike"])
def test_without_biases_paper_mode_is_unchanged(codec):
    """Paper mode with zero biases has A(0) = 0 everywhere (outputs start at 0, the codec at 0):
    both settings give the same logits, bit for bit."""
    v, x = weights(6, with_bias=False), images(7)
    snn = sg.convert(residual, v, [x], dynamics="paper", codec=codec)
    assert all(np.all(np.asarray(a) == 0) for site in snn.sites.values() for a in site.a0)
    steps = (1, 4, 32)
    np.testing.assert_array_equal(np.asarray(sg.simulate(snn, x, steps, offset_correction=False)),
                                  np.asarray(sg.simulate(snn, x, steps)))


def test_without_biases_improved_mode_still_shifts_by_the_response_to_the_means():
    """Improved mode's A(0) is the response to the calibrated means o, not the bias: nonzero."""
    v, x = weights(6, with_bias=False), images(7)
    snn = sg.convert(residual, v, [x], dynamics="improved")
    o1, r1 = units(snn.sites[sorted(snn.sites)[0]])
    np.testing.assert_allclose(np.asarray(snn.sites[sorted(snn.sites)[1]].a0[0][0], np.float64),
                               o1 @ v["w2"].astype(np.float64), rtol=1e-5, atol=1e-6)
    steps = (8,)
    assert np.abs(np.asarray(sg.simulate(snn, x, steps, offset_correction=False))
                  - np.asarray(sg.simulate(snn, x, steps))).max() > 0.1


def test_integrate_and_fire_refuses_the_option():
    v, x = weights(1), images(2)
    snn = sg.convert(single, v, [x], dynamics="if")
    with pytest.raises(ValueError, match="offset_correction=False .*'if' dynamics"):
        sg.simulate(snn, x, (4,), offset_correction=False)
    assert np.all(np.isfinite(np.asarray(sg.simulate(snn, x, (4,)))))  # the default still runs
