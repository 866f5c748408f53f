"""Predictions over a subset of a model's classes: one rule for every accuracy.

A dataset can label its images with a few of the classes a model was trained on: Imagenette's
10 labels are 10 of ImageNet's 1000 classes. A 1000-way ImageNet model is then scored on
Imagenette by taking the argmax over the logits of those 10 classes only, so its prediction is
one of the 10 and compares with the labels 0..9 directly::

    predict(logits, classes=(0, 217, 482, 491, 497, 566, 569, 571, 574, 701))  # in 0..9

``classes=None`` is the plain argmax over every output (the labels are the model's outputs).
:func:`signgd_jax.evaluate`, :func:`signgd_jax.sweep` and ``signgd-convert`` all score with
:func:`predict`, for the ANN and the SNN alike.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

__all__ = ["check_classes", "predict"]


def check_classes(classes: Optional[Sequence[int]], num_outputs: Optional[int] = None) -> Optional[tuple[int, ...]]:
    """``classes`` as a tuple of distinct non-negative ints (below ``num_outputs`` when given),
    or None; ValueError (one line) otherwise."""
    if classes is None:
        return None
    values = np.asarray(classes)
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"classes must be a non-empty sequence of class indices, got {classes!r}")
    values = tuple(int(c) for c in values)
    if min(values) < 0 or len(set(values)) != len(values):
        raise ValueError(f"classes must be distinct non-negative class indices, got {list(values)}")
    if num_outputs is not None and max(values) >= num_outputs:
        raise ValueError(f"classes name output {max(values)}, but the model has {num_outputs} outputs")
    return values


def predict(logits, classes: Optional[Sequence[int]] = None):
    """Predicted labels ``[...]`` from logits ``[..., outputs]``: the argmax over all outputs
    (``classes`` None), else the position in ``classes`` of the largest of the logits
    ``logits[..., classes]`` (labels ``0 .. len(classes) - 1``). Traceable under ``jit``
    with ``classes`` a tuple. ValueError (one line) for classes the logits do not have."""
    if classes is None:
        return jnp.argmax(logits, -1)
    classes = check_classes(classes, logits.shape[-1])
    return jnp.argmax(jnp.take(logits, jnp.asarray(classes, jnp.int32), axis=-1), -1)
