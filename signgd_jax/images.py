"""Photos to model inputs on the host, resampled as the publishers do: PIL, numpy, no JAX.

:func:`photo` turns one photo, as stored (the encoded bytes of a JPEG or PNG file) or already
decoded (a uint8 array), into the uint8 ``image_size x image_size x 3`` crop that a
:class:`~signgd_jax.models.Preprocessing` describes:

1. decode with PIL and convert to RGB (``Image.convert("RGB")``: grayscale replicated to three
   channels, alpha dropped, CMYK converted), as torchvision's and timm's image loaders do;
2. resize the uint8 image with ``Image.resize`` and the convention's filter (``bilinear`` or
   ``bicubic``: PIL's antialiased resampling) to
   :func:`~signgd_jax.models.preprocessing.resized_shape`: the shorter side to ``resize_size``
   and the longer one to ``int(resize_size * long / short)``, or the whole image to
   ``image_size x image_size`` when ``resize_size`` is None; an image already that size is
   left as it is;
3. keep the centred ``image_size`` square, its corner at
   :func:`~signgd_jax.models.preprocessing.crop_offsets` (``round((H - image_size) / 2)``).

These are the steps of torchvision's ``Resize(resize_size)`` then ``CenterCrop(image_size)``
on a PIL image (timm's evaluation transform uses the same two), so the pixels are the ones the
publishers evaluated their weights on. Every step runs in PIL's C code at a cost that follows
the image's size, whatever its shape: nothing is compiled, so a split whose photos come in
thousands of shapes costs no more than one of a single shape.
"""
from __future__ import annotations

import io

import numpy as np

_FILTERS = {"bilinear": "BILINEAR", "bicubic": "BICUBIC"}


def to_rgb(image):
    """A PIL RGB image from encoded bytes (any format PIL reads) or a uint8 array ``[H, W]``,
    ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]``."""
    from PIL import Image

    if isinstance(image, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(image)) as opened:
            return opened.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise ValueError(f"expected encoded image bytes or a uint8 [H, W, C] array with C in 1, 3, 4, got "
                         f"{array.dtype} {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")


def resize_and_crop(image, preprocessing) -> np.ndarray:
    """Steps 2 and 3 above on a PIL image: uint8 ``[image_size, image_size, channels]``."""
    from PIL import Image

    from signgd_jax.models.preprocessing import crop_offsets, resized_shape

    width, height = image.size
    new_h, new_w = resized_shape(height, width, preprocessing)
    if (new_h, new_w) != (height, width):
        image = image.resize((new_w, new_h), getattr(Image.Resampling, _FILTERS[preprocessing.interpolation]))
    size = preprocessing.image_size
    top, left = crop_offsets(new_h, new_w, size)
    return np.asarray(image.crop((left, top, left + size, top + size)))


def photo(image, preprocessing) -> np.ndarray:
    """One stored photo (bytes or a uint8 array) -> uint8 ``[image_size, image_size, 3]``:
    decoded, resized and centre-cropped with ``preprocessing``'s geometry and filter."""
    return resize_and_crop(to_rgb(image), preprocessing)
