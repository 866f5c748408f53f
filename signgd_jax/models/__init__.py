"""Model zoo: convertible ConvNeXt, MLP-Mixer, ResMLP, ResNet, VGG and Vision Transformer (ViT).

Every nonlinearity goes through :mod:`signgd_jax.nn` (ReLU or QCFS, GELU, max-pool, LayerNorm;
ViT's attention as bilinear and softmax vector neurons), and everything between those is
affine, so each model converts as is (ViT's vector neurons in improved mode; with
``vector_neurons=False`` in paper mode too). Calling convention::

    model = models.create("convnext_mini", num_classes=10)
    variables = model.init(key, images, train=False)          # images: NHWC float32
    logits = model.apply(variables, images, train=False)      # [batch, num_classes]
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])  # BN models

Small variants (``*_mini``: :data:`SMALL_MODELS`) take 28x28 or 32x32 images with any channel
count; the ImageNet variants (:data:`IMAGENET_MODELS`: ``convnext_small``, ``mixer_b16``,
``resmlp_big_24``, ``resnet18``, ``resnet34``, ``vgg16_bn``, ``vit_b16``) have the published layer
shapes for 224x224x3 images. Models whose weights depend on the number of tokens (Mixer, ResMLP,
ViT's position embedding) or the flattened map (VGG without adaptive pooling) fix the input
resolution when initialised. Parameter names are documented in each family's module.

Published weights (vision_transformer ``.npz``, timm, torchvision) load with
:func:`from_checkpoint` (``signgd_jax.models.checkpoints``), which also returns the input
convention the weights expect (``signgd_jax.models.preprocessing``); timm repositories of the
Hugging Face Hub load with :func:`from_pretrained` (``signgd_jax.models.hub``, needs the ``hub``
extra: ``huggingface_hub``).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from signgd_jax.models import convnext, mixer, resmlp, resnet, vgg, vit
from signgd_jax.models.checkpoints import CheckpointError, CheckpointMismatch, from_arrays, from_checkpoint
from signgd_jax.models.hub import HubError, from_pretrained
from signgd_jax.models.common import (
    Affine,
    ConvBN,
    DepthwiseConv,
    LayerScale,
    Mlp,
    adaptive_avg_pool,
    count_params,
    global_avg_pool,
)
from signgd_jax.models.convnext import ConvNeXt
from signgd_jax.models.preprocessing import Preprocessing, preprocess
from signgd_jax.models.mixer import MlpMixer
from signgd_jax.models.resmlp import ResMLP
from signgd_jax.models.resnet import ResNet
from signgd_jax.models.vgg import VGG
from signgd_jax.models.vit import VisionTransformer

_FAMILIES = (convnext, mixer, resmlp, resnet, vgg, vit)
_REGISTRY = {name: (family.MODEL, config) for family in _FAMILIES for name, config in family.CONFIGS.items()}

SMALL_MODELS = tuple(sorted(name for name in _REGISTRY if name.endswith("_mini")))
IMAGENET_MODELS = tuple(sorted(name for name in _REGISTRY if not name.endswith("_mini")))
# The ReLU models, which take ``activation='qcfs'`` (and ``qcfs_levels``, ``qcfs_threshold``):
# every ReLU a signgd_jax.nn.QCFS with its own trainable threshold, max-pooling by averaging.
QCFS_MODELS = tuple(sorted(name for name, (cls, _) in _REGISTRY.items() if "activation" in cls.__dataclass_fields__))

__all__ = [
    "Affine", "CheckpointError", "CheckpointMismatch", "ConvBN", "ConvNeXt", "DepthwiseConv", "HubError",
    "IMAGENET_MODELS",
    "LayerScale", "Mlp", "MlpMixer", "Preprocessing", "QCFS_MODELS", "ResMLP", "ResNet", "SMALL_MODELS", "VGG",
    "VisionTransformer",
    "adaptive_avg_pool", "available", "config", "count_params", "create", "from_arrays", "from_checkpoint",
    "from_pretrained", "global_avg_pool", "has_batch_norm", "input_shape", "preprocess",
]


def available() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def config(name: str) -> dict:
    """The keyword arguments :func:`create` passes to the model class for ``name`` (a copy)."""
    return dict(_lookup(name)[1])


def create(name: str, num_classes: int | None = None, **overrides) -> nn.Module:
    """Builds the model ``name`` (see :func:`available`).

    ``num_classes`` defaults to the variant's own (10 for ``*_mini``, 1000 for ImageNet ones);
    ``overrides`` replace any other field of the config (e.g. ``depths=(2, 2)``).
    """
    cls, cfg = _lookup(name)
    cfg = dict(cfg)
    if num_classes is not None:
        cfg["num_classes"] = num_classes
    unknown = set(overrides) - set(cls.__dataclass_fields__) - {"parent", "name"}
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {sorted(unknown)} for {cls.__name__}")
    cfg.update(overrides)
    return cls(**cfg)


def input_shape(name: str, channels: int | None = None) -> tuple[int, int, int]:
    """A natural ``(H, W, C)`` for ``name``: ``(28, 28, 1)`` for ``*_mini`` and ``(224, 224, 3)`` otherwise."""
    _lookup(name)
    if name in SMALL_MODELS:
        return (28, 28, 1 if channels is None else channels)
    return (224, 224, 3 if channels is None else channels)


def has_batch_norm(model: nn.Module, sample_input=None) -> bool:
    """Whether ``model`` keeps BatchNorm statistics (``batch_stats``) and so needs
    ``mutable=['batch_stats']`` when applied with ``train=True``.

    Zoo models answer from their class; for other modules pass ``sample_input`` (an array or
    ``jax.ShapeDtypeStruct``) and the answer comes from an abstract ``init``.
    """
    known = getattr(type(model), "uses_batch_norm", None)
    if known is not None:
        return bool(known)
    if sample_input is None:
        raise ValueError(f"{type(model).__name__} is not a zoo model: pass sample_input to inspect it")
    sample = jax.ShapeDtypeStruct(jnp.shape(sample_input), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), sample)
    return "batch_stats" in shapes and bool(jax.tree_util.tree_leaves(shapes["batch_stats"]))
