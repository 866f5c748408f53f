"""What ``convert`` accepts as a model, turned into one pure function ``apply_fn(variables, x)``.

Three front ends, one SNN pytree and one ``simulate`` for all of them:

* a ``flax.linen.Module`` with its variables (``{"params": ..., "batch_stats": ...}``), called as
  ``model.apply(variables, x)`` (``train=False`` when ``__call__`` takes ``train``);
* a ``flax.nnx.Module``: its graph definition becomes the (static) apply function and its state
  the variables, in eval mode (``deterministic=True``, ``use_running_average=True`` wherever a
  submodule has them). Pass ``None`` as the variables to convert the module's own state, or an
  ``nnx.State`` / its pure dict (e.g. restored from a checkpoint) for the same graph;
* any function ``apply_fn(variables, x) -> logits``, with its variables.

The function objects made here compare equal when they wrap equal models (for NNX: equal graph
definitions), so converting the same model twice gives SNNs with equal static structure and
``simulate`` reuses its compiled program instead of compiling again.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from flax import nnx


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


@dataclasses.dataclass(frozen=True)
class NNXApply:
    """``nnx.merge(graphdef, variables)(x)``: an NNX module rebuilt from its state and called.

    ``variables`` is the module state as a pure dict (``nnx.to_pure_dict``) or an ``nnx.State``.
    """

    graphdef: Any

    def __call__(self, variables, x):
        return nnx.merge(self.graphdef, variables)(x)


def is_nnx_module(model) -> bool:
    return isinstance(model, nnx.Module)


def nnx_eval_split(model: nnx.Module):
    """``(NNXApply, state as a pure dict)`` of ``model`` in eval mode; ``model`` is not changed."""
    view = nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)
    graphdef, state = nnx.split(view)
    return NNXApply(graphdef), nnx.to_pure_dict(state)


def model_and_variables(model, variables=None):
    """``(apply_fn, variables)`` for any accepted model (see the module docstring).

    For an NNX module ``variables`` may be None (its own state), an ``nnx.State`` or a pure
    dict of one; for a linen module or a function they are passed through and required.
    """
    if is_nnx_module(model):
        apply_fn, own = nnx_eval_split(model)
        if variables is None:
            return apply_fn, own
        if isinstance(variables, nnx.State):
            variables = nnx.to_pure_dict(variables)
        return apply_fn, variables
    if variables is None:
        raise TypeError("variables are required for a flax.linen module or an apply function "
                        "(None is accepted only for a flax.nnx.Module, which holds its own state)")
    return as_apply_fn(model), variables


def as_apply_fn(model) -> Callable:
    """``apply_fn(variables, x) -> logits`` for a Flax linen module (eval mode), an NNX module
    (variables: :func:`nnx_eval_split`'s state) or a callable."""
    if is_nnx_module(model):
        return nnx_eval_split(model)[0]
    if hasattr(model, "apply") and hasattr(model, "__call__"):
        takes_train = "train" in inspect.signature(type(model).__call__).parameters
        return LinenApply(model, takes_train)
    if callable(model):
        return model
    raise TypeError(f"expected a flax.linen.Module, a flax.nnx.Module or a function apply_fn(variables, x), "
                    f"got {type(model).__name__}")
