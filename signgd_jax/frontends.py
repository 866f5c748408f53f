"""What ``convert`` accepts as a model, turned into one pure function ``apply_fn(variables, x)``.

The function objects made here compare equal when they wrap equal models, so converting the
same model twice gives SNNs with equal static structure and ``simulate`` reuses its compiled
program instead of compiling again.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class LinenApply:
    """``model.apply(variables, x)`` of a ``flax.linen.Module`` in eval mode (``train=False``
    when its ``__call__`` takes ``train``)."""

    model: Any
    takes_train: bool

    def __call__(self, variables, x):
        if self.takes_train:
            return self.model.apply(variables, x, train=False)
        return self.model.apply(variables, x)


def as_apply_fn(model) -> Callable:
    """``apply_fn(variables, x) -> logits`` for a Flax linen module (eval mode) or a callable."""
    if hasattr(model, "apply") and hasattr(model, "__call__"):
        takes_train = "train" in inspect.signature(type(model).__call__).parameters
        return LinenApply(model, takes_train)
    if callable(model):
        return model
    raise TypeError(f"expected a flax.linen.Module or a function apply_fn(variables, x), got {type(model).__name__}")
