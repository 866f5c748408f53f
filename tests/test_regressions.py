"""Defects found in review (issue 13, items 1-4) and the conversion's shape (issue 14, item 5):
each test here failed on the code before its fix."""
import importlib

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import signgd_jax as sg
from signgd_jax import metrics
from signgd_jax.nn import max_pool, relu


class AffinePath(fnn.Module):
    """A ReLU branch plus an affine path from the input straight to the logits."""

    @fnn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return fnn.Dense(3)(relu(fnn.Dense(5)(x))) + fnn.Dense(3)(x)


def _affine_path_snn(dynamics, codec="float"):
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 6))
    model = AffinePath()
    variables = model.init(jax.random.PRNGKey(1), x)
    return sg.convert(model, variables, [x], dynamics=dynamics, codec=codec), x


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("dynamics,codec", [("paper", "float"), ("paper", "spike"), ("paper", "stochastic"),
                                            ("improved", "float"), ("improved", "spike"),
                                            ("improved", "stochastic"), ("if", "float")])
def test_every_mode_and_codec_stays_finite_up_to_100000_steps(dynamics, codec, dtype):
    # improved mode's exact float codec divided by an underflowed step size (0/0) from T ~ 1985
    snn, x = _affine_path_snn(dynamics, codec)
    out = np.asarray(sg.simulate(snn, x, timesteps=(1985, 1990, 4096, 100_000), dtype=dtype))
    assert np.all(np.isfinite(out)), np.argwhere(~np.isfinite(out))[:3]
    if dynamics != "if" and codec == "float":  # converged long before: nothing moves once eta is 0
        np.testing.assert_array_equal(out[2], out[3])


def test_a_swept_schedule_equals_separate_runs():
    # vmap traced eta0 in float32 on device, separate runs used a float64 host schedule: the
    # step sizes differed, spikes flipped, logits differed by up to 2.5e-3. Now the step sizes
    # are identical; what is left is the summation order of XLA's batched matmuls (float
    # rounding, which may flip a spike at a near-tie late in the run, when eta_t is tiny)
    snn, x = _affine_path_snn("paper")
    values = [0.1, 0.15, 0.2]

    def run(eta0):
        return sg.simulate(snn.with_schedule(eta0=eta0), x, (16, 256))

    swept = jax.vmap(run)(jnp.array(values))
    for i, value in enumerate(values):
        np.testing.assert_allclose(swept[i], run(value), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(jax.vmap(lambda e: snn.with_schedule(eta0=e).schedule.step_sizes(256))(
            jnp.array(values))[i], snn.with_schedule(eta0=value).schedule.step_sizes(256))
    etas = jax.vmap(lambda g: snn.with_schedule(gamma=g).schedule.step_sizes(300))(jnp.array([0.9, 0.97]))
    np.testing.assert_array_equal(etas[1], snn.with_schedule(gamma=0.97).schedule.step_sizes(300))


def test_default_step_sizes_are_the_reference_float64_values():
    expected = np.array([0.15 * 0.95 ** i for i in range(1024)], np.float32)
    np.testing.assert_array_equal(sg.Schedule().step_sizes(1024), expected)
    traced = jax.jit(lambda e, g: sg.Schedule(eta0=e, gamma=g).step_sizes(1024))(jnp.float32(0.15), jnp.float32(0.95))
    np.testing.assert_array_equal(traced, expected)


class PoolNet(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = relu(fnn.Conv(3, (3, 3))(x))
        x = max_pool(x, (2, 2))
        return fnn.Dense(4)(x.reshape(x.shape[0], -1))


def test_integrate_and_fire_counts_synaptic_operations_after_max_pooling():
    # the baseline's max-pool sites recorded no spikes, so the dense layer after the pool was
    # left out of the count: here that was every synaptic operation of the network
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 6, 6, 1))
    model = PoolNet()
    snn = sg.convert(model, model.init(jax.random.PRNGKey(1), x), [x], dynamics="if")
    _, counts = sg.simulate(snn, x, (8,), return_spike_counts=True)
    pool_sites = [name for name in counts if snn.sites[name].kind == "maximum"]
    assert len(pool_sites) == 2
    stats = metrics.spike_statistics(snn, counts, x.shape[0], 8, x)
    fan = metrics.fan_out(snn, x)
    final = pool_sites[-1]
    assert np.all(fan[final] == 4)  # each pooled value feeds the 4 logits through nonzero weights
    assert stats["layers"][final]["sops_per_image_step"] == pytest.approx(float(np.sum(counts[final])) * 4 / (3 * 8))
    assert stats["layers"][final]["sops_per_image_step"] > 0
    # a max of spikes is nonzero where a spike won: at most one per window, at least as often as
    # a relu in the window fired at a step where the others did not
    relu_name = next(name for name in counts if snn.sites[name].kind == "relu")
    assert float(np.sum(counts[final])) <= float(np.sum(counts[relu_name]))


