"""Input conventions of pretrained checkpoints: what a published model expects its images to be.

A checkpoint is only correct together with the preprocessing its publisher trained and evaluated
it with. :class:`Preprocessing` records that convention:

    x -> resize -> centre crop (image_size x image_size) -> (x - mean) / std      per channel

with pixel values in [0, 1] before normalising (uint8 images are divided by 255). Two resize
rules occur: the shorter side to ``resize_size`` then a centre crop (torchvision, timm), or the
whole image straight to ``image_size x image_size`` (``resize_size=None``; vision_transformer's
evaluation pipeline, which also maps pixels to [-1, 1], i.e. mean = std = 0.5).

The geometry is two rules, :func:`resized_shape` (torchvision's ``Resize``) and
:func:`crop_offsets` (torchvision's ``CenterCrop``), shared by the two implementations:

- on the host, :func:`signgd_jax.images.photo`: decodes a stored photo and resizes the uint8
  image with PIL and the publisher's filter, as torchvision and timm do, so its pixels are the
  publishers' own; no compilation, whatever the image's shape. :func:`signgd_jax.data.load`
  reads every photo dataset through it (``load(..., preprocessing=p)``);
- on the device, :func:`preprocess` (this module): a jit-able JAX function for a batch of
  images already in memory, e.g. in a model's own forward pass. It resamples float images with
  :func:`jax.image.resize` (antialiased when shrinking) and the same filter, which is close to
  PIL's but not bit-identical (accuracies can differ in the last decimal), and it compiles once
  per input shape.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # (x - 0.5) / 0.5 maps [0, 1] to [-1, 1]

_METHODS = {"bilinear": "linear", "bicubic": "cubic"}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """One source's input convention (images NHWC, RGB).

    image_size: side of the square the model sees.
    resize_size: shorter side after resizing, before the centre crop; ``None``: resize the whole
      image to ``image_size x image_size`` without cropping.
    interpolation: 'bilinear' or 'bicubic'.
    mean, std: per-channel normalisation of [0, 1] pixel values.
    """

    image_size: int = 224
    resize_size: int | None = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.interpolation not in _METHODS:
            raise ValueError(f"interpolation must be one of {sorted(_METHODS)}, got {self.interpolation!r}")
        if self.resize_size is not None and self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than image_size {self.image_size}")


# torchvision ImageClassification presets of the IMAGENET1K_V1 weights (bilinear, ImageNet mean/std).
TORCHVISION = Preprocessing(224, 256, "bilinear")
TORCHVISION_CONVNEXT_SMALL = Preprocessing(224, 230, "bilinear")
# timm default configs: crop_pct 0.875 -> shorter side floor(224 / 0.875) = 256, bicubic.
TIMM_IMAGENET = Preprocessing(224, 256, "bicubic")
TIMM_MIXER = Preprocessing(224, 256, "bicubic", HALF, HALF)  # timm's Mixer configs use mean = std = 0.5
# vision_transformer / big_vision evaluation: resize to 224x224, pixels to [-1, 1].
VIT_JAX = Preprocessing(224, None, "bilinear", HALF, HALF)


def resized_shape(height: int, width: int, spec: Preprocessing) -> tuple[int, int]:
    """``(H, W)`` after the resize step (before cropping); torchvision's rule: the shorter side
    becomes ``resize_size`` and the longer one ``int(resize_size * long / short)``."""
    if spec.resize_size is None:
        return spec.image_size, spec.image_size
    size = spec.resize_size
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left corner of the centred ``size x size`` crop (torchvision's rounding)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def resize_and_crop(images, spec: Preprocessing):
    """The geometric part of ``spec`` on the device: float ``[B, H, W, C]`` -> ``[B, image_size,
    image_size, C]`` (resize with :func:`jax.image.resize`, then centre crop). Linear in the pixel
    values, so it commutes with scaling to [0, 1]. The host's PIL version, with the publishers'
    exact pixels: :func:`signgd_jax.images.resize_and_crop`."""
    images = jnp.asarray(images, jnp.float32)
    height, width = images.shape[1:3]
    new_h, new_w = resized_shape(height, width, spec)
    if (new_h, new_w) != (height, width):
        images = jax.image.resize(images, (images.shape[0], new_h, new_w, images.shape[3]),
                                  _METHODS[spec.interpolation], antialias=True)
    top, left = crop_offsets(new_h, new_w, spec.image_size)
    return images[:, top:top + spec.image_size, left:left + spec.image_size, :]


def normalize(images, spec: Preprocessing):
    """``(x - mean) / std`` per channel for ``x`` in [0, 1] (uint8 images are divided by 255 first)."""
    images = jnp.asarray(images)
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    return (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)


def preprocess(images, spec: Preprocessing):
    """Applies ``spec`` to a batch ``[B, H, W, 3]`` (uint8 in [0, 255] or float in [0, 1]) on the
    device; returns float32 ``[B, image_size, image_size, 3]``. Pure; ``jit``-able, compiled once
    per input shape. (The datasets' host pipeline is :func:`signgd_jax.images.photo`.)"""
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected NHWC RGB images [B, H, W, 3], got shape {images.shape}")
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    return normalize(resize_and_crop(x, spec), spec)
