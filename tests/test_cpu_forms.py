"""The CPU forms of convolutions (signgd_jax.cpu_forms) equal XLA's convolutions and are used."""
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import signgd_jax as sg
from signgd_jax import models
from signgd_jax.cpu_forms import cpu_conv_rule, cpu_forward
from signgd_jax.simulate import _simulate, _simulate_impl


class Convs(fnn.Module):
    """One convolution of each kind the rule rewrites or leaves alone, with ReLU sites between."""

    @fnn.compact
    def __call__(self, x):
        x = sg.nn.relu(fnn.Conv(6, (3, 3))(x))                                   # narrow: 1 channel, rewritten
        x = sg.nn.relu(fnn.Conv(6, (3, 3), strides=2, padding=((0, 1), (1, 2)))(x))  # 54 taps: left alone
        x = sg.nn.relu(fnn.Conv(6, (5, 5), feature_group_count=6, strides=(1, 2))(x))  # depthwise: rewritten
        x = sg.nn.relu(fnn.Conv(4, (1, 1), strides=2, use_bias=False)(x))           # narrow 1x1: rewritten
        x = fnn.Conv(4, (2, 2), strides=2, padding="VALID")(x)                      # patchify, 16 taps: left alone
        return fnn.Dense(3)(x.reshape(x.shape[0], -1))


def conv_count(fn, *args):
    return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated")


@pytest.fixture(scope="module")
def convs():
    x = jax.random.uniform(jax.random.PRNGKey(0), (5, 11, 10, 1), minval=-1, maxval=1)
    model = Convs()
    variables = model.init(jax.random.PRNGKey(1), x)
    return model, variables, x


def test_rule_equals_the_convolutions_it_rewrites(convs):
    model, variables, x = convs
    fast = cpu_forward(model.apply)
    np.testing.assert_allclose(fast(variables, x), model.apply(variables, x), rtol=1e-5, atol=1e-5)
    assert conv_count(model.apply, variables, x) == 5
    assert conv_count(fast, variables, x) == 2  # the wide and the patchify convolution stay


def test_rule_ignores_static_inputs_and_other_operations():
    eqn = jax.make_jaxpr(lambda a, b: a + b)(1.0, 2.0).jaxpr.eqns[0]
    assert cpu_conv_rule(eqn, (1.0, 2.0), (True, False)) is None
    conv = jax.make_jaxpr(lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2)))
    eqn = conv.jaxpr.eqns[0]
    assert cpu_conv_rule(eqn, (jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2))), (False, True)) is None  # dynamic kernel
    (y,) = cpu_conv_rule(eqn, (jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2))), (True, False))
    np.testing.assert_allclose(y[0, :, :, 0], [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]])
    nchw_out = jax.make_jaxpr(lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NCHW")))(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2)))
    assert cpu_conv_rule(nchw_out.jaxpr.eqns[0], (jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2))), (True, False)) is None


def test_zoo_forward_unchanged():
    model = models.create("resnet_mini", num_classes=10)
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(1), x)
    apply = lambda v, z: model.apply(v, z, train=False)  # noqa: E731
    np.testing.assert_allclose(cpu_forward(apply)(variables, x), apply(variables, x), rtol=1e-5, atol=1e-5)
    assert conv_count(cpu_forward(apply), variables, x) < conv_count(apply, variables, x)


def test_simulation_with_cpu_forms_matches_xla_convolutions(convs):
    model, variables, x = convs
    snn = sg.convert(model, variables, [x])
    key = jax.random.PRNGKey(0)
    plain, _ = _simulate(snn, x, key, (4, 16), False)
    fast, _ = jax.jit(lambda s, z: _simulate_impl(s, z, key, (4, 16), False, affine_rule=cpu_conv_rule))(snn, x)
    np.testing.assert_allclose(fast, plain, atol=1e-4)
    assert conv_count(lambda s, z: _simulate_impl(s, z, key, (4,), False, affine_rule=cpu_conv_rule), snn, x) == 2
