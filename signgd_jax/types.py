"""The converted network as data: one typed record per neuron site, and the SNN pytree.

``convert`` produces these, ``simulate``, ``metrics`` and the dynamics consume them. Both are
pytrees (arrays are leaves, kinds and options static), so an SNN can be saved with orbax,
passed through ``jit`` and ``vmap``-ed over its schedule.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from signgd_jax.schedules import Schedule


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Site:
    """One neuron site: a layer of neurons of one kind, arrays shaped like one sample
    (leading axis 1) and broadcast over the batch.

    a0: ``A(0)`` per input, the start value ``x_0`` of each input estimate.
    a1_plus_a0: ``A(1) + A(0)`` per input (the probe pass's offset correction).
    in_scale: paper-mode ReLU scaling ``s = 1/m`` (the neuron works on ``x s``), else None.
    out_scale: the output estimate's unit: the represented value is
      ``out_offset + out_scale * v`` (paper-mode ReLU: ``m``; improved mode: the calibrated
      range ``r``), None for 1.
    out_offset: the start value ``o`` of the output estimate (improved mode), None for 0.
    thresholds: ``(positive, negative)`` calibrated extreme outputs of each sign, the largest
      spikes of a multi-threshold neuron (the 'ecmt' dynamics), else None.
    """

    kind: str = dataclasses.field(metadata=dict(static=True))
    options: tuple = dataclasses.field(metadata=dict(static=True))
    a0: tuple
    a1_plus_a0: tuple
    in_scale: Any = None
    out_scale: Any = None
    out_offset: Any = None
    thresholds: Any = None

    @property
    def option_dict(self) -> dict:
        return dict(self.options)

    def replace(self, **changes) -> "Site":
        return dataclasses.replace(self, **changes)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Decoder:
    """The output layer's corrections: ``y_0 = A(0)`` and ``A(1) + A(0)`` of the logits."""

    a0: Any
    a1_plus_a0: Any


def site_name(index: int, kind: str, path: tuple = ()) -> str:
    """The key of a site in :attr:`SNN.sites`: its evaluation index and kind, then, when known,
    ``@`` and the Flax module path it was traced in, loop iterations as components of their own:
    ``'002_gelu@Net/layers/1/MlpBlock_0'`` (``'002_gelu'`` for a function with no modules).
    Unique within a network (the index), sorted in evaluation order, the same for every trace."""
    return f"{index:03d}_{kind}" + (f"@{'/'.join(path)}" if path else "")


def site_path(name: str) -> str:
    """The module path in a :func:`site_name` (``''`` when it has none)."""
    return name.partition("@")[2]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SNN:
    """A converted network: a pytree of arrays plus static structure (savable with orbax).

    variables: the model's variables with BatchNorm folded.
    sites: ``{site_name: Site}`` in evaluation order.
    decoder: the logits' :class:`Decoder` corrections.
    schedule: the step sizes (its ``eta0``/``gamma`` are leaves, so they can be ``vmap``-ed).
    apply_fn: the network (static; equal for equal models, so conversions share compilations).
    dynamics: the conversion method, a :class:`signgd_jax.dynamics.Dynamics` (static; its
      neurons, step sizes, network input and decoder).
    codec: the input codec (signGD dynamics).
    """

    variables: Any
    sites: dict
    decoder: Decoder
    schedule: Schedule
    apply_fn: Callable = dataclasses.field(metadata=dict(static=True))
    dynamics: Any = dataclasses.field(default=None, metadata=dict(static=True))
    codec: str = dataclasses.field(default="float", metadata=dict(static=True))

    def replace(self, **changes) -> "SNN":
        return dataclasses.replace(self, **changes)

    def with_spike_levels(self, levels: int | None) -> "SNN":
        """The same SNN with ``levels`` per step and side (graded signGD's K, ECMT's n; None: the
        dynamics' default). The calibrated sites do not depend on K for signGD."""
        return self.replace(dynamics=self.dynamics.with_spike_levels(levels))

    def with_schedule(self, eta0=None, gamma=None) -> "SNN":
        """The same SNN with other schedule parameters (traced values allowed, for vmap)."""
        s = self.schedule
        return self.replace(schedule=dataclasses.replace(
            s, eta0=s.eta0 if eta0 is None else eta0, gamma=s.gamma if gamma is None else gamma))
