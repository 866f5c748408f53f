"""Model zoo: shapes, BatchNorm handling, published parameter counts, conversion through ``signgd_jax.convert``."""
from __future__ import annotations

import collections

import flax.linen as flax_nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import signgd_jax as sg
from signgd_jax import models
from signgd_jax.models import DepthwiseConv, adaptive_avg_pool

SMALL = ["convnext_mini", "mixer_mini", "resmlp_mini", "resnet_mini", "vgg_mini", "vit_mini"]
IMAGENET = ["convnext_small", "mixer_b16", "resmlp_big_24", "resnet18", "resnet34", "vgg16_bn", "vit_b16"]

# Published parameter counts (1000 classes, 224x224x3) and the unit they are published in:
# torchvision gives exact counts, timm's results tables millions to two decimals.
PUBLISHED_PARAMS = {
    "convnext_small": (50_223_688, 1),  # torchvision.models.convnext_small, weights meta "num_params"
    "mixer_b16": (59_880_000, 10_000),  # timm mixer_b16_224 results table: param_count 59.88 (M)
    "resmlp_big_24": (129_140_000, 10_000),  # timm resmlp_big_24_224 results table: param_count 129.14 (M)
    "resnet18": (11_689_512, 1),  # torchvision.models.resnet18 "num_params"
    "resnet34": (21_797_672, 1),  # torchvision.models.resnet34 "num_params"
    "vgg16_bn": (138_365_992, 1),  # torchvision.models.vgg16_bn "num_params"
    "vit_b16": (86_567_656, 1),  # torchvision.models.vit_b_16 "num_params"
}

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


# ----------------------------------------------------------------------------- through the converter
def _site_counts(snn) -> dict:
    """``{kind: number of sites}`` of a converted network."""
    return dict(collections.Counter(site.kind for site in snn.sites.values()))


def _layer_norms(count):
    return {"square": count, "rsqrt_mul": count}


def expected_sites(name) -> dict:
    """The neurons each architecture needs, from its published structure and its config:
    a LayerNorm is one square and one x1/sqrt(x2) site, a k x k max-pool is k-1 binary max sites
    per axis, every ReLU / GELU one site."""
    cfg = models.config(name)
    if name.startswith("convnext"):  # stem LN, one LN per block, one per downsampling, head LN
        blocks = sum(cfg["depths"])
        return {**_layer_norms(blocks + len(cfg["depths"]) + 1), "gelu": blocks}
    if name.startswith("mixer"):  # two LNs and two MLPs per block, LN before the head
        return {**_layer_norms(2 * cfg["num_blocks"] + 1), "gelu": 2 * cfg["num_blocks"]}
    if name.startswith("resmlp"):  # affine normalisation only; one channel MLP per block
        return {"gelu": cfg["depth"]}
    if name.startswith("resnet"):  # stem ReLU, two per basic block; ImageNet stem: 3x3 max-pool
        out = {"relu": 1 + 2 * sum(cfg["depths"])}
        return {**out, "maximum": 2 * (3 - 1)} if cfg.get("stem_pool", True) else out
    if name.startswith("vgg"):  # a ReLU per conv and per hidden classifier layer, 2x2 max-pools
        convs = sum(1 for layer in cfg["layers"] if layer != "M")
        pools = sum(1 for layer in cfg["layers"] if layer == "M")
        return {"relu": convs + len(cfg["classifier"]), "maximum": 2 * pools}
    if name.startswith("vit"):  # per block: 2 LNs, q k^T and a v (bilinear), softmax, MLP GELU; final LN
        depth = cfg["depth"]
        return {"layer_norm": 2 * depth + 1, "bilinear": 2 * depth, "softmax": depth, "gelu": depth}
    raise AssertionError(name)


def dynamics_for(name):
    """ViTs use vector neurons (softmax, layer_norm, bilinear), which only improved mode has."""
    return "improved" if name.startswith("vit") else "paper"


@pytest.mark.parametrize("name", SMALL)
def test_small_model_converts_with_the_expected_neurons(name):
    model, variables, x = _init(name, (2, 28, 28, 1))
    snn = sg.convert(model, variables, [x], dynamics=dynamics_for(name))
    assert _site_counts(snn) == expected_sites(name)
    assert snn.decoder.a0.shape == (1, 10)
    if name in ("resnet_mini", "vgg_mini"):
        # probe at zero: the last ReLU / max sites emit 0, so the logits are the head's bias
        np.testing.assert_array_equal(np.asarray(snn.decoder.a0)[0], variables["params"]["head"]["bias"])
    logits = jax.eval_shape(lambda s, img: sg.simulate(s, img, (1, 3)), snn, x)
    assert logits.shape == (2, 2, 10)


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_model_converts_abstractly_with_the_expected_neurons(name):
    model = models.create(name)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(lambda img: model.init(jax.random.key(0), img, train=False), x)
    snn = jax.eval_shape(lambda v, img: sg.convert(model, v, [img], dynamics=dynamics_for(name)), variables, x)
    assert _site_counts(snn) == expected_sites(name)
    assert snn.decoder.a0.shape == (1, 1000)
    if dynamics_for(name) != "paper":  # refused by name in paper mode
        with pytest.raises(sg.UnsupportedOperation, match="softmax"):
            jax.eval_shape(lambda v, img: sg.convert(model, v, [img], dynamics="paper"), variables, x)


def test_converter_names_plain_nonlinearities_and_accepts_plain_relu():
    x = jnp.ones((2, 4, 4, 1))

    def refused(body):
        class Net(flax_nn.Module):
            @flax_nn.compact
            def __call__(self, x):
                return flax_nn.Dense(3)(body(flax_nn.Dense(8)(x.reshape(x.shape[0], -1))))

        with pytest.raises(sg.UnsupportedOperation) as info:
            sg.convert(Net(), Net().init(jax.random.key(0), x), [x])
        return str(info.value)

    assert "sin" in refused(jnp.sin)
    assert "log" in refused(jnp.log)

    class PlainRelu(flax_nn.Module):
        @flax_nn.compact
        def __call__(self, x):
            return flax_nn.Dense(3)(flax_nn.relu(flax_nn.Dense(8)(x.reshape(x.shape[0], -1))))

    snn = sg.convert(PlainRelu(), PlainRelu().init(jax.random.key(0), x), [x])
    assert _site_counts(snn) == {"relu": 1}


# ----------------------------------------------------------------------------- ImageNet models
@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_param_count_equals_the_published_one(name):
    model = models.create(name)
    assert model.num_classes == 1000
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(lambda img: model.init(jax.random.key(0), img, train=False), x)
    count = models.count_params(variables["params"])  # BN: scale/bias only, not running stats
    published, unit = PUBLISHED_PARAMS[name]
    assert round(count / unit) * unit == published, (name, count, published)
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
