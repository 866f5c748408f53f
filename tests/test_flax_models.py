"""Plain Flax models (no signgd_jax in the model code) convert, approach the ANN as T grows,
and give the same SNN as the same network written with ``signgd_jax.nn``.

Each block takes its nonlinearities as fields whose defaults are the plain ``jax.nn`` /
``flax.linen`` operations; the ``signgd_jax.nn`` twin only swaps those fields.
"""
from __future__ import annotations

from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import signgd_jax as sg
from signgd_jax import frontends, interpret, kinds

import test_convert


def images(n=8, shape=(8, 8, 1), seed=0):
    return 0.5 * jax.random.uniform(jax.random.PRNGKey(seed), (n, *shape))


def randomised(variables, seed=1):
    """Nonzero biases, non-trivial scales and BatchNorm statistics."""
    return test_convert.randomised(variables, seed, most=0.4, shift=0.25)


# ----------------------------------------------------------------------------- models
class MixerBlock(fnn.Module):
    gelu: Any = jax.nn.gelu
    norm: Any = fnn.LayerNorm

    @fnn.compact
    def __call__(self, x):
        x = fnn.Conv(6, (4, 4), strides=(4, 4))(x)  # patches: 2x2 tokens, 6 channels
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        y = self.norm()(x).swapaxes(1, 2)
        y = fnn.Dense(4)(self.gelu(fnn.Dense(8)(y))).swapaxes(1, 2)
        x = x + y
        y = self.norm()(x)
        x = x + fnn.Dense(6)(self.gelu(fnn.Dense(12)(y)))
        return fnn.Dense(3)(self.norm()(x).mean(axis=1))


class ConvNeXtBlock(fnn.Module):
    gelu: Any = jax.nn.gelu
    norm: Any = fnn.LayerNorm

    @fnn.compact
    def __call__(self, x):
        x = fnn.Conv(4, (2, 2), strides=(2, 2))(x)
        y = fnn.Conv(4, (3, 3), feature_group_count=4)(x)  # depthwise
        y = self.norm()(y)
        y = fnn.Dense(4)(self.gelu(fnn.Dense(16)(y)))
        gamma = self.param("layer_scale", lambda k, s: jnp.full(s, 0.5), (4,))
        x = x + gamma * y
        return fnn.Dense(3)(x.mean(axis=(1, 2)))


