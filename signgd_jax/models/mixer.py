"""MLP-Mixer (Tolstikhin et al., 2021) with convertible nonlinearities.

Layout: non-overlapping ``patch x patch`` stem conv -> tokens ``[B, N, C]`` -> ``num_blocks`` x
(``x + token_mixing(norm1(x)^T)^T``; ``x + channel_mixing(norm2(x))``) -> LayerNorm -> mean over
tokens -> Dense. Each mixing MLP is Dense -> GELU -> Dense. LayerNorm eps 1e-6 (as in the
original JAX code and timm).

Parameter tree (``params`` only)::

    stem/{kernel (p, p, C_in, hidden), bias}          no bias when stem_bias=False
    blocks_{i}/norm1/{scale, bias}
    blocks_{i}/token_mixing/fc1/{kernel (N, tokens_mlp), bias}
    blocks_{i}/token_mixing/fc2/{kernel (tokens_mlp, N), bias}
    blocks_{i}/norm2/{scale, bias}
    blocks_{i}/channel_mixing/fc1/{kernel (hidden, channels_mlp), bias}
    blocks_{i}/channel_mixing/fc2/{kernel (channels_mlp, hidden), bias}
    norm/{scale, bias}
    head/{kernel (hidden, classes), bias}

``N = (H/p) * (W/p)``: the token-mixing weights fix the input resolution at initialisation.
Mapping from the original checkpoints (``MixerBlock_{i}/LayerNorm_0``, ``token_mixing/Dense_0``,
...): ``stem`` and ``head`` keep their names, ``pre_head_layer_norm`` -> ``norm``. From timm
``mixer_b16_224``: ``stem.proj`` -> ``stem``, ``blocks.{i}.norm1/mlp_tokens.fc1/.../norm2/mlp_channels``
-> ``blocks_{i}/norm1/token_mixing/.../norm2/channel_mixing``, ``norm``, ``head``.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from signgd_jax.models.common import Mlp, PatchTokenModel, patch_tokens, scaled_layer_norm


class MixerBlock(nn.Module):
    tokens_mlp_dim: int
    channels_mlp_dim: int
    gelu_approximate: bool | str
    ln_epsilon: float
    ln_scales: tuple[float, float]  # LayerNorm input_scale, normalized_scale

    @nn.compact
    def __call__(self, x):  # x: [B, N, C]
        y = scaled_layer_norm(self.ln_epsilon, self.ln_scales, "norm1")(x)
        y = jnp.swapaxes(y, -1, -2)
        y = Mlp(self.tokens_mlp_dim, gelu_approximate=self.gelu_approximate, name="token_mixing")(y)
        x = x + jnp.swapaxes(y, -1, -2)
        y = scaled_layer_norm(self.ln_epsilon, self.ln_scales, "norm2")(x)
        return x + Mlp(self.channels_mlp_dim, gelu_approximate=self.gelu_approximate, name="channel_mixing")(y)


class MlpMixer(PatchTokenModel):
    """MLP-Mixer classifier; ``__call__(images NHWC, train=False) -> logits [B, num_classes]``.

    ``stem_bias=False``: see :class:`signgd_jax.models.convnext.ConvNeXt` (LayerNorm of the zero
    vector that background patches of MNIST-like images produce).
    """

    num_blocks: int = 12
    tokens_mlp_dim: int = 384
    channels_mlp_dim: int = 3072
    stem_bias: bool = True
    ln_scales: tuple[float, float] = (1.0, 1.0)  # LayerNorm input_scale, normalized_scale

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        x = patch_tokens(x, self.hidden_dim, self.patch_size, self.stem_bias)
        for i in range(self.num_blocks):
            x = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim, self.gelu_approximate, self.ln_epsilon,
                           self.ln_scales, name=f"blocks_{i}")(x)
        x = scaled_layer_norm(self.ln_epsilon, self.ln_scales, "norm")(x)
        x = jnp.mean(x, axis=-2)
        return nn.Dense(self.num_classes, name="head")(x)


CONFIGS = {
    # 28x28 -> 7x7 = 49 tokens of width 64.
    "mixer_mini": dict(gelu_approximate="sigmoid", ln_scales=(0.25, 0.5), num_blocks=4, patch_size=4, hidden_dim=96, tokens_mlp_dim=64, channels_mlp_dim=192,
                       stem_bias=False, num_classes=10),
    # Mixer-B/16 (Tolstikhin et al. 2021, Table 1); tanh GELU as Flax's nn.gelu in the original code
    # (timm's port uses the exact GELU: from_checkpoint sets it for timm weights).
    "mixer_b16": dict(num_blocks=12, patch_size=16, hidden_dim=768, tokens_mlp_dim=384, channels_mlp_dim=3072,
                      num_classes=1000),
}
MODEL = MlpMixer
