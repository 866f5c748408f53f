"""Converter and simulator on small hand-written networks: identities, probe values, errors."""
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import unfreeze

import signgd_jax as sg
from signgd_jax import interpret, nn
from signgd_jax.fold import fold_batch_norm


class Net(fnn.Module):
    """The converter docstring's example: flax layers plus signgd_jax nonlinearities."""

    @fnn.compact
    def __call__(self, x):
        x = fnn.Conv(16, (3, 3))(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (2, 2))
        x = fnn.Dense(32)(x.reshape(x.shape[0], -1))
        x = nn.LayerNorm()(x)
        x = nn.gelu(x)
        return fnn.Dense(10)(x)


class ConvBN(fnn.Module):
    @fnn.compact
    def __call__(self, x, train=False):
        x = fnn.Conv(8, (3, 3), use_bias=False)(x)
        x = fnn.BatchNorm(use_running_average=not train)(x)
        x = fnn.relu(x)  # plain relu is recognised as a site
        x = fnn.Conv(8, (3, 3))(x)
        x = fnn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x)
        return fnn.Dense(10)(x.mean(axis=(1, 2)))


def images(n=16, shape=(8, 8, 1), seed=0):
    return jax.random.uniform(jax.random.PRNGKey(seed), (n, *shape))


def randomised(variables, seed=1, most=0.5, shift=0.3):
    """Nonzero biases and BN statistics, so probe offsets and folding are exercised: variances
    get noise in [0.1, most), biases, means and scales that noise minus ``shift``."""
    variables = unfreeze(variables)
    leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    out = []
    for (path, leaf), key in zip(leaves, keys):
        name = str(path[-1])
        noise = jax.random.uniform(key, leaf.shape, minval=0.1, maxval=most)
        if "var" in name:
            leaf = leaf + noise
        elif "bias" in name or "mean" in name or "scale" in name:
            leaf = leaf + noise - shift
        out.append(leaf)
    return jax.tree_util.tree_unflatten(tree, out)


def test_custom_model_example_converts_and_approaches_ann():
    model, x = Net(), images()
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    ann = model.apply(variables, x)
    snn = sg.convert(model, variables, [x], dynamics="improved")
    out = sg.simulate(snn, x, timesteps=(8, 256))
    assert out.shape == (2, 16, 10)
    err = [float(jnp.abs(o - ann).mean()) for o in out]
    assert err[1] <= err[0] / 10


def test_batch_norm_folding_is_exact():
    model, x = ConvBN(), images()
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    apply_fn = lambda v, x: model.apply(v, x, train=False)
    folded, folded_fn = fold_batch_norm(model, variables, x, apply_fn)
    assert "batch_stats" not in folded or not jax.tree_util.tree_leaves(folded["batch_stats"])
    before, after = apply_fn(variables, x), folded_fn(folded, x)
    assert float(jnp.abs(before - after).max()) <= 1e-4 * float(jnp.abs(before).max())


def test_relu_scaling_identity():
    model, x = ConvBN(), images()
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    snn = sg.convert(model, variables, [x])
    assert [site.kind for site in snn.sites.values()] == ["relu", "relu"]

    def scaled(name, kind, options, inputs):
        p = snn.sites[name]
        return jnp.maximum(inputs[0] * p.in_scale, 0) / p.in_scale

    ann = model.apply(variables, x)
    rescaled = interpret.evaluate(snn.apply_fn, snn.variables, x, scaled)
    assert float(jnp.abs(ann - rescaled).max()) <= 1e-4 * float(jnp.abs(ann).max())


def test_probe_records_offsets_of_affine_inputs():
    class Tiny(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Dense(3, name="out")(nn.relu(fnn.Dense(4, name="hidden")(x)))

    model, x = Tiny(), jax.random.uniform(jax.random.PRNGKey(3), (5, 2))
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    snn = sg.convert(model, variables, [x])
    w, b = variables["params"]["hidden"]["kernel"], variables["params"]["hidden"]["bias"]
    site = snn.sites["000_relu@Tiny"]
    s = site.in_scale
    np.testing.assert_allclose(site.a0[0], b * s, rtol=1e-5)
    np.testing.assert_allclose(site.a1_plus_a0[0], (w.sum(0) + 2 * b) * s, rtol=1e-5)
    w2, b2 = variables["params"]["out"]["kernel"], variables["params"]["out"]["bias"]
    m = 1 / s
    np.testing.assert_allclose(snn.decoder.a0, b2[None], rtol=1e-5)
    np.testing.assert_allclose(snn.decoder.a1_plus_a0, (m[0] @ w2 + 2 * b2)[None], rtol=1e-5)


def test_layer_norm_second_input_offset():
    class LN(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Dense(2)(nn.LayerNorm(epsilon=1e-3)(fnn.Dense(6)(x)))

    model, x = LN(), jax.random.normal(jax.random.PRNGKey(3), (5, 4))
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    snn = sg.convert(model, variables, [x])
    site = snn.sites["001_rsqrt_mul@LN/LayerNorm_0"]
    np.testing.assert_allclose(site.a0[1], 1e-3, rtol=1e-5)
    np.testing.assert_allclose(site.a1_plus_a0[1], 1 + 2e-3, rtol=1e-5)


def test_decompositions_match_flax():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 5))
    for window, strides, padding in [((2, 2), None, "VALID"), ((3, 3), (2, 2), "SAME"), ((3, 3), (1, 1), "VALID")]:
        ours = nn.max_pool(x, window, strides, padding)
        ref = fnn.max_pool(x, window, strides or window, padding)
        np.testing.assert_array_equal(ours, ref)
    ln = fnn.LayerNorm()
    params = randomised(ln.init(jax.random.PRNGKey(1), x))
    np.testing.assert_allclose(nn.LayerNorm().apply(params, x), ln.apply(params, x), atol=1e-4)