class ReadTwice(fnn.Module):
    """``h = W2 relu(.)`` is read by two neurons (relu(h) and relu(-h))."""

    @fnn.compact
    def __call__(self, x):
        a = relu(fnn.Dense(4, name="first")(x))
        h = fnn.Dense(3, use_bias=False, name="shared")(a)
        return fnn.Dense(2, name="left")(relu(h)) + fnn.Dense(2, name="right")(relu(-h))


def test_a_weighted_sum_read_twice_is_counted_once():
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 5))
    model = ReadTwice()
    variables = model.init(jax.random.PRNGKey(1), x)
    kernel = np.array(variables["params"]["shared"]["kernel"])
    kernel[0, :2] = 0.0  # neuron 0 of the first layer reaches one unit of h, neuron 1 three
    kernel[1, :] = [1.0, 2.0, 3.0]
    variables = jax.tree_util.tree_map(lambda a: a, variables)
    variables["params"]["shared"]["kernel"] = jnp.asarray(kernel)
    snn = sg.convert(model, variables, [x])
    fan = metrics.fan_out(snn, x)
    first = next(name for name in fan if name.startswith("000_"))
    np.testing.assert_array_equal(fan[first], np.count_nonzero(kernel, axis=1))


def test_a_model_is_traced_once_per_conversion():
    model = AffinePath()
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 6))
    variables = model.init(jax.random.PRNGKey(1), x)
    calls = []

    def apply_fn(v, z):
        calls.append(z.shape)
        return model.apply(v, z)

    sg.convert(apply_fn, variables, [x, x[:3]])
    assert len(calls) == 1


def test_converting_the_same_model_again_reuses_the_compiled_simulation():
    first, x = _affine_path_snn("paper")
    sg.simulate(first, x, (4,))
    compiled = importlib.import_module("signgd_jax.simulate").compiled_simulation(first, x)
    size = compiled._cache_size()
    second, _ = _affine_path_snn("paper")
    np.testing.assert_array_equal(sg.simulate(second, x, (4,)), sg.simulate(first, x, (4,)))
    assert compiled._cache_size() == size


def test_nan_or_inf_input_is_refused_before_simulation():
    snn, x = _affine_path_snn("paper")
    with pytest.raises(ValueError, match="NaN or Inf"):
        sg.simulate(snn, x.at[0, 0].set(jnp.nan), (4,))
    with pytest.raises(ValueError, match="NaN or Inf"):
        sg.convert(AffinePath(), AffinePath().init(jax.random.PRNGKey(1), x), [x.at[1, 2].set(jnp.inf)])


def test_timesteps_is_the_one_name_and_the_old_one_warns():
    snn, x = _affine_path_snn("paper")
    new = sg.simulate(snn, x, timesteps=(3, 5))
    with pytest.warns(DeprecationWarning, match="timesteps"):
        old = sg.simulate(snn, x, timestamps=(3, 5))
    np.testing.assert_array_equal(new, old)
    with pytest.raises(ValueError, match="timesteps must be positive integers"):
        sg.simulate(snn, x, timesteps=(0, 4))


class _ConvBatchNorm(fnn.Module):
    @fnn.compact
    def __call__(self, x, train=False):
        x = fnn.BatchNorm(use_running_average=not train)(fnn.Conv(4, (3, 3), use_bias=False)(x))
        return fnn.Dense(3)(relu(x).reshape(x.shape[0], -1))


def test_a_second_conversion_of_the_same_model_folds_its_batch_norm_too():
    """BatchNorm folding finds its pairs by watching the modules run while the model is traced;
    JAX's trace cache must not skip that watch on a second conversion (it did: the second SNN kept
    the BatchNorm as a separate affine step, more MACs in the energy than the first)."""
    model = _ConvBatchNorm()
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 6, 1))
    variables = model.init(jax.random.PRNGKey(1), x)
    first, second = (sg.convert(model, variables, [x], dynamics=d) for d in ("paper", "improved"))
    for snn in (first, second):
        assert "scale" not in snn.variables["params"]["BatchNorm_0"], "BatchNorm left unfolded"
    assert metrics.ann_macs(first, x) == metrics.ann_macs(second, x)
