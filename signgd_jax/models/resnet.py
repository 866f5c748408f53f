"""ResNet with BasicBlocks (He et al., 2016) with convertible nonlinearities.

Layout: stem conv -> BN -> ReLU [-> 3x3 stride-2 max-pool] -> stages of BasicBlocks
(``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, the shortcut a 1x1 conv + BN when the
stride or width changes) -> global mean pool -> Dense. Convolutions have no bias and use
PyTorch's symmetric ``k // 2`` padding; BatchNorm uses momentum 0.9 (PyTorch 0.1), eps 1e-5.

Parameter tree (``params``; ``batch_stats`` has ``mean``/``var`` at every ``bn``)::

    stem/conv/kernel (k, k, C_in, stem_width)      stem/bn/{scale, bias}
    stages_{i}/block_{j}/conv1/conv/kernel          stages_{i}/block_{j}/conv1/bn/{scale, bias}
    stages_{i}/block_{j}/conv2/conv/kernel          stages_{i}/block_{j}/conv2/bn/{scale, bias}
    stages_{i}/block_{j}/shortcut/conv/kernel       stages_{i}/block_{j}/shortcut/bn/{scale, bias}
    head/{kernel (widths[-1], classes), bias}

``activation='qcfs'`` adds one scalar ``threshold`` per nonlinearity: ``stem_qcfs/threshold``,
``stages_{i}/block_{j}/qcfs1/threshold`` and ``.../qcfs2/threshold`` (the stem's 3x3 stride-2
max-pool becomes an average pool with the same window, stride and padding; see ``ResNet``).

Mapping from torchvision ``resnet18/34``: ``conv1``/``bn1`` -> ``stem/conv``/``stem/bn``;
``layer{i+1}.{j}.conv1/bn1`` -> ``stages_{i}/block_{j}/conv1/conv|bn``, likewise ``conv2/bn2``;
``downsample.0/1`` -> ``shortcut/conv|bn``; ``fc`` -> ``head``; ``running_mean/var`` -> ``batch_stats``.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from signgd_jax.models.common import Activation, ConvBN, ReLUModel, global_avg_pool


class BasicBlock(nn.Module):
    features: int
    strides: int
    act: Activation

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = ConvBN(self.features, 3, self.strides, name="conv1")(x, train)
        y = self.act(y, name="qcfs1")
        y = ConvBN(self.features, 3, 1, name="conv2")(y, train)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = ConvBN(self.features, 1, self.strides, name="shortcut")(x, train)
        return self.act(x + y, name="qcfs2")


class ResNetStage(nn.Module):
    depth: int
    features: int
    strides: int
    act: Activation

    @nn.compact
    def __call__(self, x, train: bool = False):
        for j in range(self.depth):
            x = BasicBlock(self.features, self.strides if j == 0 else 1, self.act, name=f"block_{j}")(x, train)
        return x


class ResNet(ReLUModel):
    """ResNet classifier; ``__call__(images NHWC, train=False) -> logits [B, num_classes]``.
    ``activation='qcfs'`` (:class:`~signgd_jax.models.common.ReLUModel`) also makes the stem's
    max-pool an average pool."""

    depths: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    strides: Sequence[int] = (1, 2, 2, 2)
    num_classes: int = 1000
    stem_width: int = 64
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        act = self.act
        x = ConvBN(self.stem_width, self.stem_kernel, self.stem_stride, name="stem")(x, train)
        x = act(x, name="stem_qcfs")
        if self.stem_pool:
            x = act.pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for i, (depth, width, stride) in enumerate(zip(self.depths, self.widths, self.strides)):
            x = ResNetStage(depth, width, stride, act, name=f"stages_{i}")(x, train)
        x = global_avg_pool(x)
        return nn.Dense(self.num_classes, name="head")(x)


CONFIGS = {
    # 28x28: 3x3 stem (16) at 28x28, then one block each at 14x14 (16), 7x7 (32), 4x4 (64).
    # activation='qcfs': thresholds start at 4 (QCFS's 8 trains to the same test accuracy on mnist5k
    # with a higher training loss; docs/design.md, "QCFS").
    "resnet_mini": dict(depths=(1, 1, 1), widths=(16, 32, 64), strides=(2, 2, 2), stem_width=16, stem_kernel=3,
                        stem_stride=1, stem_pool=False, num_classes=10, qcfs_threshold=4.0),
    "resnet18": dict(depths=(2, 2, 2, 2), num_classes=1000),
    "resnet34": dict(depths=(3, 4, 6, 3), num_classes=1000),
}
MODEL = ResNet
