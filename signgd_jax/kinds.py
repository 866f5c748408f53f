"""The neuron kinds: one table row per nonlinearity a network may contain.

A row says everything the converter and the dynamics need to know about one kind:

* ``ann``: the ANN operation (what the model computes while training and in the ANN column);
* ``target``: ``phi``, the value the neuron's output estimate ``v`` tracks, as a function of the
  input estimates (for gelu ``x * sigmoid(1.702 x)``, the paper's approximation, whatever GELU
  form the ANN uses);
* ``above``: the spike decision ``H(v - phi(x))``, i.e. whether the estimate ``v`` lies above the
  target. It is written without dividing (``x1/sqrt(x2)`` compares ``sqrt(x2) v`` with ``x1``),
  and it holds the *tie rule*: relu, qcfs, square and exp fire when ``v == phi`` (``H(0) = 1``), every
  other kind only when ``v > phi`` (the reference implementation's rules);
* ``output_range``: the closed hull of ``phi``'s values, ``(low, high)``; a paper-mode estimate
  starts at 0 and moves at most ``eta0 / (1 - gamma)``, so targets outside ``[-3, 3]`` saturate.

Vector neurons (``elementwise=False``): the target of one output element depends on several
input elements, so the output need not be shaped like the inputs. One neuron per *output*
element; each keeps one output estimate and fires ``H(u_i - phi_i(x))`` with the same step
sizes as every other neuron, so their state is the size of the ANN's activation.

* ``softmax`` (option ``axis``, a tuple of negative axes): ``phi(x) = exp(x) / sum_axis exp(x)``,
  evaluated as ``jax.nn.softmax`` (max subtracted, so no overflow). Strict tie rule. Range
  ``[0, 1]``; each element sums to 1 with its row, and improved mode calibrates ``o``/``r`` per
  position from the ANN's softmax outputs like any other site.
* ``bilinear`` (option ``subscripts``, an explicit two-operand einsum such as
  ``"bqhd,bkhd->bhqk"``): ``phi(x1, x2) = einsum(subscripts, x1, x2)``, the contraction of two
  activations (attention scores ``q k^T``, attention-weighted values ``a v``). Its two inputs keep
  their own shapes (``own_shapes``: never broadcast to one shape); the first subscript letter
  is the batch axis, shared by both operands and the output: the interpreter moves the batch
  letter there when a program holds the batch elsewhere (``batch_first``;
  ``jax.nn.dot_product_attention`` does) and refuses a contraction mixing the samples of a
  batch. Strict tie rule; range unbounded, calibrated per output position in improved mode.
  The reference implementation instead makes one product neuron per (row, column, contracted
  index) and sums them: that state is ``rows x columns x contracted`` per head, which this
  neuron avoids.
* ``layer_norm`` (options ``axis`` (negative axes), ``epsilon``, ``normalized_scale``):
  ``phi(x) = (x - mean(x)) / sqrt(var(x) + eps)`` over ``axis``, LayerNorm's normalised vector
  (scale and shift are affine and stay outside). One state per element, where the elementwise
  decomposition has two (a square neuron and an ``x1/sqrt(x2)`` neuron). Strict tie rule;
  ``|phi_i| <= sqrt(n - 1)`` for ``n`` normalised elements (the table says unbounded because
  ``n`` is a property of the site), calibrated per position in improved mode. A LayerNorm
  (``signgd_jax.nn.LayerNorm``, or ``flax.linen.LayerNorm`` recognised) carries a number
  ``normalized_scale``: paper mode takes that site apart into the reference's square and
  ``x1/sqrt(x2)`` neurons (:mod:`signgd_jax.expand`); ``normalized_scale=None`` (written with
  ``signgd_jax.nn.normalize``) is a vector neuron in every mode.

* ``max_pool`` (options ``window_dimensions``, ``window_strides``, ``padding``: one entry per
  axis of the input, batch axis included, where they are ``1``, ``1``, ``(0, 0)``):
  ``phi(x) = lax.reduce_window(x, max)`` over each window (no dilation), padding filled with
  -1e9 (never wins). One neuron per *pooled output* element, where the chain of binary
  ``maximum`` neurons (one axis after the other) has one per element of every partial maximum
  and is as many neuron layers deep as the window has pooled axes (a 2x2 pool: two, a global
  max over ``n`` positions: ``n - 1``). Strict tie rule, like ``maximum``; range unbounded
  (the hull of the inputs' ranges), calibrated per position in improved mode. Max-pooling
  (``signgd_jax.nn.max_pool`` / ``reduce_window_max`` / ``reduce_max``, or ``flax.linen.max_pool``,
  ``lax.reduce_window`` max and ``jnp.max`` recognised) is one such site: paper mode and the
  ``if`` baseline take it apart into exactly that chain (:mod:`signgd_jax.expand`; the
  baseline's max of spikes needs ``maximum`` sites); ``chain=True`` writes the chain itself.

Paper mode (output estimates start at 0, reach at most ``eta0 / (1 - gamma)``) does not convert
vector neurons (``ELEMENTWISE_KINDS`` lists what it does): a network written with them is
refused there by the kinds' names; write the reference's decomposition with elementwise sites
(``signgd_jax.nn.product`` and sums, ``exp`` and ``divide``) to run it in paper mode.

Adding a kind means adding one row here (and a ``signgd_jax.nn`` function that binds it).
"""
from __future__ import annotations

