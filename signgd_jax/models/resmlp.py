"""ResMLP (Touvron et al., 2021) with convertible nonlinearities.

Layout: non-overlapping ``patch x patch`` stem conv -> tokens ``[B, N, C]`` -> ``depth`` x
(``x + ls1 * linear_tokens(norm1(x)^T)^T``; ``x + ls2 * mlp(norm2(x))``) -> Affine -> mean over
tokens -> Dense. The normalisations are ResMLP's ``Aff`` (``alpha * x + beta``), affine, so the
only neurons of a ResMLP are the GELUs of its channel MLPs.

Parameter tree (``params`` only)::

    stem/{kernel (p, p, C_in, dim), bias}
    blocks_{i}/norm1/{alpha, beta}                    (dim,)
    blocks_{i}/linear_tokens/{kernel (N, N), bias}    cross-patch linear layer
    blocks_{i}/layer_scale1/scale                     (dim,)
    blocks_{i}/norm2/{alpha, beta}
    blocks_{i}/mlp/fc1/{kernel (dim, ratio*dim), bias}
    blocks_{i}/mlp/fc2/{kernel (ratio*dim, dim), bias}
    blocks_{i}/layer_scale2/scale
    norm/{alpha, beta}
    head/{kernel (dim, classes), bias}

Mapping from timm ``resmlp_*``: ``stem.proj`` -> ``stem``; ``blocks.{i}.norm1.alpha|beta`` (shape
(1, 1, dim)) -> ``norm1/alpha|beta``; ``linear_tokens`` (transpose); ``ls1``/``ls2`` ->
``layer_scale1/2/scale``; ``mlp_channels.fc1/fc2`` -> ``mlp/fc1/fc2``; ``norm``; ``head``.
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from signgd_jax.models.common import Affine, LayerScale, Mlp


class ResMLPBlock(nn.Module):
    mlp_ratio: int = 4
    layer_scale_init: float = 1e-4
    gelu_approximate: bool | str = True

    @nn.compact
    def __call__(self, x):  # x: [B, N, C]
        tokens, dim = x.shape[-2], x.shape[-1]
        y = Affine(name="norm1")(x)
        y = jnp.swapaxes(y, -1, -2)
        y = jnp.swapaxes(nn.Dense(tokens, name="linear_tokens")(y), -1, -2)
        x = x + LayerScale(self.layer_scale_init, name="layer_scale1")(y)
        y = Affine(name="norm2")(x)
        y = Mlp(self.mlp_ratio * dim, gelu_approximate=self.gelu_approximate, name="mlp")(y)
        return x + LayerScale(self.layer_scale_init, name="layer_scale2")(y)


class ResMLP(nn.Module):
    """ResMLP classifier; ``__call__(images NHWC, train=False) -> logits [B, num_classes]``."""

    depth: int = 12
    patch_size: int = 16
    dim: int = 384
    mlp_ratio: int = 4
    layer_scale_init: float = 1e-4
    num_classes: int = 1000
    gelu_approximate: bool | str = True

    uses_batch_norm: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        p = self.patch_size
        x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", name="stem")(x)
        x = x.reshape(*x.shape[:-3], x.shape[-3] * x.shape[-2], x.shape[-1])
        for i in range(self.depth):
            x = ResMLPBlock(self.mlp_ratio, self.layer_scale_init, self.gelu_approximate, name=f"blocks_{i}")(x)
        x = Affine(name="norm")(x)
        x = jnp.mean(x, axis=-2)
        return nn.Dense(self.num_classes, name="head")(x)


CONFIGS = {
    # 28x28 -> 49 tokens of width 64; channel MLP 2x to stay within a few MFLOPs. Layer scale starts
    # at 1 (two blocks need no damping; 0.1 trained far slower from scratch).
    "resmlp_mini": dict(gelu_approximate="sigmoid", depth=4, patch_size=4, dim=96, mlp_ratio=2, layer_scale_init=1.0, num_classes=10),
    # ResMLP-B24/8 (timm resmlp_big_24_224, exact GELU): 224/8 = 28x28 = 784 patches.
    "resmlp_big_24": dict(depth=24, patch_size=8, dim=768, mlp_ratio=4, layer_scale_init=1e-6,
                          gelu_approximate="exact", num_classes=1000),
}
MODEL = ResMLP
