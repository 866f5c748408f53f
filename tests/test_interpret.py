"""The interpreter on small programs: loops unrolled site by site, recognition only where the
program computes the recognised function, refusals by name."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import signgd_jax as sg
from signgd_jax import interpret


def run_sites(fn, x):
    found = []

    def on_site(name, kind, options, inputs):
        found.append((name, kind, tuple(sorted(options.items()))))
        return interpret.ann_site(name, kind, options, inputs)

    outs, dyn = interpret.run(jax.make_jaxpr(fn)(x), [x], [True], on_site)
    np.testing.assert_allclose(outs[0], fn(x), rtol=1e-5, atol=1e-6)
    return [(k, o) for _, k, o in found], dyn


X = jax.random.normal(jax.random.PRNGKey(0), (2, 5))


def test_scan_with_stacked_inputs_and_outputs_is_unrolled_in_order():
    w = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 5))

    def fn(x):
        def body(h, wi):
            h = jax.nn.relu(h @ wi) + jnp.tanh(h)
            return h, h.sum(-1)
        h, ys = jax.lax.scan(body, x, w, reverse=True)
        return h + ys.sum()

    kinds, dyn = run_sites(fn, X)
    assert kinds == [("relu", ()), ("tanh", ())] * 4 and dyn == [True]


def test_scan_indices_follow_evaluation_order():
    """The old interpreter ran a scan body once as a call: one relu site for three iterations."""
    found = []

    def on_site(name, kind, options, inputs):
        found.append(name)
        return interpret.ann_site(name, kind, options, inputs)

    fn = lambda x: jax.lax.fori_loop(0, 3, lambda i, h: jax.nn.relu(h - 0.1), x)  # noqa: E731
    outs, _ = interpret.run(jax.make_jaxpr(fn)(X), [X], [True], on_site)
    assert found == ["000_relu@0", "001_relu@1", "002_relu@2"]  # the loop index is a path component
    np.testing.assert_allclose(outs[0], fn(X), rtol=1e-6)


@pytest.mark.parametrize("fn,expected", [
    (lambda x: jax.nn.gelu(x), [("gelu", (("approximate", "tanh"),))]),
    (lambda x: jax.nn.gelu(x, approximate=False), [("gelu", (("approximate", "exact"),))]),
    (lambda x: x * jax.nn.sigmoid(1.702 * x), [("gelu", (("approximate", "sigmoid"),))]),
    (lambda x: jax.nn.leaky_relu(x, 0.3), [("leaky_relu", (("negative_slope", 0.3),))]),
    (jax.nn.silu, [("silu", ())]),
    (jax.nn.sigmoid, [("sigmoid", ())]),
    (lambda x: jnp.abs(x) + jnp.exp(x), [("abs", ()), ("exp", ())]),
    (lambda x: x ** 2 + x * x + jnp.square(x), [("square", ())] * 3),
    (lambda x: (x * jnp.flip(x, -1)) / (jnp.abs(x) + 1), [("product", ()), ("abs", ()), ("divide", ())]),
    (jax.nn.relu6, [("relu", ())] * 2),
    (lambda x: jnp.minimum(x, jnp.flip(x, -1)), [("maximum", ())]),
    (lambda x: jnp.max(x, axis=-1), [("max_pool", (("padding", ((0, 0), (0, 0))), ("window_dimensions", (1, 5)),
                                                   ("window_strides", (1, 5))))]),
])
def test_standard_operations_become_sites(fn, expected):
    kinds, _ = run_sites(fn, X)
    assert kinds == expected


def test_partial_template_is_not_recognised():
    """GELU's tanh reused elsewhere: the graph is no longer GELU, so its parts convert one by one."""
    def fn(x):
        inner = 0.7978845834732056 * (x + 0.044714998453855515 * x ** 3)
        t = jnp.tanh(inner)
        return x * (0.5 * (1 + t)) + t

    with pytest.raises(interpret.UnsupportedOperation, match="'integer_pow'"):
        run_sites(fn, X)


def test_layer_norm_forms_match_signgd_layer_norm():
    import flax.linen as fnn
    scale, bias = jnp.linspace(0.5, 1.5, 5), jnp.linspace(-1, 1, 5)
    ours, ours_out = run_sites(lambda x: sg.nn.layer_norm(x, scale, bias), X)
    for fast in (True, False):
        ln = fnn.LayerNorm(use_fast_variance=fast)
        kinds, _ = run_sites(lambda x: ln.apply({"params": {"scale": scale, "bias": bias}}, x), X)
        # one layer_norm site, which paper mode takes apart (tests/test_expand.py)
        assert kinds == ours == [("layer_norm", (("axis", (-1,)), ("epsilon", 1e-6), ("normalized_scale", 1.0)))]
    kinds, _ = run_sites(lambda x: fnn.RMSNorm().apply({"params": {"scale": scale}}, x), X)
    assert kinds == [("square", ()), ("rsqrt_mul", ())]


def test_static_control_flow_runs_and_dynamic_is_refused():
    kinds, _ = run_sites(lambda x: x * jax.lax.cond(True, lambda: 2.0, lambda: 3.0), X)
    assert kinds == []
    with pytest.raises(interpret.UnsupportedOperation, match="'cond'"):
        run_sites(lambda x: jax.lax.cond(x.sum() > 0, jax.nn.relu, jnp.abs, x), X)
