"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", 2022) with convertible nonlinearities.

Layout (NHWC throughout; LayerNorm is over channels, eps 1e-6)::

    stem:        patchify conv (k = s = stem_patch) -> LayerNorm
    stage i:     [downsample: LayerNorm -> 2x2 stride-2 conv]    (i >= 1)
                 depths[i] x block:
                     x + gamma * pwconv2(gelu(pwconv1(norm(dwconv7x7(x)))))
    head:        global mean pool -> LayerNorm -> Dense

Parameter tree (``params`` collection; no BatchNorm, so no ``batch_stats``)::

    stem/conv/{kernel (p, p, C_in, dims[0]), bias}            no bias when stem_bias=False
    stem/norm/{scale, bias}
    stages_{i}/downsample/norm/{scale, bias}                  i >= 1 only
    stages_{i}/downsample/conv/{kernel (2, 2, dims[i-1], dims[i]), bias}
    stages_{i}/block_{j}/dwconv/{kernel (7, 7, 1, C), bias}   DepthwiseConv (flax grouped-conv layout)
    stages_{i}/block_{j}/norm/{scale, bias}
    stages_{i}/block_{j}/pwconv1/{kernel (C, 4C), bias}
    stages_{i}/block_{j}/pwconv2/{kernel (4C, C), bias}
    stages_{i}/block_{j}/layer_scale/scale (C,)
    head_norm/{scale, bias}
    head/{kernel (dims[-1], classes), bias}

