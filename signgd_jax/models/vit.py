"""Vision Transformer (Dosovitskiy et al., 2021) with convertible nonlinearities.

Layout: non-overlapping ``patch x patch`` stem conv -> tokens ``[B, N, D]`` -> (class token
prepended) -> ``+ pos_embedding`` -> ``depth`` pre-norm blocks
(``x + out(attention(norm1(x)))``; ``x + fc2(gelu(fc1(norm2(x))))``) -> LayerNorm -> the class
token (``pool='token'``) or the mean over tokens (``pool='mean'``) -> Dense.

Multi-head self-attention is written with the vector neurons of :mod:`signgd_jax.nn`: the
scores ``q k^T / sqrt(d)`` are one bilinear neuron per (head, query, key), the attention weights
one softmax neuron per score, ``a v`` one bilinear neuron per output element; every LayerNorm is
one ``layer_norm`` vector neuron per element. So the neuron state is the size of the ANN's
activations, and the model converts in improved mode (paper mode refuses vector neurons).

``vector_neurons=False`` writes the reference implementation's decomposition instead, with
elementwise neurons only, so that paper mode converts it: ``q k^T`` as one product neuron per
(query, key, head, channel) summed over channels, softmax as exp neurons and divide neurons
(``exp(s) / sum exp(s)``, no max subtracted), ``a v`` as product neurons summed over keys,
LayerNorm as its square and ``x1/sqrt(x2)`` neurons. The same function; its product state is
``tokens^2 x width`` per block and image (vit_mini: 50*50*64 = 160,000 per contraction, against
10,000 scores), so it is for small models.

Parameter tree (``params`` only)::

    stem/{kernel (p, p, C_in, D), bias}
    cls_token (1, 1, D)                                  pool='token' only
    pos_embedding (1, N [+1], D)
    blocks_{i}/norm1/{scale, bias}
    blocks_{i}/attention/qkv/{kernel (D, 3D), bias}      q, k, v stacked, heads major within each
    blocks_{i}/attention/out/{kernel (D, D), bias}
    blocks_{i}/norm2/{scale, bias}
    blocks_{i}/mlp/{fc1, fc2}/{kernel, bias}             fc1 (D, mlp_dim), fc2 (mlp_dim, D)
    norm/{scale, bias}                                   head/{kernel (D, classes), bias}

``N = (H/p) * (W/p)``: the position embedding fixes the input resolution at initialisation.
torchvision's ``vit_b_16`` state dict maps onto this tree one to one
(:mod:`signgd_jax.models.checkpoints`): its ``in_proj_weight`` is ``qkv`` transposed.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from signgd_jax import nn as snn
from signgd_jax.models.common import Mlp, PatchTokenModel, patch_tokens


def _norm(epsilon: float, vector: bool, name: str):
    return snn.LayerNorm(epsilon, vector_neuron=vector, name=name)


class SelfAttention(nn.Module):
    """Multi-head self-attention ``out(concat_h softmax(q_h k_h^T / sqrt(d)) v_h)``."""

    num_heads: int
    vector_neurons: bool = True

    @nn.compact
    def __call__(self, x):  # x: [B, N, D]
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
        d = width // self.num_heads
        qkv = nn.Dense(3 * width, name="qkv")(x).reshape(*x.shape[:-1], 3, self.num_heads, d)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        q = q * (1.0 / np.sqrt(d))
        if self.vector_neurons:
            scores = snn.einsum("bqhd,bkhd->bhqk", q, k)
            weights = snn.softmax(scores, axis=-1)
            out = snn.einsum("bhqk,bkhd->bqhd", weights, v)
        else:  # product neurons + sums, exp and divide neurons (elementwise only)
            scores = jnp.sum(snn.product(q[:, :, None], k[:, None]), axis=-1)  # [B, q, k, h]
            e = snn.exp(scores)
            weights = snn.divide(e, jnp.sum(e, axis=2, keepdims=True))
            out = jnp.sum(snn.product(weights[..., None], v[:, None]), axis=2)  # [B, q, h, d]
        return nn.Dense(width, name="out")(out.reshape(x.shape))


class EncoderBlock(nn.Module):
    num_heads: int
    mlp_dim: int
    gelu_approximate: bool | str
    ln_epsilon: float
    vector_neurons: bool

    @nn.compact
    def __call__(self, x):
        y = _norm(self.ln_epsilon, self.vector_neurons, "norm1")(x)
        x = x + SelfAttention(self.num_heads, self.vector_neurons, name="attention")(y)
        y = _norm(self.ln_epsilon, self.vector_neurons, "norm2")(x)
        return x + Mlp(self.mlp_dim, gelu_approximate=self.gelu_approximate, name="mlp")(y)


class VisionTransformer(PatchTokenModel):
    """ViT classifier; ``__call__(images NHWC, train=False) -> logits [B, num_classes]``."""

    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    pool: str = "token"
    vector_neurons: bool = True  # False: the reference's elementwise decomposition (paper mode)

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        if self.pool not in ("token", "mean"):
            raise ValueError(f"pool must be 'token' or 'mean', got {self.pool!r}")
        x = patch_tokens(x, self.hidden_dim, self.patch_size)
        if self.pool == "token":
            cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.hidden_dim))
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.hidden_dim)).astype(x.dtype), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], self.hidden_dim))
        x = x + pos
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.gelu_approximate, self.ln_epsilon,
                             self.vector_neurons, name=f"blocks_{i}")(x)
        x = _norm(self.ln_epsilon, self.vector_neurons, "norm")(x)
        x = x[:, 0] if self.pool == "token" else jnp.mean(x, axis=1)
        return nn.Dense(self.num_classes, name="head")(x)


CONFIGS = {
    # 28x28 -> 7x7 = 49 patch tokens (+1 class token) of width 64, 4 heads of 16.
    "vit_mini": dict(patch_size=4, hidden_dim=64, depth=3, num_heads=4, mlp_dim=128, num_classes=10,
                     gelu_approximate="sigmoid"),
    # ViT-B/16 (Dosovitskiy et al. 2021, Table 1): 86.6M parameters at 224x224; exact GELU and
    # LayerNorm eps 1e-6 as torchvision's vit_b_16.
    "vit_b16": dict(patch_size=16, hidden_dim=768, depth=12, num_heads=12, mlp_dim=3072, num_classes=1000,
                    gelu_approximate="exact"),
}
MODEL = VisionTransformer