import dataclasses
import math
import string
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
    elementwise: bool = True  # False: a vector neuron (an output element reads several inputs)
    own_shapes: bool = False  # inputs keep their own shapes (else broadcast to one shape)
    batched_options: Callable | None = None  # options -> options for inputs with a new leading axis
    check: Callable | None = None  # (options, input shapes) -> error text or None
    # (options, batch axis per input (None: static), input ndims) -> (options for inputs with
    # the batch moved to the front, axis to move per input, output batch axis); None: the
    # inputs share one shape and the output is shaped like them (signgd_jax.batch_axes)
    batch_first: Callable | None = None

    def above(self, value, inputs, options: dict, target: Callable | None = None):
        """``H(v - phi(x))`` as a boolean array, ``value`` in the units of ``phi``; ``target``
        replaces ``phi`` (improved mode tracks the ANN's own function, :attr:`ann`)."""
        if self.compare is not None:
            return self.compare(value, *inputs)
        goal = (target or self.target)(*inputs, **options)
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


def _qcfs(x, levels=8):
    """QCFS in threshold units: ``clip(floor(x * levels + 1/2) / levels, 0, 1)`` (the neuron's
    target: exact values, never differentiated)."""
    return jnp.clip(jnp.floor(x * levels + 0.5) / levels, 0.0, 1.0)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _qcfs_straight_through(x, levels):
    return _qcfs(x, levels)


@_qcfs_straight_through.defjvp
def _qcfs_straight_through_jvp(levels, primals, tangents):
    # The floor passes gradients straight through: the derivative of clip(x, 0, 1), 1 on the
    # closed interval [0, 1] (torch.clamp's rule, which the QCFS code differentiates).
    (x,), (dx,) = primals, tangents
    inside = (x >= 0) & (x <= 1)
    return _qcfs(x, levels), jnp.where(inside, dx, jnp.zeros_like(dx))


def _qcfs_ann(x, levels=8):
    """QCFS as the ANN computes it: the quantised values, with a straight-through gradient."""
    return _qcfs_straight_through(x, int(levels))


def _rsqrt_mul(x1, x2):
    return x1 * jax.lax.rsqrt(x2)


def _rsqrt_mul_above(value, x1, x2):
    # sqrt(x2) * v > x1 without dividing; where x2 <= 0 the neuron stays silent
    return (x2 > 0) & (jnp.sqrt(jnp.maximum(x2, 0)) * value - x1 > 0)