Mapping from torchvision ``convnext_*``: ``features.0.0`` -> ``stem/conv``, ``features.0.1`` ->
``stem/norm``; ``features.{2i}.0/1`` -> ``stages_{i}/downsample/norm|conv``; ``features.{2i+1}.{j}.block.0``
-> ``dwconv``, ``.block.2`` -> ``norm``, ``.block.3/.5`` -> ``pwconv1/2``, ``.layer_scale`` ->
``layer_scale/scale``; ``classifier.0`` -> ``head_norm``, ``classifier.2`` -> ``head``. From timm:
``stem.0/1``, ``stages.{i}.downsample.0/1``, ``stages.{i}.blocks.{j}.conv_dw/norm/mlp.fc1/mlp.fc2/gamma``,
``head.norm``, ``head.fc``. Conv kernels transpose OIHW -> HWIO, Linear weights transpose.
"""
from __future__ import annotations

from typing import ClassVar, NamedTuple, Sequence

import flax.linen as nn

from signgd_jax import nn as snn
from signgd_jax.models.common import DepthwiseConv, LayerScale, global_avg_pool, scaled_layer_norm

LN_EPS = 1e-6


class BlockOptions(NamedTuple):
    """What the stem, the downsampling layers and the blocks share: :class:`ConvNeXt`'s fields of
    the same names: ``ln_scales`` are the LayerNorms' ``(input_scale, normalized_scale)``;
    ``init_std`` None: Flax's default LeCun-normal kernels instead of truncated normal(std)."""

    kernel_size: int
    mlp_ratio: int
    layer_scale_init: float
    gelu_approximate: bool | str
    ln_epsilon: float
    ln_scales: tuple[float, float]
    init_std: float | None

    def kernel_init(self):
        return nn.initializers.lecun_normal() if self.init_std is None else nn.initializers.truncated_normal(
            self.init_std)

    def layer_norm(self, name: str):
        return scaled_layer_norm(self.ln_epsilon, self.ln_scales, name)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> Dense(4C) -> GELU -> Dense(C) -> layer scale, plus residual."""

    options: BlockOptions

    @nn.compact
    def __call__(self, x):
        o, channels = self.options, x.shape[-1]
        y = DepthwiseConv((o.kernel_size, o.kernel_size), kernel_init=o.kernel_init(), name="dwconv")(x)
        y = o.layer_norm("norm")(y)
        y = nn.Dense(o.mlp_ratio * channels, kernel_init=o.kernel_init(), name="pwconv1")(y)
        y = snn.gelu(y, o.gelu_approximate)
        y = nn.Dense(channels, kernel_init=o.kernel_init(), name="pwconv2")(y)
        if o.layer_scale_init > 0:
            y = LayerScale(o.layer_scale_init, name="layer_scale")(y)
        return x + y


class ConvNeXtStem(nn.Module):
    """Patchify convolution (kernel = stride = ``patch``) followed by LayerNorm."""

    features: int
    patch: int
    use_bias: bool
    options: BlockOptions

    @nn.compact
    def __call__(self, x):
        p = self.patch
        x = nn.Conv(self.features, (p, p), strides=(p, p), padding="VALID", use_bias=self.use_bias,
                    kernel_init=self.options.kernel_init(), name="conv")(x)
        return self.options.layer_norm("norm")(x)


class Downsample(nn.Module):
    """LayerNorm followed by a 2x2 stride-2 convolution."""

    features: int
    options: BlockOptions

    @nn.compact
    def __call__(self, x):
        x = self.options.layer_norm("norm")(x)
        # 'SAME' pads nothing for even sizes; an odd size (7x7 on MNIST) keeps its last row/column.
        return nn.Conv(self.features, (2, 2), strides=(2, 2), padding="SAME",
                       kernel_init=self.options.kernel_init(), name="conv")(x)


class ConvNeXtStage(nn.Module):
    """Optional ``downsample`` followed by ``depth`` blocks ``block_0 .. block_{depth-1}``."""

    depth: int
    features: int
    downsample: bool
    options: BlockOptions

    @nn.compact
    def __call__(self, x):
        if self.downsample:
            x = Downsample(self.features, self.options, name="downsample")(x)
        for j in range(self.depth):
            x = ConvNeXtBlock(self.options, name=f"block_{j}")(x)
        return x


class ConvNeXt(nn.Module):
    """ConvNeXt classifier; ``__call__(images NHWC, train=False) -> logits [B, num_classes]``.

    ``stem_bias=False`` drops the stem convolution's bias: on images with a constant (zero)
    background, background patches then map to the zero vector, where LayerNorm's gradient is
    ``1/sqrt(eps)`` times larger than elsewhere, and a stem bias receiving that gradient blows
    up under plain SGD. ``init_std=None`` uses LeCun-normal kernels instead of ConvNeXt's
    truncated normal(0.02), which trains faster from scratch on small data.
    """

    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    num_classes: int = 1000
    stem_patch: int = 4
    stem_bias: bool = True
    kernel_size: int = 7
    mlp_ratio: int = 4
    layer_scale_init: float = 1e-6
    gelu_approximate: bool | str = True
    ln_epsilon: float = LN_EPS
    ln_scales: tuple[float, float] = (1.0, 1.0)  # LayerNorm input_scale, normalized_scale
    init_std: float | None = 0.02

    uses_batch_norm: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no BatchNorm, no dropout
        o = BlockOptions(self.kernel_size, self.mlp_ratio, self.layer_scale_init, self.gelu_approximate,
                         self.ln_epsilon, self.ln_scales, self.init_std)
        x = ConvNeXtStem(self.dims[0], self.stem_patch, self.stem_bias, o, name="stem")(x)
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            x = ConvNeXtStage(depth, dim, i > 0, o, name=f"stages_{i}")(x)
        x = global_avg_pool(x)
        x = o.layer_norm("head_norm")(x)
        return nn.Dense(self.num_classes, kernel_init=o.kernel_init(), name="head")(x)


CONFIGS = {
    # ~2-3 MFLOPs on 28x28: 4x4 patches -> 7x7x32 -> 4x4x64.
    "convnext_mini": dict(gelu_approximate="sigmoid", ln_scales=(0.25, 0.5), depths=(2, 2), dims=(48, 96), stem_patch=4, stem_bias=False, layer_scale_init=0.1,
                          init_std=None, num_classes=10),
    # torchvision / timm convnext_small (both: exact GELU, LayerNorm eps 1e-6).
    "convnext_small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), gelu_approximate="exact",
                           num_classes=1000),
}
MODEL = ConvNeXt
