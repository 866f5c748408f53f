"""Model zoo: shapes, BatchNorm handling, published parameter counts, convertibility."""
from __future__ import annotations

import flax.linen as flax_nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jex_core

from signgd_jax import models
from signgd_jax.models import DepthwiseConv, adaptive_avg_pool

SMALL = ["convnext_mini", "mixer_mini", "resmlp_mini", "resnet_mini", "vgg_mini"]
IMAGENET = ["convnext_small", "mixer_b16", "resmlp_big_24", "resnet18", "resnet34", "vgg16_bn"]

# Published parameter counts (1000 classes, 224x224x3).
PUBLISHED_PARAMS = {
    "convnext_small": 50_223_688,  # torchvision.models.convnext_small, weights meta "num_params"
    "mixer_b16": 59_880_000,  # timm mixer_b16_224 results table: param_count 59.88 (M)
    "resmlp_big_24": 129_140_000,  # timm resmlp_big_24_224 results table: param_count 129.14 (M)
    "resnet18": 11_689_512,  # torchvision.models.resnet18 "num_params"
    "resnet34": 21_797_672,  # torchvision.models.resnet34 "num_params"
    "vgg16_bn": 138_365_992,  # torchvision.models.vgg16_bn "num_params"
}

# Primitives the converter cannot treat as affine; they may only appear inside signgd_site
# (as the site's ANN definition) or on values that do not depend on the image.
REJECTED = {"tanh", "erf", "logistic", "exp", "rsqrt", "sqrt", "max", "reduce_max", "reduce_window_max",
            "integer_pow", "pow", "log"}

_CACHE: dict = {}


def _init(name: str, shape):
    key = (name, shape)
    if key not in _CACHE:
        model = models.create(name)
        x = jax.random.uniform(jax.random.key(1), shape, jnp.float32)
        _CACHE[key] = (model, model.init(jax.random.key(0), x, train=False), x)
    return _CACHE[key]


# ----------------------------------------------------------------------------- registry
def test_available_lists_every_variant():
    assert sorted(SMALL + IMAGENET) == models.available()
    assert list(models.SMALL_MODELS) == SMALL


def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as info:
        models.create("resnet9000")
    for name in models.available():
        assert name in str(info.value)


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="no_such_option"):
        models.create("resnet_mini", no_such_option=3)


def test_overrides_and_num_classes():
    model = models.create("convnext_mini", num_classes=7, depths=(2, 1))
    assert model.num_classes == 7 and tuple(model.depths) == (2, 1)
    assert models.create("resnet18").num_classes == 1000
    assert models.create("vgg_mini").num_classes == 10


def test_has_batch_norm():
    expected = {"convnext_mini": False, "mixer_mini": False, "resmlp_mini": False, "resnet_mini": True,
                "vgg_mini": True, "resnet18": True, "vgg16_bn": True, "mixer_b16": False}
    for name, bn in expected.items():
        assert models.has_batch_norm(models.create(name)) is bn

    class Plain(flax_nn.Module):
        @flax_nn.compact
        def __call__(self, x, train=False):
            return flax_nn.BatchNorm(use_running_average=not train)(flax_nn.Dense(3)(x))

    assert models.has_batch_norm(Plain(), jnp.zeros((1, 4)))
    with pytest.raises(ValueError):
        models.has_batch_norm(Plain())


# ----------------------------------------------------------------------------- small models
@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 32, 32, 3)], ids=["mnist", "cifar"])
@pytest.mark.parametrize("name", SMALL)
def test_small_model_forward(name, shape):
    model, variables, x = _init(name, shape)
    logits = model.apply(variables, x, train=False)
    assert logits.shape == (shape[0], 10)
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert 20_000 <= models.count_params(variables["params"]) <= 400_000  # small enough for CPU simulation

    if models.has_batch_norm(model):
        train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        assert train_logits.shape == logits.shape
        old = jax.tree_util.tree_leaves(variables["batch_stats"])
        new = jax.tree_util.tree_leaves(updates["batch_stats"])
        assert len(old) == len(new) > 0
        assert all(a.shape == b.shape for a, b in zip(old, new))
        assert any(not np.allclose(a, b) for a, b in zip(old, new))
    else:
        assert "batch_stats" not in variables
        np.testing.assert_allclose(model.apply(variables, x, train=True), logits, rtol=1e-6, atol=1e-6)


