"""Conversion-aware range penalty: value, gradient, training mode."""
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np

from signgd_jax import nn
from signgd_jax.regularize import with_range_penalty


class Net(fnn.Module):
    @fnn.compact
    def __call__(self, x, train=False):
        x = fnn.Dense(8)(x)
        x = fnn.BatchNorm(use_running_average=not train)(x)
        h = nn.relu(x)  # excluded: the converter rescales ReLUs
        x = nn.gelu(fnn.Dense(8, name="pre")(h))
        return fnn.Dense(3)(x)


def test_penalty_equals_hand_computed_value_and_trains():
    model = Net()
    x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (16, 4))
    variables = model.init(jax.random.PRNGKey(1), x)
    bound = 0.5
    logits, penalty = with_range_penalty(model.apply, bound)(variables, x)
    np.testing.assert_allclose(logits, model.apply(variables, x), rtol=1e-6)

    # by hand: the GELU's output, the only non-ReLU site
    _, inter = model.apply(variables, x, capture_intermediates=lambda m, _: m.name == "pre")
    pre = inter["intermediates"]["pre"]["__call__"][0]
    gelu = jax.nn.gelu(pre, approximate=True)  # nn.gelu's default: the tanh form, as in flax
    expected = jnp.mean(jnp.square(jax.nn.relu(jnp.abs(gelu) - bound)))
    assert float(expected) > 0
    np.testing.assert_allclose(penalty, expected, rtol=1e-5)
    # a bound above every target: no penalty
    assert float(with_range_penalty(model.apply, 1e3)(variables, x)[1]) == 0.0

    # gradient descent on the penalty alone shrinks it (BatchNorm in training mode, mutable stats)
    def loss(params):
        (_, _), r = with_range_penalty(model.apply, bound)(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return r

    params = variables["params"]
    start = float(loss(params))
    for _ in range(20):
        params = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, jax.grad(loss)(params))
    assert float(loss(params)) < 0.5 * start
