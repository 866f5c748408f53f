"""The neuron kinds: one table row per nonlinearity a network may contain.

A row says everything the converter and the dynamics need to know about one kind:

* ``ann``: the ANN operation (what the model computes while training and in the ANN column);
* ``target``: ``phi``, the value the neuron's output estimate ``v`` tracks, as a function of the
  input estimates (for gelu ``x * sigmoid(1.702 x)``, the paper's approximation, whatever GELU
  form the ANN uses);
* ``above``: the spike decision ``H(v - phi(x))``, i.e. whether the estimate ``v`` lies above the
  target. It is written without dividing (``x1/sqrt(x2)`` compares ``sqrt(x2) v`` with ``x1``),
  and it holds the *tie rule*: relu, square and exp fire when ``v == phi`` (``H(0) = 1``), every
  other kind only when ``v > phi`` (the reference implementation's rules, DESIGN 1b);
* ``output_range``: the closed hull of ``phi``'s values, ``(low, high)``; a paper-mode estimate
  starts at 0 and moves at most ``eta0 / (1 - gamma)``, so targets outside ``[-3, 3]`` saturate.

Adding a kind means adding one row here (and a ``signgd_jax.nn`` function that binds it).
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Kind:
    """One neuron kind (see the module docstring)."""

    name: str
    arity: int
    ann: Callable
    target: Callable
    fires_on_tie: bool
    output_range: tuple[float, float]
    compare: Callable | None = None  # binary kinds whose spike test is not ``v > target``

    def above(self, value, inputs, options: dict):
        """``H(v - phi(x))`` as a boolean array, ``value`` in the units of ``phi``."""
        if self.compare is not None:
            return self.compare(value, *inputs)
        goal = self.target(*inputs, **options)
        return value >= goal if self.fires_on_tie else value > goal


def _gelu_ann(x, approximate="tanh"):
    if approximate == "sigmoid":
        return x * jax.nn.sigmoid(1.702 * x)
    return jax.nn.gelu(x, approximate=(approximate == "tanh"))


def _gelu_target(x, approximate="tanh"):
    return x * jax.nn.sigmoid(1.702 * x)


def _leaky_relu(x, negative_slope=0.01):
    return jnp.where(x >= 0, x, negative_slope * x)


def _relu(x):
    return jnp.maximum(x, 0)


def _silu(x):
    return x * jax.nn.sigmoid(x)


def _rsqrt_mul(x1, x2):
    return x1 * jax.lax.rsqrt(x2)


def _rsqrt_mul_above(value, x1, x2):
    # sqrt(x2) * v > x1 without dividing; where x2 <= 0 the neuron stays silent
    return (x2 > 0) & (jnp.sqrt(jnp.maximum(x2, 0)) * value - x1 > 0)


def _divide_above(value, x1, x2):
    return x2 * value - x1 > 0


_INF = math.inf
_GELU_MIN = -0.1700  # min of x*sigmoid(1.702x), rounded outwards
_SILU_MIN = -0.2785  # min of x*sigmoid(x), rounded outwards

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("relu", 1, _relu, _relu, True, (0.0, _INF)),
    Kind("leaky_relu", 1, _leaky_relu, _leaky_relu, False, (-_INF, _INF)),
    Kind("gelu", 1, _gelu_ann, _gelu_target, False, (_GELU_MIN, _INF)),
    Kind("sigmoid", 1, jax.nn.sigmoid, jax.nn.sigmoid, False, (0.0, 1.0)),
    Kind("tanh", 1, jnp.tanh, jnp.tanh, False, (-1.0, 1.0)),
    Kind("silu", 1, _silu, _silu, False, (_SILU_MIN, _INF)),
    Kind("abs", 1, jnp.abs, jnp.abs, False, (0.0, _INF)),
    Kind("square", 1, jnp.square, jnp.square, True, (0.0, _INF)),
    Kind("exp", 1, jnp.exp, jnp.exp, True, (0.0, _INF)),
    Kind("maximum", 2, jnp.maximum, jnp.maximum, False, (-_INF, _INF)),
    Kind("product", 2, jnp.multiply, jnp.multiply, False, (-_INF, _INF)),
    Kind("rsqrt_mul", 2, _rsqrt_mul, _rsqrt_mul, False, (-_INF, _INF), _rsqrt_mul_above),
    Kind("divide", 2, jnp.divide, jnp.divide, False, (-_INF, _INF), _divide_above),
)}

UNARY_KINDS = tuple(name for name, k in KINDS.items() if k.arity == 1)
BINARY_KINDS = tuple(name for name, k in KINDS.items() if k.arity == 2)
SITE_KINDS = UNARY_KINDS + BINARY_KINDS


def get(kind: str) -> Kind:
    """The table row of ``kind``; a ValueError naming the supported kinds otherwise."""
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown neuron kind {kind!r}; supported: {', '.join(SITE_KINDS)}") from None


def ann_op(kind: str, options=()):
    """The ANN function of a site ``kind`` with its ``options`` (a dict or (key, value) pairs)."""
    return partial(get(kind).ann, **dict(options))


def target(kind: str, x, options: dict | None = None):
    """``phi`` of a unary neuron: the value its output estimate tracks."""
    row = get(kind)
    if row.arity != 1:
        raise ValueError(f"no unary neuron {kind!r}; supported: {', '.join(UNARY_KINDS)}")
    return row.target(x, **(options or {}))