def _divide_above(value, x1, x2):
    return x2 * value - x1 > 0


def _softmax(x, axis=(-1,)):
    return jax.nn.softmax(x, axis=axis)


def _normalized(x, axis=(-1,), epsilon=1e-6, normalized_scale=None):
    del normalized_scale  # how paper mode takes the neuron apart (signgd_jax.expand); not its value
    centred = x - jnp.mean(x, axis=axis, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=axis, keepdims=True) + epsilon)


_NEVER_WINS = -1e9  # the padding of a max-pooling window (what the binary max chain pads with)


def _window_max(x, window_dimensions=(), window_strides=(), padding=()):
    """``lax.reduce_window`` max over windows of ``x`` (one size, stride and ``(low, high)``
    padding per axis, no dilation), the padding filled with -1e9 (never wins a max)."""
    padding = tuple(tuple(p) for p in padding)
    if any(p != (0, 0) for p in padding):
        x = jnp.pad(x, padding, constant_values=_NEVER_WINS)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, tuple(window_dimensions),
                                 tuple(window_strides), "VALID")


_WINDOW_OPTIONS = ("window_dimensions", "window_strides", "padding")


def _window_batched(options: dict) -> dict:
    """Window options for an input with one more leading axis (a window of 1 along it)."""
    return {**options, "window_dimensions": (1, *options["window_dimensions"]),
            "window_strides": (1, *options["window_strides"]), "padding": ((0, 0), *options["padding"])}


def _window_check(options: dict, shapes) -> str | None:
    (shape,) = shapes
    lengths = {len(options[k]) for k in _WINDOW_OPTIONS}
    if lengths != {len(shape)}:
        return (f"its window options {', '.join(f'{k}={options[k]!r}' for k in _WINDOW_OPTIONS)} do not give one "
                f"entry per axis of its input of shape {tuple(shape)}")
    if shape and (options["window_dimensions"][0], options["window_strides"][0], tuple(options["padding"][0])) \
            != (1, 1, (0, 0)):
        return "it pools along axis 0, which holds the batch: it would mix the samples of a batch"
    return None


def _window_batch_first(options: dict, axes, ndims):
    """max_pool on an input holding the batch at ``axes[0]``: the per-axis options permuted so
    that the batch comes first (the output keeps the input's layout). A window that is not
    ``1 / 1 / (0, 0)`` along the batch would mix samples: a ValueError."""
    (a,), (n,) = axes, ndims
    if a is None:
        return options, [None], None
    if any(len(options[k]) != n for k in _WINDOW_OPTIONS):
        raise ValueError(f"its window options do not give one entry per axis of its {n}-dimensional input")
    if (options["window_dimensions"][a], options["window_strides"][a], tuple(options["padding"][a])) != (1, 1, (0, 0)):
        raise ValueError(f"it pools along axis {a}, which holds the batch: it would mix the samples of a batch")
    order = [a] + [k for k in range(n) if k != a]
    return {**options, **{k: tuple(options[k][i] for i in order) for k in _WINDOW_OPTIONS}}, [a], a


def _bilinear(x1, x2, subscripts=""):
    return jnp.einsum(subscripts, x1, x2)


def _bilinear_batched(options: dict) -> dict:
    """Subscripts for operands and output with one more leading axis (a fresh letter)."""
    subscripts = options["subscripts"]
    fresh = next(c for c in string.ascii_letters if c not in subscripts)
    operands, output = subscripts.split("->")
    left, right = operands.split(",")
    return {**options, "subscripts": f"{fresh}{left},{fresh}{right}->{fresh}{output}"}


