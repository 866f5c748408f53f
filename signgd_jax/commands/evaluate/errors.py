"""The conversion tool's error and the input checks its modules share (a leaf: it imports no
other module of the command, so every one of them can use it)."""
from __future__ import annotations

import numpy as np


class ConvertError(ValueError):
    """Bad input to the conversion tool; ``str(e)`` is a one-line explanation."""


def check_finite(images: np.ndarray, what: str) -> None:
    """ConvertError naming the first images of ``images`` that hold NaN or Inf values: the
    dynamics would carry them into every estimate, so no simulation is run on them."""
    bad = np.flatnonzero(~np.isfinite(images.reshape(len(images), -1)).all(axis=1))
    if len(bad):
        listed = ", ".join(map(str, bad[:5])) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise ConvertError(f"{what}: image(s) {listed} hold NaN or Inf values; nothing was simulated")
