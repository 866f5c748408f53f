"""The signgd_jax.nn Flax modules are the functions they wrap (and convert to the same sites)."""
import jax
import numpy as np
import pytest

import signgd_jax as sg


@pytest.mark.parametrize("module,function", [
    (sg.nn.ReLU(), sg.nn.relu),
    (sg.nn.LeakyReLU(0.2), lambda x: sg.nn.leaky_relu(x, 0.2)),
    (sg.nn.GELU(), sg.nn.gelu),
    (sg.nn.MaxPool((2, 2)), lambda x: sg.nn.max_pool(x, (2, 2))),
    (sg.nn.MaxPool((2, 2), chain=True), lambda x: sg.nn.max_pool(x, (2, 2), chain=True)),
])
def test_modules_compute_their_functions(module, function):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3))
    np.testing.assert_array_equal(module.apply({}, x), function(x))
    sites = str(jax.make_jaxpr(lambda v: module.apply({}, v))(x)).count("site[")
    assert sites >= 1 and sites == str(jax.make_jaxpr(function)(x)).count("site[")