def _axis_batch_first(options: dict, axes, ndims):
    """softmax / layer_norm on an input holding the batch at ``axes[0]``: the negative ``axis``
    once the batch is moved to the front (axes before it shift by one); the output keeps the
    input's layout. Normalising along the batch would mix samples: a ValueError."""
    (a,), (n,) = axes, ndims
    if a is None:
        return options, [None], None
    if a in [k + n for k in options["axis"]]:
        raise ValueError(f"it normalises along axis {a}, which holds the batch: it would mix the samples of a batch")
    return {**options, "axis": tuple(sorted(k + 1 if k + n < a else k for k in options["axis"]))}, [a], a


def _bilinear_batch_first(options: dict, axes, ndims):
    """Bilinear subscripts with the batch letter (the one at each dynamic operand's batch axis)
    moved to the front of each operand holding it and of the output. Different letters, or a
    batch letter summed over, would mix samples: a ValueError."""
    operands, output = options["subscripts"].split("->")
    terms = operands.split(",")
    letters = {t[a] for t, a in zip(terms, axes) if a is not None}
    if len(letters) != 1:
        raise ValueError(f"the bilinear site {options['subscripts']!r} pairs the batch axis of one operand with "
                         "another axis of the other: it would mix the samples of a batch")
    (c,) = letters
    if output.count(c) != 1 or any(t.count(c) > 1 for t in terms):
        raise ValueError(f"the bilinear site {options['subscripts']!r} sums over or repeats the batch axis: "
                         "it would mix the samples of a batch")

    def first(t):
        return c + t.replace(c, "") if c in t else t

    moved = f"{first(terms[0])},{first(terms[1])}->{first(output)}"
    return {**options, "subscripts": moved}, [t.index(c) if c in t else None for t in terms], output.index(c)


def _bilinear_check(options: dict, shapes) -> str | None:
    operands, output = options["subscripts"].split("->")
    left, right = operands.split(",")
    if not (left and right and output) or not (left[0] == right[0] == output[0]):
        return (f"the bilinear site {options['subscripts']!r} does not keep the batch axis first in both "
                "operands and the output: it would mix the samples of a batch")
    return None


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
    Kind("qcfs", 1, _qcfs_ann, _qcfs, True, (0.0, 1.0)),
    Kind("maximum", 2, jnp.maximum, jnp.maximum, False, (-_INF, _INF)),
    Kind("product", 2, jnp.multiply, jnp.multiply, False, (-_INF, _INF)),
    Kind("rsqrt_mul", 2, _rsqrt_mul, _rsqrt_mul, False, (-_INF, _INF), _rsqrt_mul_above),
    Kind("divide", 2, jnp.divide, jnp.divide, False, (-_INF, _INF), _divide_above),
    Kind("softmax", 1, _softmax, _softmax, False, (0.0, 1.0), elementwise=False, batch_first=_axis_batch_first),
    Kind("layer_norm", 1, _normalized, _normalized, False, (-_INF, _INF), elementwise=False,
         batch_first=_axis_batch_first),
    Kind("max_pool", 1, _window_max, _window_max, False, (-_INF, _INF), elementwise=False,
         batched_options=_window_batched, check=_window_check, batch_first=_window_batch_first),
    Kind("bilinear", 2, _bilinear, _bilinear, False, (-_INF, _INF), elementwise=False, own_shapes=True,
         batched_options=_bilinear_batched, check=_bilinear_check, batch_first=_bilinear_batch_first),
)}

UNARY_KINDS = tuple(name for name, k in KINDS.items() if k.arity == 1)
BINARY_KINDS = tuple(name for name, k in KINDS.items() if k.arity == 2)
SITE_KINDS = UNARY_KINDS + BINARY_KINDS
ELEMENTWISE_KINDS = tuple(name for name, k in KINDS.items() if k.elementwise)
VECTOR_KINDS = tuple(name for name, k in KINDS.items() if not k.elementwise)


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
    """``phi`` of a single-input neuron: the value its output estimate tracks."""
    row = get(kind)
    if row.arity != 1:
        raise ValueError(f"no unary neuron {kind!r}; supported: {', '.join(UNARY_KINDS)}")
    return row.target(x, **(options or {}))