def _rejected_on_image(jaxpr, tainted_inputs) -> list[str]:
    """Names of rejected primitives whose inputs depend on a tainted (image-derived) variable,
    outside ``signgd_site`` equations; recurses into sub-jaxprs (pjit, custom_jvp, ...)."""
    tainted = {v for v, t in zip(jaxpr.invars, tainted_inputs) if t}
    found = []
    for eqn in jaxpr.eqns:
        flags = [not isinstance(v, jex_core.Literal) and v in tainted for v in eqn.invars]
        if not any(flags):
            continue
        tainted.update(eqn.outvars)
        name = eqn.primitive.name
        if name == "signgd_site":
            continue
        if name in REJECTED:
            found.append(name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jex_core.Jaxpr):
                    # Positional when the sub-jaxpr takes the equation's inputs, else everything.
                    sub_flags = flags if len(inner.invars) == len(flags) else [True] * len(inner.invars)
                    found += _rejected_on_image(inner, sub_flags)
    return found


def _check_convertible(model, variables, x):
    closed = jax.make_jaxpr(lambda v, img: model.apply(v, img))(variables, x)
    n_vars = len(jax.tree_util.tree_leaves(variables))
    flags = [False] * n_vars + [True] * (len(closed.jaxpr.invars) - n_vars)
    sites = sum(eqn.primitive.name == "signgd_site" for eqn in closed.jaxpr.eqns)
    return _rejected_on_image(closed.jaxpr, flags), sites


@pytest.mark.parametrize("name", SMALL)
def test_small_model_is_convertible(name):
    model, variables, x = _init(name, (2, 28, 28, 1))
    rejected, sites = _check_convertible(model, variables, x)
    assert rejected == []
    assert sites > 0


def test_convertibility_check_catches_plain_flax_ops():
    class Bad(flax_nn.Module):
        @flax_nn.compact
        def __call__(self, x):
            x = flax_nn.LayerNorm()(flax_nn.Dense(8)(x.reshape(x.shape[0], -1)))  # rsqrt on image data
            return jnp.tanh(flax_nn.max_pool(x[:, :, None, None], (1, 1)))

    x = jnp.ones((2, 4, 4, 1))
    variables = Bad().init(jax.random.key(0), x)
    rejected, _ = _check_convertible(Bad(), variables, x)
    assert "rsqrt" in rejected and "tanh" in rejected


# ----------------------------------------------------------------------------- ImageNet models
@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_param_count_and_output(name):
    model = models.create(name)
    assert model.num_classes == 1000
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(lambda img: model.init(jax.random.key(0), img, train=False), x)
    count = models.count_params(variables["params"])  # BN: scale/bias only, not running stats
    published = PUBLISHED_PARAMS[name]
    assert abs(count - published) <= 0.005 * published, (name, count, published)
    logits = jax.eval_shape(lambda v, img: model.apply(v, img, train=False), variables, x)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32


# ----------------------------------------------------------------------------- blocks
@pytest.mark.parametrize(
    "kernel_size, strides, padding, size",
    [((7, 7), (1, 1), "SAME", 7), ((3, 3), (1, 1), "SAME", 6), ((3, 3), (2, 2), "SAME", 7),
     ((5, 3), (2, 1), "VALID", 9), ((3, 3), (1, 1), ((1, 2), (0, 1)), 5)],
)
def test_depthwise_conv_matches_grouped_conv(kernel_size, strides, padding, size):
    channels = 6
    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, channels))
    depthwise = DepthwiseConv(kernel_size, strides, padding)
    grouped = flax_nn.Conv(channels, kernel_size, strides, padding, feature_group_count=channels)
    variables = depthwise.init(jax.random.key(1), x)
    reference_shapes = jax.tree_util.tree_map(jnp.shape, grouped.init(jax.random.key(1), x))
    assert jax.tree_util.tree_map(jnp.shape, variables) == reference_shapes
    # random bias too, so that a dropped bias would show
    variables = {"params": {**variables["params"], "bias": jax.random.normal(jax.random.key(2), (channels,))}}
    np.testing.assert_allclose(depthwise.apply(variables, x), grouped.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_depthwise_conv_init_matches_flax():
    x = jnp.ones((1, 7, 7, 5))
    ours = DepthwiseConv((7, 7)).init(jax.random.key(3), x)
    theirs = flax_nn.Conv(5, (7, 7), feature_group_count=5).init(jax.random.key(3), x)
    np.testing.assert_allclose(ours["params"]["kernel"], theirs["params"]["kernel"])


def test_adaptive_avg_pool():
    x = jax.random.normal(jax.random.key(0), (2, 14, 14, 3))
    pooled = adaptive_avg_pool(x, 7)
    np.testing.assert_allclose(pooled, x.reshape(2, 7, 2, 7, 2, 3).mean(axis=(2, 4)), rtol=1e-6, atol=1e-6)
    assert adaptive_avg_pool(x, 14) is x
    # PyTorch's uneven bins: 5 -> 3 averages rows [0,1], [1,2,3], [3,4]
    y = jnp.arange(5.0).reshape(1, 5, 1, 1)
    np.testing.assert_allclose(adaptive_avg_pool(y, (3, 1))[0, :, 0, 0], [0.5, 2.0, 3.5], rtol=1e-6)