class Affine(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        alpha = self.param("alpha", fnn.initializers.ones, (x.shape[-1],))
        beta = self.param("beta", fnn.initializers.zeros, (x.shape[-1],))
        return alpha * x + beta


class ResMLPBlock(fnn.Module):
    gelu: Any = jax.nn.gelu

    @fnn.compact
    def __call__(self, x):
        x = fnn.Conv(6, (4, 4), strides=(4, 4))(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        x = x + fnn.Dense(4)(Affine()(x).swapaxes(1, 2)).swapaxes(1, 2)
        x = x + fnn.Dense(6)(self.gelu(fnn.Dense(12)(Affine()(x))))
        return fnn.Dense(3)(x.mean(axis=1))


class ResNetBlock(fnn.Module):
    relu: Any = jax.nn.relu

    @fnn.compact
    def __call__(self, x, train=False):
        x = self.relu(fnn.BatchNorm(use_running_average=not train)(fnn.Conv(4, (3, 3), use_bias=False)(x)))
        y = self.relu(fnn.BatchNorm(use_running_average=not train)(fnn.Conv(4, (3, 3), use_bias=False)(x)))
        y = fnn.BatchNorm(use_running_average=not train)(fnn.Conv(4, (3, 3), use_bias=False)(y))
        x = self.relu(x + y)
        x = fnn.avg_pool(x, (2, 2), (2, 2))
        return fnn.Dense(3)(x.reshape(x.shape[0], -1))


class VGGBlock(fnn.Module):
    relu: Any = fnn.relu
    max_pool: Any = fnn.max_pool

    @fnn.compact
    def __call__(self, x):
        x = self.relu(fnn.Conv(4, (3, 3))(x))
        x = self.relu(fnn.Conv(4, (3, 3))(x))
        x = self.max_pool(x, (2, 2), (2, 2))
        return fnn.Dense(3)(x.reshape(x.shape[0], -1))


class MLPLayer(fnn.Module):
    relu: Any = jax.nn.relu

    @fnn.compact
    def __call__(self, h, _):
        return h + self.relu(fnn.Dense(h.shape[-1])(h)), None


class ScanStack(fnn.Module):
    """Three residual relu layers stacked with nn.scan (parameters stacked on axis 0)."""

    relu: Any = jax.nn.relu

    @fnn.compact
    def __call__(self, x):
        h = fnn.Dense(5)(x.reshape(x.shape[0], -1))
        layers = fnn.scan(fnn.remat(MLPLayer), variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        h, _ = layers(relu=self.relu)(h, None)
        return fnn.Dense(3)(h)


class UnrolledStack(fnn.Module):
    """ScanStack's three layers written out, with signgd_jax.nn relus (same parameters)."""

    @fnn.compact
    def __call__(self, x):
        h = fnn.Dense(5)(x.reshape(x.shape[0], -1))
        for _ in range(3):
            h, _ = MLPLayer(relu=sg.nn.relu)(h, None)
        return fnn.Dense(3)(h)


def unrolled_variables(scan_variables):
    p = scan_variables["params"]
    layers = p["ScanMLPLayer_0"] if "ScanMLPLayer_0" in p else next(v for k, v in p.items() if k.startswith("Scan"))
    out = {"Dense_0": p["Dense_0"], "Dense_1": p["Dense_1"]}
    for i in range(3):
        out[f"MLPLayer_{i}"] = jax.tree_util.tree_map(lambda a: a[i], layers)
    return {"params": out}


class ForiStack(fnn.Module):
    """One shared residual gelu layer applied three times with lax.fori_loop."""

    gelu: Any = jax.nn.gelu

    @fnn.compact
    def __call__(self, x):
        h = fnn.Dense(5)(x.reshape(x.shape[0], -1))
        w = self.param("w", fnn.initializers.lecun_normal(), (5, 5))
        b = self.param("b", fnn.initializers.zeros, (5,))
        h = jax.lax.fori_loop(0, 3, lambda i, h: h + 0.5 * self.gelu(h @ w + b), h)
        return fnn.Dense(3)(h)


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), strides=(2, 2), rngs=rngs)
        self.norm = nnx.LayerNorm(4, rngs=rngs)
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        x = self.conv(x)
        x = nnx.max_pool(x, (2, 2), (2, 2))
        x = nnx.gelu(self.hidden(self.norm(x)))
        return self.head(x.mean(axis=(1, 2)))


def nnx_twin(state, x):
    """NNXNet written with signgd_jax.nn, reading NNXNet's state (pure dict)."""
    conv = jax.lax.conv_general_dilated(x, state["conv"]["kernel"], (2, 2), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + state["conv"]["bias"]
    x = sg.nn.max_pool(conv, (2, 2), (2, 2))
    x = sg.nn.layer_norm(x, state["norm"]["scale"], state["norm"]["bias"], epsilon=1e-6)
    x = sg.nn.gelu(x @ state["hidden"]["kernel"] + state["hidden"]["bias"])
    return x.mean(axis=(1, 2)) @ state["head"]["kernel"] + state["head"]["bias"]


# ----------------------------------------------------------------------------- helpers
def site_kinds(apply_fn, variables, x):
    found = []

    def on_site(name, kind, options, inputs):
        found.append((kind, tuple(sorted(options.items()))))
        return interpret.ann_site(name, kind, options, inputs)

    out = interpret.evaluate(apply_fn, variables, x, on_site)
    return found, out


def tracked(apply_fn, variables, dynamics="paper"):
    """The function the SNN converges to: every site replaced by the function its neurons track
    (paper mode: the ANN itself except for GELU, tracked as ``x * sigmoid(1.702 x)``; improved
    mode: the ANN's own functions)."""
    target_of = sg.dynamics.get(dynamics).target_of

    def on_site(name, kind, options, inputs):
        return target_of(kinds.get(kind))(*inputs, **options)

    return lambda z: interpret.evaluate(apply_fn, variables, z, on_site)


def errors(snn, target, x, steps=(8, 256)):
    """Mean |SNN - target| at each T; the paper-mode target is taken at the codec-scaled input."""
    out = sg.simulate(snn, x, timesteps=steps)
    if snn.dynamics.name == "paper":
        etas = np.asarray(snn.schedule.step_sizes(max(steps)), np.float64)
        scale = 1 - np.cumprod(1 - etas)
        targets = [target(x * scale[t - 1]) for t in steps]
    else:
        targets = [target(x)] * len(steps)
    return [float(jnp.abs(o - t).mean()) for o, t in zip(out, targets)], out


def check_converges(model, variables, x, tolerance, ann_tolerance=0.05):
    """Paper and improved modes approach the ANN: the error to the tracked network at T=256 is
    at most a quarter of that at T=8 and below ``tolerance`` x mean |ANN logit|; the tracked
    network is within ``ann_tolerance`` of the ANN (exactly it without GELU)."""
    apply_fn, variables = frontends.model_and_variables(model, variables)
    ann = apply_fn(variables, x)
    scale = float(jnp.abs(ann).mean())
    assert float(jnp.abs(tracked(apply_fn, variables)(x) - ann).mean()) <= ann_tolerance * scale
    results = {}
    for mode in ("paper", "improved"):
        snn = sg.convert(model, variables, [x], dynamics=mode)
        err, out = errors(snn, tracked(apply_fn, variables, mode), x)
        assert err[1] <= err[0] / 4, (mode, err)
        assert err[1] <= tolerance * scale, (mode, err, scale)
        results[mode] = out
    return results


# ----------------------------------------------------------------------------- tests
TWINS = [
    ("mixer", MixerBlock(), MixerBlock(gelu=sg.nn.gelu, norm=sg.nn.LayerNorm), 0.05),
    ("convnext", ConvNeXtBlock(gelu=lambda y: jax.nn.gelu(y, approximate=False)),
     ConvNeXtBlock(gelu=lambda y: sg.nn.gelu(y, approximate=False), norm=sg.nn.LayerNorm), 0.05),
    ("resnet_bn", ResNetBlock(), ResNetBlock(relu=sg.nn.relu), 0.05),
    ("vgg_maxpool", VGGBlock(), VGGBlock(relu=sg.nn.relu, max_pool=sg.nn.max_pool), 0.05),
]


@pytest.mark.parametrize("name,plain,twin,tolerance", TWINS, ids=[t[0] for t in TWINS])
def test_plain_flax_block_converts_like_its_signgd_twin(name, plain, twin, tolerance):
    x = images()
    variables = randomised(plain.init(jax.random.PRNGKey(0), x))
    plain_kinds, plain_out = site_kinds(frontends.as_apply_fn(plain), variables, x)
    twin_kinds, twin_out = site_kinds(frontends.as_apply_fn(twin), variables, x)
    assert plain_kinds == twin_kinds and plain_kinds
    np.testing.assert_allclose(plain_out, plain.apply(variables, x), rtol=1e-4, atol=1e-5)
    results = check_converges(plain, variables, x, tolerance)
    twin_snn = sg.convert(twin, variables, [x], dynamics="paper")
    np.testing.assert_allclose(sg.simulate(twin_snn, x, timesteps=(8, 256)), results["paper"], rtol=1e-5, atol=1e-5)


def test_resmlp_block_converts():
    model, x = ResMLPBlock(), images()
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    kinds, _ = site_kinds(frontends.as_apply_fn(model), variables, x)
    assert kinds == [("gelu", (("approximate", "tanh"),))]
    check_converges(model, variables, x, 0.05)


def test_scan_stack_gets_one_site_per_iteration():
    """nn.scan of nn.remat layers: three relu sites, the same SNN as the written-out stack.
    (The interpreter used to run the scan body once as a call: one site, wrong SNN.)"""
    model, x = ScanStack(), images()
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    kinds, out = site_kinds(frontends.as_apply_fn(model), variables, x)
    assert kinds == [("relu", ())] * 3
    np.testing.assert_allclose(out, model.apply(variables, x), rtol=1e-5, atol=1e-6)
    results = check_converges(model, variables, x, 0.05)
    twin, twin_vars = UnrolledStack(), unrolled_variables(variables)
    np.testing.assert_allclose(twin.apply(twin_vars, x), model.apply(variables, x), rtol=1e-5, atol=1e-6)
    twin_snn = sg.convert(twin, twin_vars, [x], dynamics="paper")
    np.testing.assert_allclose(sg.simulate(twin_snn, x, timesteps=(8, 256)), results["paper"], rtol=1e-5, atol=1e-5)


def test_fori_loop_stack_converts():
    model, x = ForiStack(), images()
    variables = randomised(model.init(jax.random.PRNGKey(0), x))
    kinds, out = site_kinds(frontends.as_apply_fn(model), variables, x)
    assert kinds == [("gelu", (("approximate", "tanh"),))] * 3
    np.testing.assert_allclose(out, model.apply(variables, x), rtol=1e-5, atol=1e-6)
    check_converges(model, variables, x, 0.05)


def test_nnx_model_converts_like_its_signgd_twin():
    model, x = NNXNet(nnx.Rngs(0)), images()
    apply_fn, state = frontends.model_and_variables(model, None)
    assert apply_fn == frontends.model_and_variables(NNXNet(nnx.Rngs(5)), None)[0]  # equal graphs: no recompiling
    hash(apply_fn)
    np.testing.assert_allclose(apply_fn(state, x), model(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nnx_twin(state, x), model(x), rtol=1e-4, atol=1e-5)
    plain_kinds, _ = site_kinds(apply_fn, state, x)
    twin_kinds, _ = site_kinds(nnx_twin, state, x)
    assert plain_kinds == twin_kinds
    results = check_converges(model, state, x, 0.05)
    twin_snn = sg.convert(nnx_twin, state, [x], dynamics="paper")
    np.testing.assert_allclose(sg.simulate(twin_snn, x, timesteps=(8, 256)), results["paper"], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- refusals
def _dense_then(op):
    class Model(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Dense(3)(op(fnn.Dense(4)(x.reshape(x.shape[0], -1))))

    return Model()


@pytest.mark.parametrize("op,pattern", [
    (lambda h: jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, jax.nn.relu(c[1])), (0, h))[1],
     "'while'.*while_loop"),
    (lambda h: jax.lax.cond(h.sum() > 0, jax.nn.relu, jnp.abs, h), "'cond'.*lax.cond"),
    (jnp.sin, "'sin'"),
], ids=["while_loop", "cond", "sin"])
def test_unsupported_constructs_are_named_in_a_short_first_line(op, pattern):
    model, x = _dense_then(op), images(2)
    variables = model.init(jax.random.PRNGKey(0), x)
    with pytest.raises(sg.UnsupportedOperation, match=pattern) as info:
        sg.convert(model, variables, [x])
    first, supported = str(info.value).split("\n")  # one short line, then the list of what is supported
    assert "test_flax_models.py" in first and len(first) < 400 and "supported:" not in first
    assert supported.startswith("supported:")
