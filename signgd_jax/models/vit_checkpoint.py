"""torchvision's ``vit_b_16`` state dict into the zoo's :class:`~signgd_jax.models.vit.VisionTransformer`.

torchvision (``torchvision.models.vision_transformer``) and the zoo compute the same function:
a 16x16 stride-16 patch conv, the class token first, a learned position embedding, pre-norm
encoder blocks (LayerNorm eps 1e-6, ``nn.MultiheadAttention`` whose packed ``in_proj`` holds
q, k, v in that order with heads major inside each, an MLP with torch's exact GELU), a final
LayerNorm, the class token's features into the head. Key by key (``L = encoder.layers.encoder_layer_{i}``)::

    class_token (1, 1, D)                    -> cls_token
    conv_proj.{weight (D, 3, p, p), bias}    -> stem/{kernel (p, p, 3, D), bias}
    encoder.pos_embedding (1, N+1, D)        -> pos_embedding
    L.ln_1.{weight, bias}                    -> blocks_{i}/norm1/{scale, bias}
    L.self_attention.in_proj_{weight (3D, D), bias}  -> blocks_{i}/attention/qkv/{kernel (D, 3D), bias}
    L.self_attention.out_proj.{weight, bias} -> blocks_{i}/attention/out/{kernel, bias}
    L.ln_2.{weight, bias}                    -> blocks_{i}/norm2/{scale, bias}
    L.mlp.0.{weight, bias}, L.mlp.3.{...}    -> blocks_{i}/mlp/fc1, blocks_{i}/mlp/fc2
    encoder.ln.{weight, bias}                -> norm/{scale, bias}
    heads.head.{weight, bias}                -> head/{kernel, bias}

Linear weights are transposed (torch ``(out, in)``), the conv kernel moved to ``(kh, kw, in, out)``.
The weights expect torchvision's ImageNet preprocessing (resize 256, centre crop 224, ImageNet
mean and standard deviation).
"""
from __future__ import annotations

from typing import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from signgd_jax.models.checkpoints import CheckpointMismatch, Entry

SIGNATURE = "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"  # only torchvision's ViT has it
OVERRIDES = dict(gelu_approximate="exact", ln_epsilon=1e-6, pool="token")  # what torchvision computes


def _same(key, path):
    return Entry(key, ("params", *path), tuple, lambda a, shape: a)


def _linear(key, path):
    return Entry(key, ("params", *path), lambda s: (s[1], s[0]), lambda a, shape: a.T)


def _torch_linear(prefix, module):
    yield _linear(f"{prefix}.weight", (*module, "kernel"))
    yield _same(f"{prefix}.bias", (*module, "bias"))


def _torch_norm(prefix, module):
    yield _same(f"{prefix}.weight", (*module, "scale"))
    yield _same(f"{prefix}.bias", (*module, "bias"))


def torchvision_vit_entries(model, abstract_variables=None) -> Iterator[Entry]:
    """The :class:`~signgd_jax.models.checkpoints.Entry` list of a torchvision ViT state dict for
    the zoo ``model`` (a ``VisionTransformer`` with ``pool='token'``), in the state dict's order;
    ``abstract_variables`` is accepted for the checkpoints layout table and not needed."""
    del abstract_variables
    if model.pool != "token":
        raise ValueError("torchvision's ViT reads the class token: the zoo model needs pool='token'")
    yield _same("class_token", ("cls_token",))
    yield Entry("conv_proj.weight", ("params", "stem", "kernel"), lambda s: (s[3], s[2], s[0], s[1]),
                lambda a, shape: a.transpose(2, 3, 1, 0))
    yield _same("conv_proj.bias", ("stem", "bias"))
    yield _same("encoder.pos_embedding", ("pos_embedding",))
    for i in range(model.depth):
        layer, block = f"encoder.layers.encoder_layer_{i}", f"blocks_{i}"
        yield from _torch_norm(f"{layer}.ln_1", (block, "norm1"))
        yield _linear(f"{layer}.self_attention.in_proj_weight", (block, "attention", "qkv", "kernel"))
        yield _same(f"{layer}.self_attention.in_proj_bias", (block, "attention", "qkv", "bias"))
        yield from _torch_linear(f"{layer}.self_attention.out_proj", (block, "attention", "out"))
        yield from _torch_norm(f"{layer}.ln_2", (block, "norm2"))
        yield from _torch_linear(f"{layer}.mlp.0", (block, "mlp", "fc1"))
        yield from _torch_linear(f"{layer}.mlp.3", (block, "mlp", "fc2"))
    yield from _torch_norm("encoder.ln", ("norm",))
    yield from _torch_linear("heads.head", ("head",))


def _leaf_shapes(tree, prefix=()):
    if isinstance(tree, Mapping):
        for key, sub in tree.items():
            yield from _leaf_shapes(sub, (*prefix, key))
    else:
        yield prefix, tuple(tree.shape)


def from_torchvision_vit(arrays: Mapping[str, np.ndarray], name: str = "vit_b16", image_size: int = 224,
                         *, origin: str = "state dict"):
    """``(model, variables)`` of the zoo ViT ``name`` holding torchvision's ``vit_b_16`` weights.

    ``arrays``: the state dict as ``{key: array}`` (numpy or torch CPU tensors converted with
    ``.numpy()``; e.g. read from a ``.safetensors`` file). Every key must be present with the
    shape the zoo model expects (one-line :class:`CheckpointMismatch` naming the key otherwise);
    keys the model does not use are refused too.
    """
    from signgd_jax import models  # the registry imports this package

    model = models.create(name, **OVERRIDES)
    sample = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), sample)
    shapes = dict(_leaf_shapes(abstract))
    entries = list(torchvision_vit_entries(model))
    uncovered = sorted(set(shapes) - {e.path for e in entries})
    if uncovered:
        raise RuntimeError(f"{name}: no torchvision entry for {'/'.join(uncovered[0])}")
    where = f"{origin}: {name} (torchvision layout)"
    missing = [e.key for e in entries if e.key not in arrays]
    if missing:
        raise CheckpointMismatch(f"{where}: missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)"
                                                                          if len(missing) > 1 else ""))
    extra = sorted(set(arrays) - {e.key for e in entries})
    if extra:
        raise CheckpointMismatch(f"{where}: unexpected key {extra[0]!r}")
    variables: dict = {}
    for entry in entries:
        ours = shapes[entry.path]
        array = np.asarray(arrays[entry.key])
        if tuple(array.shape) != tuple(entry.source_shape(ours)):
            raise CheckpointMismatch(f"{where}: key {entry.key!r} has shape {tuple(array.shape)}, "
                                     f"expected {tuple(entry.source_shape(ours))}")
        node = variables
        for part in entry.path[:-1]:
            node = node.setdefault(part, {})
        node[entry.path[-1]] = jnp.asarray(entry.to_ours(array.astype(np.float32), ours))
    return model, variables
