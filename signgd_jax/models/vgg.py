"""VGG with BatchNorm (Simonyan & Zisserman, 2015) with convertible nonlinearities.

Layout: ``layers`` is a sequence of conv widths and ``'M'`` (2x2 stride-2 max-pool, as binary
max neurons via :func:`signgd_jax.nn.max_pool`); each conv is 3x3 (padding 1, with bias) -> BN
-> ReLU. Then an optional adaptive average pool to ``pool_size`` (affine), flatten in
``(H, W, C)`` order, ``classifier`` hidden Dense -> ReLU layers, and the output Dense.

Parameter tree (``params``; ``batch_stats`` ``mean``/``var`` at every ``features_{k}/bn``)::

    features_{k}/conv/{kernel (3, 3, C_in, C_out), bias}    k counts convs only (0, 1, ...)
    features_{k}/bn/{scale, bias}
    classifier_{m}/{kernel, bias}                           hidden Dense layers
    head/{kernel, bias}

``activation='qcfs'`` adds one scalar ``threshold`` per nonlinearity (``features_{k}_qcfs/threshold``,
``classifier_{m}_qcfs/threshold``) and pools by averaging (see ``VGG``).

Mapping from torchvision ``vgg16_bn``: the ``k``-th ``Conv2d``/``BatchNorm2d`` in ``features`` ->
``features_{k}/conv|bn``; ``classifier.0``/``classifier.3`` -> ``classifier_0``/``classifier_1``,
``classifier.6`` -> ``head``. torchvision flattens ``(C, H, W)``: permute the rows of
``classifier.0`` to ``(H, W, C)`` order when importing.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from signgd_jax import nn as snn
from signgd_jax.models.common import ConvBN, ReLUModel, adaptive_avg_pool

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(ReLUModel):
    """VGG classifier; ``__call__(images NHWC, train=False) -> logits [B, num_classes]``.
    ``activation='qcfs'`` (:class:`~signgd_jax.models.common.ReLUModel`) also makes every 'M' a
    2x2 average pool (as the QCFS code's VGG; ``pool_input_scale`` then has nothing to scale)."""

    layers: Sequence[int | str] = VGG16
    classifier: Sequence[int] = (4096, 4096)
    num_classes: int = 1000
    pool_size: int | None = 7  # adaptive average pool before flattening; None: flatten as is
    pool_padding: str = "VALID"  # 'SAME' keeps the last row/column of odd-sized maps
    # Max-pool ``s * x`` and divide by ``s`` after: the same function (exactly, for a power of
    # two), but the max neurons track ``s`` times smaller values; paper-mode estimates are
    # confined to +-3 and ReLU outputs of a trained VGG exceed that.
    pool_input_scale: float = 1.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        act, k = self.act, 0
        for layer in self.layers:
            if layer == "M" and act.kind == "qcfs":
                x = act.pool(x, (2, 2), (2, 2), padding=self.pool_padding)
            elif layer == "M":
                s = self.pool_input_scale
                x = snn.max_pool(x * s, (2, 2), (2, 2), padding=self.pool_padding) / s
            else:
                x = ConvBN(int(layer), 3, 1, use_bias=True, name=f"features_{k}")(x, train)
                x = act(x, name=f"features_{k}_qcfs")
                k += 1
        if self.pool_size is not None:
            x = adaptive_avg_pool(x, self.pool_size)
        x = x.reshape(*x.shape[:-3], -1)
        for m, width in enumerate(self.classifier):
            x = act(nn.Dense(width, name=f"classifier_{m}")(x), name=f"classifier_{m}_qcfs")
        return nn.Dense(self.num_classes, name="head")(x)


CONFIGS = {
    # 28x28 -> 14 -> 7 -> 4 ('SAME' pooling keeps the odd row), 32x32 -> 16 -> 8 -> 4; then global mean
    # pool (adaptive pool to 1x1) and one Dense. A flattened 1024-wide Dense head trained much worse
    # with plain SGD at lr 0.1 (its fan-in of O(1) activations makes the step 16x larger).
    "vgg_mini": dict(layers=(16, "M", 32, "M", 64, "M"), classifier=(), pool_size=1, pool_padding="SAME",
                     pool_input_scale=0.25,
                     num_classes=10, qcfs_threshold=4.0),  # QCFS thresholds start at 4 (see resnet_mini)
    # torchvision vgg16_bn (dropout omitted).
    "vgg16_bn": dict(layers=VGG16, classifier=(4096, 4096), pool_size=7, num_classes=1000),
}
MODEL = VGG