def test_paper_mode_approaches_ann_of_codec_scaled_input():
    model, x = Net(), images()
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    snn = sg.convert(model, variables, [x])
    etas = np.asarray(snn.schedule.step_sizes(256), np.float64)
    c = 1 - np.cumprod(1 - etas)
    out = sg.simulate(snn, x, timesteps=(8, 256))
    err = [float(jnp.abs(o - model.apply(variables, x * c[t - 1])).mean()) for o, t in zip(out, (8, 256))]
    assert err[1] <= err[0] / 10


def test_if_baseline_on_relu_network():
    model, x = ConvBN(), images(32)
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    snn = sg.convert(model, variables, [x], dynamics="if")
    ann = model.apply(variables, x)
    out = sg.simulate(snn, x, timesteps=(4, 512))
    err = [float(jnp.abs(o - ann).mean()) for o in out]
    assert err[1] <= err[0] / 4
    with pytest.raises(sg.UnsupportedOperation, match="ReLU networks only"):
        sg.convert(Net(), Net().init(jax.random.PRNGKey(0), x), [x], dynamics="if")


def test_unsupported_operation_is_named():
    class Bad(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Dense(3)(jnp.sin(fnn.Dense(4)(x)))

    x = jnp.ones((2, 3))
    model = Bad()
    with pytest.raises(sg.UnsupportedOperation, match="'sin'"):
        sg.convert(model, model.init(jax.random.PRNGKey(0), x), [x])
    with pytest.raises(ValueError, match="unknown dynamics"):
        sg.convert(model, model.init(jax.random.PRNGKey(0), x), [x], dynamics="fast")


def test_simulate_is_exact_at_every_requested_step_and_unbounded():
    model, x = ConvBN(), images(4)
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    snn = sg.convert(model, variables, [x])
    some = sg.simulate(snn, x, timesteps=(3, 7))
    every = sg.simulate(snn, x, timesteps=range(1, 8))
    np.testing.assert_array_equal(some[0], every[2])
    np.testing.assert_array_equal(some[1], every[6])
    long = sg.simulate(snn, x, timesteps=(2000,))  # the reference stops at 1024 steps
    assert np.all(np.isfinite(long))
    with pytest.raises(ValueError, match="positive integers"):
        sg.simulate(snn, x, timesteps=(0, 4))


def _literal_signgd(snn, x, num_steps):
    """docs/design.md ("The dynamics") step by step: every neuron tracks its input estimate from this step's
    spikes, ``x_t = x_{t-1} - eta_t (2 A(s_t) - A(1) - A(0))``, its output ``v`` in the units of
    the scaled neuron, and the decoder tracks the logits the same way."""
    from signgd_jax.dynamics import encode, fire, step_output, track_input

    sites = snn.sites
    xs = {n: [jnp.broadcast_to(a, (x.shape[0], *a.shape[1:])) for a in p.a0] for n, p in sites.items()}
    # output estimates shaped like the target (a vector neuron's output need not be input-shaped)
    vs = {n: jnp.zeros_like(nn.ann_op(sites[n].kind, sites[n].options)(*v)) for n, v in xs.items()}
    y, f, out = jnp.broadcast_to(snn.decoder.a0, (x.shape[0], 10)), jnp.zeros_like(x), []
    for eta in snn.schedule.step_sizes(num_steps):
        emitted, f = encode(snn.codec, f, x, eta, exact=snn.dynamics.name == "improved")

        def on_site(name, kind, options, inputs):
            p = sites[name]
            inputs = [z * p.in_scale for z in inputs] if p.in_scale is not None else inputs
            xs[name] = [track_input(a, z, o, eta) for a, z, o in zip(xs[name], inputs, p.a1_plus_a0)]
            represented = p.out_offset + p.out_scale * vs[name] if p.out_offset is not None else vs[name]
            spike = fire(kind, represented, xs[name], options, snn.dynamics)
            vs[name] = step_output(vs[name], spike, eta)
            spike = spike * p.out_scale if p.out_scale is not None else spike
            return spike + p.out_offset if p.out_offset is not None else spike

        y = track_input(y, interpret.evaluate(snn.apply_fn, snn.variables, emitted, on_site), snn.decoder.a1_plus_a0, eta)
        out.append(y)
    return jnp.stack(out)


@pytest.mark.parametrize("dynamics", ["paper", "improved"])
def test_simulation_equals_the_literal_equations(dynamics):
    """simulate() reads input estimates as A(v) of the layer below instead of tracking them from
    spikes: the same network, step by step (up to float rounding)."""
    model, x = Net(), images(6)
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    snn = sg.convert(model, variables, [x], dynamics=dynamics)
    literal = _literal_signgd(snn, x, 24)
    fast = sg.simulate(snn, x, timesteps=range(1, 25))
    np.testing.assert_allclose(fast, literal, atol=1e-4, rtol=1e-4)


def test_platform_compiler_options_keep_results():
    from signgd_jax.simulate import _simulate, _simulate_cpu, _simulate_cpu_forms, compiled_simulation

    model, x = Net(), images(4)
    snn = sg.convert(model, model.init(jax.random.PRNGKey(0), x), [x])
    key = jax.random.PRNGKey(0)
    on_cpu = jax.default_backend() == "cpu"
    assert compiled_simulation(snn, x, key) is (_simulate_cpu if on_cpu else _simulate)
    plain, _ = _simulate(snn, x, key, (5, 20), False)
    np.testing.assert_allclose(sg.simulate(snn, x, (5, 20)), plain, atol=1e-5)
    # inside a caller's jit no compiler options can be set: CPU forms only
    inside = jax.jit(lambda s, z: (compiled_simulation(s, z) is (_simulate_cpu_forms if on_cpu else _simulate),
                                   sg.simulate(s, z, (5, 20))))
    chosen, logits = inside(snn, x)
    assert chosen
    np.testing.assert_allclose(logits, plain, atol=1e-5)


def test_simulate_vmaps_over_schedule():
    model, x = ConvBN(), images(4)
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    snn = sg.convert(model, variables, [x])
    eta0s = jnp.array([0.1, 0.15])
    swept = jax.vmap(lambda e: sg.simulate(snn.with_schedule(eta0=e), x, timesteps=(16,)))(eta0s)
    assert swept.shape == (2, 1, 4, 10)
    single = sg.simulate(snn, x, timesteps=(16,))
    np.testing.assert_allclose(swept[1], single, atol=2 * 0.15 * 10)  # float rounding may flip a spike
    assert float(jnp.abs(swept[1] - single).mean()) < 1e-2


def test_spike_and_stochastic_codecs_run():
    model, x = ConvBN(), images(4)
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    ann = model.apply(variables, x)
    for codec in ("spike", "stochastic"):
        snn = sg.convert(model, variables, [x], codec=codec)
        out = sg.simulate(snn, x, timesteps=(4, 256), key=jax.random.PRNGKey(1))
        assert np.all(np.isfinite(out))
        assert float(jnp.abs(out[1] - ann).mean()) < float(jnp.abs(out[0] - ann).mean())


def test_bfloat16_simulation_tracks_float32():
    model, x = ConvBN(), images(8)
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    snn = sg.convert(model, variables, [x], dynamics="improved")
    full = sg.simulate(snn, x, timesteps=(64,))
    half = sg.simulate(snn, x, timesteps=(64,), dtype=jnp.bfloat16)
    assert half.dtype == jnp.float32 and np.all(np.isfinite(half))
    ann = model.apply(variables, x)
    # bfloat16 keeps 8 bits of mantissa: close to the float32 run, not equal
    assert float(jnp.abs(half - ann).mean()) < 0.05 * float(jnp.abs(ann).mean()) + float(jnp.abs(full - ann).mean())


def test_snn_round_trips_through_orbax(tmp_path):
    import orbax.checkpoint as ocp

    model, x = ConvBN(), images(4)
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    snn = sg.convert(model, variables, [x])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "snn", snn)
    checkpointer.wait_until_finished()
    # the restore target can come from the SNN itself or from jax.eval_shape(convert, ...)
    target = jax.eval_shape(lambda v, x: sg.convert(model, v, [x]), variables, x)
    restored = checkpointer.restore(tmp_path / "snn", target)
    assert isinstance(restored, sg.SNN)
    np.testing.assert_array_equal(sg.simulate(restored, x, (8,)), sg.simulate(snn, x, (8,)))
