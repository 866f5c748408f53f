"""Standard JAX/Flax operations recognised as the ``signgd_jax.nn`` sites they stand for.

A model written with plain ``flax.linen`` / ``flax.nnx`` / ``jax.nn`` operations converts
without importing ``signgd_jax``: the interpreter (:mod:`signgd_jax.interpret`) flattens the
traced program (calls inlined, scans unrolled) and this module replaces each recognised
operation by the ``signgd_jax.nn`` code it stands for, evaluated through the same interpreter.
So a recognised operation gives exactly the sites, in the same order and with the same inputs,
as the ``signgd_jax.nn`` version of the network: the same SNN.

Recognition works on what the program computes, never on module or function names (names can
lie; a user's function called ``gelu`` is not trusted), nor on how it is spelled: operand order
(``a * b`` / ``b * a``, ``jnp.multiply``, ``eps + var``), grouping (``0.5 * x * (...)`` either
way) and equivalent forms (``x / y`` / ``x * (1 / y)``, ``lax.rsqrt`` / ``1 / jnp.sqrt``) give the
same sites. Four kinds of rules, applied to operations whose operand depends on the network
input (*dynamic*):

* **Single primitives** (:func:`elementary`):
  ``max(x, 0)`` (``jax.nn.relu``, ``nn.relu``, ``jnp.maximum(x, 0)``) -> relu;
  ``max(x, c)`` with a constant ``c`` -> ``relu(x - c) + c``; ``min(x, c)`` -> ``c - relu(c - x)``
  (so ``jax.nn.relu6`` is two relu sites); ``max``/``min`` of two activations -> maximum;
  ``logistic`` (``jax.nn.sigmoid``) -> sigmoid; ``tanh`` -> tanh; ``exp`` -> exp; ``abs`` -> abs;
  ``square``, ``integer_pow[y=2]``, ``x ** 2.0`` and ``x * x`` (one operand used twice) -> square;
  ``a * b`` of two activations -> product; ``a / b`` with a dynamic denominator, ``1 / b``,
  ``jnp.reciprocal(b)`` and ``b ** -1`` -> divide; ``rsqrt(x)`` and ``x ** -0.5`` -> ``rsqrt_mul(1, x)``;
  ``reduce_window_max`` (``nn.max_pool``, ``lax.reduce_window`` with ``lax.max``; any window,
  stride and padding, no dilation) -> one ``max_pool`` site (``signgd_jax.nn.reduce_window_max``;
  paper mode and the ``if`` baseline take it apart into binary max neurons, one axis after the
  other, in axis order: for NHWC the height, then the width);
  ``reduce_max`` (``jnp.max`` over axes) -> the same site with whole axes as the window;
  ``dot_general`` of two activations (``jnp.einsum``, ``@``, ``jnp.matmul``, the two contractions
  of ``jax.nn.dot_product_attention`` and ``flax.linen.MultiHeadDotProductAttention``) -> one
  bilinear vector neuron with the equivalent einsum subscripts (batch axes, then the first
  operand's free axes, then the second's: ``dot_general``'s own output order).
* **Quotients** (:func:`_match_quotient`): a product with a reciprocal is the quotient it
  computes: ``a * (k / b)``, ``a * jnp.reciprocal(b)`` -> ``divide(k a, b)``;
  ``a * rsqrt(b)``, ``a / jnp.sqrt(b)``, ``a * (1 / jnp.sqrt(b))`` -> ``rsqrt_mul(a, b)``, one
  neuron (the reciprocal used only there).
* **Elementwise functions** (:func:`_match_function`), matched by *value*: the largest
  elementwise sub-program with a single dynamic input ``x`` and scalar constants (any
  arrangement of ``add``, ``mul``, ``div``, ``tanh``, ``erf``, ``logistic``, ``select_n``, ...,
  every intermediate value used only inside it) is evaluated in float64 on fixed probe points
  from -1e6 to 1e6 and compared with each function of :data:`FUNCTIONS` (traced from the
  installed JAX's own ``jax.nn`` in the program's dtype): ``jax.nn.gelu`` tanh form (however
  written: ``0.5 * x * (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))`` grouped either way, ``x**3``
  or ``x*x*x``) -> gelu ``approximate='tanh'``; the exact form (``jax.nn.gelu(approximate=False)``,
  ``0.5 x (1 + erf(x / sqrt 2))`` with ``jax.scipy.special.erf`` or ``lax.erf``,
  ``x * norm.cdf(x)``) -> gelu ``approximate='exact'``; ``x * sigmoid(1.702 x)`` -> gelu
  ``approximate='sigmoid'``; ``x * sigmoid(x)`` (``jax.nn.silu``, ``x / (1 + exp(-x))``) -> silu;
  ``1 / (1 + exp(-x))`` -> sigmoid; ``2 sigmoid(2x) - 1`` -> tanh; ``x if x >= 0 else a x``
  (``jax.nn.leaky_relu``, ``jnp.where``, ``jnp.maximum(x, a x)``; ``a`` a constant) -> leaky_relu
  ``negative_slope=a`` (relu for ``a = 0``: ``jnp.where(x > 0, x, 0)``, ``x * (x > 0)``; abs for
  ``a = -1``). The option is the ANN's own form: gelu's ``approximate`` says which GELU the network
  computes ('tanh', 'exact' for erf, 'sigmoid'). Where the dtype cannot tell two functions apart
  (bfloat16) the closest one is taken. The sub-program ending last is tried first, and for it the
  input nearest to its end, so a function applied to another's output is two functions.
* **Normalisation** (:func:`_match_normalisation`), anchored at ``rsqrt`` or ``sqrt`` of
  ``var + eps`` (either order) where ``var`` is ``mean((x - mean(x))**2)`` (``flax.linen.LayerNorm``
  with ``use_fast_variance=False``, ``jnp.var``), ``mean(x**2) - mean(x)**2`` with or without
  ``max(0, .)`` (its default fast-variance form, and ``nnx.LayerNorm``) or ``mean(x**2)``
  (``RMSNorm``), over the same axes, the ``rsqrt`` (or ``1/sqrt``) times constants (the scale)
  multiplying the centred ``x`` (``x`` for RMSNorm), or the centred ``x`` divided by the ``sqrt``.
  A LayerNorm becomes one ``layer_norm`` site on ``x`` over those axes, as
  ``signgd_jax.nn.LayerNorm`` writes it (a vector neuron in improved mode, the reference's
  decomposition in paper mode, :mod:`signgd_jax.expand`), then the constants; the fast-variance
  form is thus converted through the centred variance, which equals it in exact arithmetic. An
  RMSNorm becomes a square neuron on ``x``, the mean plus ``eps`` (linear), an ``x1/sqrt(x2)``
  neuron, then the constants.

* **Softmax** (:func:`_match_softmax`), anchored at the division of ``jax.nn.softmax`` (or the
  product with the reciprocal of the sum): ``e / broadcast(sum_axes(e))`` with ``e = exp(z)``
  becomes one softmax vector neuron on ``z`` along ``axes``; when
  ``z = x - broadcast(stop_gradient(max(-inf, max_axes(x))))`` (the overflow guard of
  ``jax.nn.softmax``; ``stop_gradient`` and ``max(-inf, .)`` optional) the guard is absorbed and
  the neuron reads ``x`` (the same value: softmax does not change when a constant along its axes
  is subtracted).

Operand order is read through one table, :data:`_COMMUTATIVE`: every structural rule tries both
orders of those operations. Dead code (operations the outputs do not depend on, without effects)
is skipped: it would make neurons nobody reads.

Everything else nonlinear on activations is refused by the interpreter with the primitive's
name and a hint (:data:`HINTS`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections import defaultdict
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from signgd_jax import nn as sgnn
from signgd_jax.program import flatten

SUPPORTED_TEXT = (
    "relu (jax.nn.relu, max(x, 0)), max/min with a constant or of two activations, jax.nn.gelu (tanh, exact; "
    "by hand too), x*sigmoid(1.702x), jax.nn.leaky_relu (constant slope), jax.nn.sigmoid, jnp.tanh, jax.nn.silu, "
    "jnp.abs, x*x, x**2, jnp.exp, products and quotients of activations (x/y, x*(1/y)), rsqrt and 1/sqrt, "
    "LayerNorm/RMSNorm (flax.linen, flax.nnx, jnp.var, by hand), max pooling (nn.max_pool, reduce_window max, "
    "jnp.max), jax.nn.softmax, einsum / @ / dot_general of two activations "
    "(attention: jax.nn.dot_product_attention, flax.linen.MultiHeadDotProductAttention)"
)
HINTS = {
    "erf": "only inside a GELU: jax.nn.gelu(approximate=False) or 0.5*x*(1+erf(x/sqrt(2)))",
    "erfc": "only inside a GELU: jax.nn.gelu(approximate=False)",
    "integer_pow": "only x**2 (square) and x**-1 (divide) have neurons; write higher powers as products",
    "pow": "only x**2 (square), x**-1 (divide) and x**-0.5 (rsqrt) have neurons",
    "sqrt": "only as a denominator: x / jnp.sqrt(y), 1 / jnp.sqrt(y) and lax.rsqrt(y) are x1/sqrt(x2) neurons",
    "select_n": "jnp.where on activations has no neuron (jax.nn.leaky_relu with a constant slope is recognised)",
    "log": "no neuron kind for log", "log1p": "no neuron kind for log1p", "expm1": "no neuron kind for expm1 (elu)",
    "sin": "no neuron kind for sin; a kind is one row of signgd_jax.kinds",
    "cos": "no neuron kind for cos; a kind is one row of signgd_jax.kinds",
    "reduce_window_max": "max pooling with dilation has no neuron decomposition",
    "argmax": "argmax of activations has no neuron", "sort": "sorting activations has no neuron",
}
for _cmp in ("gt", "ge", "lt", "le", "eq", "ne"):
    HINTS[_cmp] = "comparing activations has no neuron; use jax.nn.relu / jnp.maximum / jax.nn.leaky_relu"

# Operations whose two operands may come in either order. The structural rules below
# (normalisation, softmax, quotients) read the order of a product's or a max's operands only
# through :func:`_orders`, which tries both for these; sums are read as signed terms
# (:func:`_signed_terms`) and elementwise functions by their values, where order never enters.
_COMMUTATIVE = {"add", "add_any", "mul", "max", "min"}


@dataclasses.dataclass(frozen=True)
class Substitute:
    """Evaluate ``fn(*values of ins)`` (``signgd_jax.nn`` code) in place of one operation."""

    ins: tuple
    fn: Callable
    label: str


@dataclasses.dataclass
class Plan:
    """Operations to skip (absorbed into a match) and substitutes keyed by operation position."""

    skip: set = dataclasses.field(default_factory=set)
    substitutes: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- program graph
def _uniform(value):
    """The one number of an array whose elements are all equal (at most 4096), else None."""
    try:
        a = np.asarray(value)
        if a.size == 0 or a.size > 4096 or not (a.dtype.kind in "biu" or jnp.issubdtype(a.dtype, jnp.floating)):
            return None
        flat = a.reshape(-1).astype(np.float64)
        return float(flat[0]) if np.all(flat == flat[0]) else None
    except Exception:  # noqa: BLE001 - a tracer or an odd dtype: not a known constant
        return None


class _Graph:
    def __init__(self, program, flags):
        self.ops, self.flags = program.ops, flags
        self.consts = getattr(program, "consts", {})
        self.producer = {r: (i, k) for i, op in enumerate(program.ops) for k, r in enumerate(op.outs)}
        self.uses = defaultdict(list)
        for i, op in enumerate(program.ops):
            for r in op.ins:
                if not isinstance(r, Literal):
                    self.uses[r].append(i)
        for r in program.outvars:
            if not isinstance(r, Literal):
                self.uses[r].append(-1)
        # live operations: those the outputs depend on, or with effects (the plan skips the
        # others, so a dead one's use of a value does not keep it from being absorbed into a match)
        self.live, needed = set(), {r for r in program.outvars if not isinstance(r, Literal)}
        for i in range(len(program.ops) - 1, -1, -1):
            op = program.ops[i]
            if any(r in needed for r in op.outs) or (op.eqn is not None and op.eqn.effects):
                self.live.add(i)
                needed.update(r for r in op.ins if not isinstance(r, Literal))
        self._scalars = {}

    def live_uses(self, r) -> list:
        """Positions of the live operations reading ``r`` (-1: a program output)."""
        return [u for u in self.uses.get(r, []) if u < 0 or u in self.live]

    def dynamic(self, r) -> bool:
        return not isinstance(r, Literal) and bool(self.flags.get(r, False))

    def op(self, r, *names):
        """``(position, op)`` producing ``r`` (first output), if it is one of ``names``."""
        if isinstance(r, Literal) or r not in self.producer:
            return None
        i, k = self.producer[r]
        op = self.ops[i]
        if op.eqn is None or k != 0 or (names and op.name not in names):
            return None
        return i, op

    def aval(self, r):
        """The abstract value of ``r`` (from its producer, or from an operation reading it)."""
        if isinstance(r, Literal):
            return r.aval
        i, k = self.producer.get(r, (None, None))
        if i is not None and self.ops[i].eqn is not None:
            return self.ops[i].eqn.outvars[k].aval
        for u in self.uses.get(r, []):
            op = self.ops[u] if u >= 0 else None
            if op is not None and op.eqn is not None:
                for var, ref in zip(op.eqn.invars, op.ins):
                    if not isinstance(ref, Literal) and ref == r:
                        return var.aval
        return None

    def shape(self, r):
        if isinstance(r, Literal):
            return tuple(np.shape(r.val))
        aval = self.aval(r)
        return None if aval is None else tuple(aval.shape)

    def scalar(self, r, depth: int = 0):
        """The value of ``r`` when it is a constant of the program with all elements equal (a
        literal, a closed-over constant, or shape and elementwise operations of such), else None."""
        if isinstance(r, Literal):
            return _uniform(r.val)
        if r in self._scalars:
            return self._scalars[r]
        value = None
        if r in self.consts:
            value = _uniform(self.consts[r])
        elif not self.dynamic(r) and depth < 24 and (found := self.op(r)) is not None:
            op = found[1]
            ins = [self.scalar(a, depth + 1) for a in op.ins]
            if ins and all(v is not None for v in ins):
                if op.name in _PASS_THROUGH and len(ins) == 1:
                    value = ins[0]
                elif op.name in _F64 and len(op.outs) == 1:
                    value = _uniform(_apply_f64(op, [np.float64(v) for v in ins]))
        self._scalars[r] = value
        return value


def _scalar_literal(r):
    if isinstance(r, Literal) and np.ndim(r.val) == 0:
        try:
            return float(r.val)
        except (TypeError, ValueError):
            return None
    return None


def _orders(op):
    """The operand orders under which ``op`` computes the same value (both for :data:`_COMMUTATIVE`)."""
    ins = tuple(op.ins)
    if op.name in _COMMUTATIVE and len(ins) == 2:
        return ins, ins[::-1]
    return (ins,)


def _is_zero(g: _Graph, r) -> bool:
    """A constant zero: a literal 0, or broadcasts / reshapes of one."""
    return g.scalar(r) == 0.0


_SHAPE_OPS = ("broadcast_in_dim", "reshape", "expand_dims", "squeeze", "convert_element_type")
_PASS_THROUGH = _SHAPE_OPS + ("copy", "copy_p", "reduce_precision")


def _strip(g: _Graph, r, path: list):
    """Follows shape-only operations back from ``r``; appends their positions to ``path``."""
    while (found := g.op(r, *_SHAPE_OPS)) is not None and len(found[1].ins) == 1:
        path.append(found[0])
        r = found[1].ins[0]
    return r


def _through(g: _Graph, r, path: list):
    """Like :func:`_strip`, and also through copies and ``select_n`` with a constant predicate
    (``jnp.var``'s guard against ``n <= ddof``)."""
    while True:
        found = g.op(r, *_PASS_THROUGH, "select_n")
        if found is None:
            return r
        i, op = found
        if op.name == "select_n":
            pick = g.scalar(op.ins[0])
            if pick is None or not 0 <= int(pick) < len(op.ins) - 1:
                return r
            r = op.ins[1 + int(pick)]
        elif len(op.ins) == 1:
            r = op.ins[0]
        else:
            return r
        path.append(i)


def _square_of(g: _Graph, r, path: list):
    """``z`` when ``r`` is ``z**2`` (``square``, ``integer_pow``, ``pow`` by 2, ``z * z``)."""
    local = []
    r = _through(g, r, local)
    found = g.op(r, "square", "integer_pow", "mul", "pow")
    if found is None:
        return None
    i, op = found
    if op.name == "integer_pow" and op.eqn.params.get("y") != 2:
        return None
    if op.name == "pow" and g.scalar(op.ins[1]) != 2.0:
        return None
    if op.name == "mul" and op.ins[0] != op.ins[1]:
        return None
    path += local + [i]
    return op.ins[0]


def _mean_of(g: _Graph, r, path: list):
    """``(z, axes)`` when ``r = reduce_sum(z, axes) / n`` (or ``* (1/n)``) with ``n`` the number of
    summed elements; keepdims reshapes and broadcasts on either side."""
    local = []
    r = _through(g, r, local)
    found = g.op(r, "div", "mul")
    if found is None:
        return None
    i, op = found
    for a, b in _orders(op):
        factor = g.scalar(b)
        if factor is None or not g.dynamic(a):
            continue
        inner = []
        summed = g.op(_through(g, a, inner), "reduce_sum")
        if summed is None:
            continue
        z = summed[1].ins[0]
        axes = tuple(sorted(summed[1].eqn.params["axes"]))
        shape = tuple(summed[1].eqn.invars[0].aval.shape)
        count = float(np.prod([shape[ax] for ax in axes]))
        expected = count if op.name == "div" else 1.0 / count
        if not np.isclose(factor, expected, rtol=1e-5):
            continue
        path += local + [i] + inner + [summed[0]]
        return z, axes
    return None


def _same_mean(g: _Graph, m1, m2) -> bool:
    """Two references to the mean of one value over the same axes (the same operation, or two)."""
    a, b = _through(g, m1, []), _through(g, m2, [])
    if a == b:
        return True
    first, second = _mean_of(g, a, []), _mean_of(g, b, [])
    return first is not None and first == second


# ----------------------------------------------------------------------------- normalisation
def _signed_terms(g: _Graph, r, sign: float, terms: list, path: list, depth: int = 0):
    """``r`` as a sum of signed terms (through ``add``, ``sub``, ``neg`` and shape operations of
    dynamic values, whatever their order and grouping): ``(sign, reference)`` appended to ``terms``,
    the positions of the sums to ``path``."""
    local = []
    inner = _through(g, r, local)
    found = g.op(inner, "add", "add_any", "sub", "neg") if g.dynamic(inner) and depth < 16 else None
    if found is None:
        terms.append((sign, r))
        return
    i, op = found
    path += local + [i]
    signs = {"add": (1, 1), "add_any": (1, 1), "sub": (1, -1), "neg": (-1,)}[op.name]
    for operand, s in zip(op.ins, signs):
        _signed_terms(g, operand, sign * s, terms, path, depth + 1)


def _fast_variance(g: _Graph, mean_square, square_mean, path: list):
    """``(x, axes, mean)`` when ``mean_square - square_mean`` is ``mean(x**2) - mean(x)**2``."""
    sub_path = []
    found = _mean_of(g, mean_square, sub_path)
    mean = _square_of(g, square_mean, sub_path)
    if found is None or mean is None:
        return None
    x = _square_of(g, found[0], sub_path)
    first = _mean_of(g, mean, [])  # the mean itself stays (it may also centre x)
    if x is None or first is None or first != (x, found[1]):
        return None
    path += sub_path
    return x, found[1], mean


def _variance_source(g: _Graph, v, path: list):
    """``(form, x, axes, mean)`` of a variance value ``v``; form 'layer' (centred) or 'rms'."""
    local = []
    v = _through(g, v, local)
    clamp = g.op(v, "max")
    if clamp is not None:  # max(0, .): the fast form's guard against rounding below zero
        for a, b in _orders(clamp[1]):
            if _is_zero(g, b) and g.dynamic(a):
                local.append(clamp[0])
                v = _through(g, a, local)
                break
        else:
            return None
    terms, sum_path = [], []
    _signed_terms(g, v, 1.0, terms, sum_path)
    if len(terms) == 2:  # fast form: mean(x**2) - mean(x)**2
        (s1, p), (s2, q) = sorted(terms, key=lambda t: -t[0])
        fast_path = local + sum_path
        found = _fast_variance(g, p, q, fast_path) if (s1, s2) == (1.0, -1.0) else None
        if found is None:
            return None
        path += fast_path
        return ("layer", *found)
    sub_path = list(local)
    mean_sq = _mean_of(g, v, sub_path)
    if mean_sq is None:
        return None
    z = _square_of(g, mean_sq[0], sub_path)
    if z is None:
        return None
    centred = g.op(_through(g, z, []), "sub")
    if centred is not None:
        x, centre = centred[1].ins
        if _mean_of(g, centre, []) == (x, mean_sq[1]):
            path += sub_path
            return "layer", x, mean_sq[1], centre
    path += sub_path
    return "rms", z, mean_sq[1], None


def _is_centred(g: _Graph, c, x, mean) -> bool:
    found = g.op(_through(g, c, []), "sub")
    return found is not None and found[1].ins[0] == x and _same_mean(g, found[1].ins[1], mean)


def _peel_factors(g: _Graph, c, factors: list):
    """``c`` without constant factors ``k * c`` / ``c / k`` (appended to ``factors``)."""
    while (found := g.op(c, "mul", "div")) is not None:
        op = found[1]
        if op.name == "div":
            num, den = op.ins
            if g.dynamic(num) and not g.dynamic(den):
                factors.append((den, -1))
                c = num
                continue
            break
        for a, b in _orders(op):
            if g.dynamic(a) and not g.dynamic(b):
                factors.append((b, 1))
                c = a
                break
        else:
            break
    return c


def _normalisation_argument(g: _Graph, root):
    """The argument of the ``rsqrt`` / ``sqrt`` ``root``: var + eps, in any order and grouping
    (``eps + mean(x**2) - mean(x)**2``); ``((form, x, axes, mean), eps, path)`` or None."""
    terms, path = [], []
    _signed_terms(g, root.ins[0], 1.0, terms, path)
    constants = [(s, g.scalar(r)) for s, r in terms]
    eps = sum(s * v for s, v in constants if v is not None)
    dynamic = [(s, r) for (s, r), (_, v) in zip(terms, constants) if v is None]
    if len(dynamic) == 1 and dynamic[0][0] > 0:
        source = _variance_source(g, dynamic[0][1], path)
    elif len(dynamic) == 2 and sorted(s for s, _ in dynamic) == [-1.0, 1.0]:
        (_, p), (_, q) = sorted(dynamic, key=lambda t: -t[0])
        found = _fast_variance(g, p, q, path)
        source = None if found is None else ("layer", *found)
    else:
        return None
    if source is None or not np.isfinite(eps) or eps < 0:
        return None
    return source, eps, path


def _normalised_operand(g: _Graph, root, position: int):
    """Forward from the ``rsqrt`` / ``sqrt`` ``root`` at ``position``: constant factors times
    rsqrt(.) ... meeting the normalised operand c as c * r (r ~ 1/sqrt) or c / r (r ~ sqrt);
    ``(c, factors, chain)`` (``factors``: ``(ref, power)``; ``chain``: the positions walked,
    ending at the one that meets c) or None."""
    inverse = _root(g, root.outs[0])[2]
    factors, r, chain = [], root.outs[0], [position]
    while True:
        users = g.live_uses(r)
        if len(users) != 1 or users[0] < 0:
            return None
        j = users[0]
        op = g.ops[j]
        if op.eqn is None or len(op.outs) != 1:
            return None
        chain.append(j)
        r_next = op.outs[0]
        if op.name in _PASS_THROUGH and len(op.ins) == 1:
            r = r_next
            continue
        if op.name == "integer_pow" and op.eqn.params.get("y") == -1:
            factors, inverse, r = [(f, -e) for f, e in factors], not inverse, r_next
            continue
        if op.name == "mul":
            other = next((b for a, b in _orders(op) if a == r), None)
            if other is None:
                return None
            if not g.dynamic(other):
                factors.append((other, 1))
                r = r_next
                continue
            if not inverse:
                return None
            return other, factors, chain
        if op.name == "div":
            num, den = op.ins
            if num == r and den != r and not g.dynamic(den):
                factors.append((den, -1))
                r = r_next
                continue
            if den == r and num != r:
                if not g.dynamic(num):
                    factors = [(f, -e) for f, e in factors] + [(num, 1)]
                    inverse, r = not inverse, r_next
                    continue
                if inverse:
                    return None
                return num, factors, chain
        return None


def _match_normalisation(g: _Graph, position: int):
    """Matches LayerNorm / RMSNorm at the ``rsqrt`` / ``sqrt`` at ``position``;
    ``(anchor, skip, Substitute)``."""
    root = g.ops[position]
    argument = _normalisation_argument(g, root)
    if argument is None:
        return None
    (form, x, axes, mean), eps, path = argument
    operand = _normalised_operand(g, root, position)
    if operand is None:
        return None
    c, factors, chain = operand
    c = _peel_factors(g, c, factors)
    if form == "layer" and not _is_centred(g, c, x, mean):
        return None
    if form == "rms":
        centred = g.op(c, "sub")
        if not (c == x or (centred is not None and centred[1].ins[0] == x and _is_zero(g, centred[1].ins[1]))):
            return None
    anchor = chain[-1]
    skip = set(path) | set(chain[:-1])
    if not _used_inside(g, skip | {anchor}, anchor):
        return None
    refs = tuple(f for f, _ in factors)
    powers = tuple(e for _, e in factors)
    epsilon = float(str(np.float32(eps)))  # 1e-6, not 9.99e-7
    if form == "layer":  # one layer_norm site on x (the dynamics decides how to convert it)
        fn = functools.partial(_layer_normalise, tuple(axes), epsilon, powers)
        return anchor, skip, Substitute((x, *refs), fn, "LayerNorm")
    fn = functools.partial(_rms_normalise, tuple(axes), eps, powers)
    return anchor, skip, Substitute((x, *refs), fn, "RMSNorm")


def _scaled(y, powers, scales):
    for s, e in zip(scales, powers):
        y = y * s if e > 0 else y / s
    return y


def _layer_normalise(axes, epsilon, powers, x_value, *scales):
    ndim = len(np.shape(x_value))
    y = sgnn.site("layer_norm", x_value, axis=tuple(sorted(int(a) - ndim for a in axes)),
                  epsilon=epsilon, normalized_scale=1.0)
    return _scaled(y, powers, scales)


def _rms_normalise(axes, eps, powers, x_value, *scales):
    variance = jnp.mean(sgnn.square(x_value), axis=axes, keepdims=True) + eps
    return _scaled(sgnn.rsqrt_mul(x_value, variance), powers, scales)


# ----------------------------------------------------------------------------- softmax
def _kept_dims(ndim: int, axes) -> tuple:
    return tuple(i for i in range(ndim) if i not in axes)


def _reduced_along(g: _Graph, r, axes, ndim: int, reducer: str, path: list, guards=()):
    """The operand ``x`` when ``r`` is ``reduce(x, axes)`` broadcast back to ``x``'s shape (through
    ``keepdims`` reshapes and ``broadcast_in_dim``; ``guards``: pass-through operations such as
    ``stop_gradient``, ``max(-inf, .)`` or one ``transpose`` of the reduced value, for
    ``x = transpose(y)`` reduced as ``y``: ``jax.nn.dot_product_attention``); positions appended
    to ``path``. None otherwise."""
    local, perm = [], None
    while True:
        found = g.op(r, "broadcast_in_dim", "reshape", "expand_dims", "convert_element_type", *guards)
        if found is None:
            break
        i, op = found
        name = op.name
        if name == "transpose":
            if perm is not None or len(op.eqn.params["permutation"]) != ndim - len(axes):
                return None
            perm, r = tuple(op.eqn.params["permutation"]), op.ins[0]
        elif name == "broadcast_in_dim":
            operand = tuple(op.eqn.invars[0].aval.shape)
            dims = tuple(op.eqn.params["broadcast_dimensions"])
            if not (len(operand) == ndim - len(axes) and dims == _kept_dims(ndim, axes)
                    or len(operand) == ndim and dims == tuple(range(ndim)) and all(operand[a] == 1 for a in axes)):
                return None
            r = op.ins[0]
        elif name in ("reshape", "expand_dims"):
            out = tuple(op.eqn.outvars[0].aval.shape)
            if len(out) != ndim or any(out[a] != 1 for a in axes):
                return None
            r = op.ins[0]
        elif name == "max":
            guarded = next((a for a, b in _orders(op) if g.scalar(b) == -np.inf), None)
            if guarded is None:
                return None
            r = guarded
        else:  # convert_element_type, stop_gradient
            r = op.ins[0]
        local.append(i)
    found = g.op(r, reducer)
    if found is None:
        return None
    reduced, x = tuple(sorted(found[1].eqn.params["axes"])), found[1].ins[0]
    if perm is not None:
        x = _transposed_source(g, x, reduced, axes, perm, ndim)
    elif reduced != tuple(sorted(axes)):
        return None
    path += local + [found[0]]
    return x


def _transposed_source(g: _Graph, y, reduced, axes, perm, ndim):
    """``x = transpose(y, P)`` whose reduction along ``axes`` is ``transpose(reduce(y, reduced), perm)``."""
    kept_x = [k for k in range(ndim) if k not in axes]
    for u in g.uses.get(y, []):
        op = g.ops[u] if u >= 0 else None
        if op is None or op.eqn is None or op.name != "transpose":
            continue
        p = tuple(op.eqn.params["permutation"])
        kept_y = [d for d in range(ndim) if d not in reduced]
        if (len(p) == ndim and sorted(p[k] for k in axes) == list(reduced)
                and perm == tuple(kept_y.index(p[k]) for k in kept_x)):
            return op.outs[0]
    return None


def _reciprocal(g: _Graph, r, path: list):
    """``(k, y)`` when ``r = k / y`` with a static ``k`` (``1 / y``, ``jnp.reciprocal(y)``,
    ``y ** -1``: ``k`` None) and a dynamic ``y``; positions appended to ``path``."""
    found = g.op(r, "div", "integer_pow", "pow")
    if found is None:
        return None
    i, op = found
    if op.name == "div":
        k, y = op.ins
        if g.dynamic(k) or not g.dynamic(y):
            return None
        path.append(i)
        return (None if g.scalar(k) == 1.0 else k), y
    if op.name == "integer_pow" and op.eqn.params.get("y") != -1:
        return None
    if op.name == "pow" and g.scalar(op.ins[1]) != -1.0:
        return None
    if not g.dynamic(op.ins[0]):
        return None
    path.append(i)
    return None, op.ins[0]


def _match_softmax(g: _Graph, position: int):
    """Matches ``exp(z) / sum(exp(z))`` (or ``exp(z) * (1 / sum(exp(z)))``) at the ``div`` /
    ``mul`` at ``position``: ``(skip, Substitute)``."""
    op = g.ops[position]
    path = []
    if op.name == "div":
        numerator, denominator = op.ins
    else:
        for numerator, other in _orders(op):
            local = []
            found = _reciprocal(g, other, local) if g.op(numerator, "exp") is not None else None
            if found is not None and found[0] is None:
                denominator, path = found[1], local
                break
        else:
            return None
    e = g.op(numerator, "exp")
    if e is None or not g.dynamic(numerator):
        return None
    ndim = len(op.eqn.outvars[0].aval.shape)
    summed = g.op(_strip(g, denominator, []), "reduce_sum")
    if summed is None or ndim == 0:
        return None
    axes = tuple(sorted(summed[1].eqn.params["axes"]))
    summand = _reduced_along(g, denominator, axes, ndim, "reduce_sum", path)
    if summand is None:
        return None
    if not _same_value(g, numerator, summand, path):  # exp(z) may be written twice
        return None
    path.append(e[0])
    z = e[1].ins[0]
    shifted = g.op(z, "sub")
    if shifted is not None:
        guard_path = [shifted[0]]
        x, shift = shifted[1].ins
        if _reduced_along(g, shift, axes, ndim, "reduce_max", guard_path, ("stop_gradient", "max", "transpose")) == x:
            if _used_inside(g, set(path) | set(guard_path) | {position}, position):
                path += guard_path
                z = x
    skip = set(path)
    if not _used_inside(g, skip | {position}, position):
        return None
    negative = tuple(int(a) - ndim for a in axes)
    return skip, Substitute((z,), functools.partial(_softmax_site, negative), "jax.nn.softmax")


def _softmax_site(axes, x):
    return sgnn.softmax(x, axis=axes)


_IGNORED_PARAMS = {"sharding", "out_sharding", "accuracy"}


def _params_equal(a, b) -> bool:
    pa = {k: v for k, v in a.eqn.params.items() if k not in _IGNORED_PARAMS}
    pb = {k: v for k, v in b.eqn.params.items() if k not in _IGNORED_PARAMS}
    try:
        return bool(pa == pb)
    except Exception:  # noqa: BLE001 - incomparable parameters do not match
        return False


def _same_value(g: _Graph, a, b, path: list, depth: int = 0) -> bool:
    """Whether ``b`` is ``a`` or computes it again (the same operations, parameters and operands);
    the positions of ``b``'s own operations are appended to ``path``."""
    if isinstance(a, Literal) or isinstance(b, Literal):
        return g.scalar(a) is not None and g.scalar(a) == g.scalar(b)
    if a == b:
        return True
    fa, fb = g.op(a), g.op(b)
    if fa is None or fb is None or depth > 8:
        return False
    (_, op_a), (i, op_b) = fa, fb
    if op_a.name != op_b.name or len(op_a.ins) != len(op_b.ins) or len(op_b.outs) != 1 or not _params_equal(op_a, op_b):
        return False
    local = [i]
    if not all(_same_value(g, x, y, local, depth + 1) for x, y in zip(op_a.ins, op_b.ins)):
        return False
    path += local
    return True


# ----------------------------------------------------------------------------- quotients
def _root(g: _Graph, r):
    """``(position, u, inverse)`` when ``r`` is ``sqrt(u)`` / ``u ** 0.5`` (``inverse`` False) or
    ``rsqrt(u)`` / ``u ** -0.5`` (True) of a dynamic ``u``; else None."""
    found = g.op(r, "sqrt", "rsqrt", "pow")
    if found is None or not g.dynamic(found[1].ins[0]):
        return None
    i, op = found
    if op.name == "pow":
        exponent = g.scalar(op.ins[1])
        if exponent not in (0.5, -0.5) or g.dynamic(op.ins[1]):
            return None
        return i, op.ins[0], exponent < 0
    return i, op.ins[0], op.name == "rsqrt"


def _match_quotient(g: _Graph, position: int):
    """``a * (k / b)``, ``a * rsqrt(b)``, ``a / sqrt(b)``, ``k / sqrt(b)``, ``1 / sqrt(b)`` at
    ``position`` (the reciprocal or root used only there): ``(skip, Substitute)``."""
    op = g.ops[position]
    found = None
    if op.name == "div":  # a / sqrt(b)
        num, den = op.ins
        root = _root(g, den)
        if root is not None and not root[2]:
            found = {root[0]}, (num, root[1]), "rsqrt_mul"
    elif op.name in ("integer_pow", "pow"):  # jnp.reciprocal(jnp.sqrt(b)), sqrt(b) ** -1
        path = []
        reciprocal = _reciprocal(g, op.outs[0], path)
        root = None if reciprocal is None else _root(g, reciprocal[1])
        if root is not None and not root[2] and _used_inside(g, {root[0], position}, position):
            return {root[0]}, Substitute((root[1],), _rsqrt_site, "rsqrt_mul")
    elif op.name == "mul" and all(g.dynamic(r) for r in op.ins) and op.ins[0] != op.ins[1]:
        for a, b in _orders(op):
            root = _root(g, b)
            if root is not None and root[2]:  # a * rsqrt(b)
                found = {root[0]}, (a, root[1]), "rsqrt_mul"
                break
            path = []
            reciprocal = _reciprocal(g, b, path)
            if reciprocal is None:
                continue
            k, y = reciprocal
            kind, root = "divide", _root(g, y)
            if root is not None and not root[2]:  # a * (k / sqrt(b))
                path.append(root[0])
                kind, y = "rsqrt_mul", root[1]
            found = set(path), (a, y) + ((k,) if k is not None else ()), kind
            break
    if found is None:
        return None
    skip, ins, kind = found
    if not _used_inside(g, skip | {position}, position):
        return None
    site = sgnn.rsqrt_mul if kind == "rsqrt_mul" else sgnn.divide
    return skip, Substitute(ins, functools.partial(_quotient_site, site), kind)


def _quotient_site(site, a, b, *k):
    return site(a * k[0] if k else a, b)


# ----------------------------------------------------------------------------- elementwise functions
def _select(pred, *cases):
    index = np.asarray(pred).astype(np.int64)
    shape = np.broadcast_shapes(index.shape, *[np.shape(c) for c in cases])
    return np.choose(np.broadcast_to(index, shape), [np.broadcast_to(c, shape) for c in cases])


def _convert(params, v):
    dtype = np.dtype(params["new_dtype"])
    if dtype == bool:
        return np.asarray(v) != 0
    if dtype.kind in "iu":
        return np.trunc(v)
    return np.asarray(v, np.float64)


_ERF, _ERFC = np.vectorize(math.erf, otypes=[np.float64]), np.vectorize(math.erfc, otypes=[np.float64])
# float64 evaluation of the elementwise primitives an elementwise function may be written with
_F64 = {
    "add": lambda p, a, b: a + b, "add_any": lambda p, a, b: a + b, "sub": lambda p, a, b: a - b,
    "mul": lambda p, a, b: a * b, "div": lambda p, a, b: a / b, "neg": lambda p, a: -a,
    "max": lambda p, a, b: np.maximum(a, b), "min": lambda p, a, b: np.minimum(a, b),
    "abs": lambda p, a: np.abs(a), "sign": lambda p, a: np.sign(a),
    "exp": lambda p, a: np.exp(a), "exp2": lambda p, a: np.exp2(a), "expm1": lambda p, a: np.expm1(a),
    "log": lambda p, a: np.log(a), "log1p": lambda p, a: np.log1p(a),
    "tanh": lambda p, a: np.tanh(a), "logistic": lambda p, a: 0.5 + 0.5 * np.tanh(0.5 * np.asarray(a)),
    "erf": lambda p, a: _ERF(a), "erfc": lambda p, a: _ERFC(a),
    "sqrt": lambda p, a: np.sqrt(a), "rsqrt": lambda p, a: 1.0 / np.sqrt(a), "cbrt": lambda p, a: np.cbrt(a),
    "square": lambda p, a: a * a, "integer_pow": lambda p, a: a ** p["y"], "pow": lambda p, a, b: np.power(a, b),
    "select_n": lambda p, *a: _select(*a),
    "ge": lambda p, a, b: a >= b, "gt": lambda p, a, b: a > b, "le": lambda p, a, b: a <= b,
    "lt": lambda p, a, b: a < b, "eq": lambda p, a, b: a == b, "ne": lambda p, a, b: a != b,
    "and": lambda p, a, b: np.logical_and(a, b), "or": lambda p, a, b: np.logical_or(a, b),
    "not": lambda p, a: np.logical_not(a), "convert_element_type": _convert,
    "copy": lambda p, a: a, "copy_p": lambda p, a: a, "reduce_precision": lambda p, a: a,
    "clamp": lambda p, lo, a, hi: np.clip(a, lo, hi),
}
# what makes a sub-program nonlinear (else it is affine and no function of FUNCTIONS)
_NONLINEAR = set(_F64) - {"add", "add_any", "sub", "neg", "mul", "div", "convert_element_type", "copy", "copy_p",
                          "reduce_precision"}


def _apply_f64(op, args):
    with np.errstate(all="ignore"):
        return _F64[op.name](op.eqn.params, *args)


@dataclasses.dataclass(frozen=True)
class Function:
    """An elementwise function recognised by its values; ``site(x)``: its ``signgd_jax.nn`` code."""

    label: str
    reference: Callable
    site: Callable


FUNCTIONS = (
    Function("jax.nn.gelu(approximate=True)", lambda x: jax.nn.gelu(x, approximate=True),
             functools.partial(sgnn.gelu, approximate="tanh")),
    Function("jax.nn.gelu(approximate=False)", lambda x: jax.nn.gelu(x, approximate=False),
             functools.partial(sgnn.gelu, approximate="exact")),
    Function("x * sigmoid(1.702 x)", lambda x: x * jax.nn.sigmoid(1.702 * x),
             functools.partial(sgnn.gelu, approximate="sigmoid")),
    Function("jax.nn.silu", jax.nn.silu, sgnn.silu),
    Function("jax.nn.sigmoid", jax.nn.sigmoid, sgnn.sigmoid),
    Function("jnp.tanh", jnp.tanh, sgnn.tanh),
    Function("jnp.square", jnp.square, sgnn.square),
)
# Probe points: -1 and 1 first (the slope of a leaky relu), then every scale from 1e-3 to 1e6,
# so that a clamp or a kink anywhere a network's activations can reach is seen.
_PROBES = np.concatenate([[-1.0, 1.0, 0.0], np.linspace(-8.0, 8.0, 81), np.geomspace(1e-3, 1e6, 28),
                          -np.geomspace(1e-3, 1e6, 28)])
_CONE_LIMIT = 48  # operations in one elementwise function (a hand-written GELU has about 16)


def _evaluate(g: _Graph, cone, x_ref, out_ref, probes):
    """The float64 values of ``out_ref`` when ``x_ref`` takes the values ``probes``."""
    env = {x_ref: probes}
    with np.errstate(all="ignore"):
        for i in sorted(cone):
            op = g.ops[i]
            args = [env[a] if not isinstance(a, Literal) and a in env else np.float64(g.scalar(a)) for a in op.ins]
            env[op.outs[0]] = np.asarray(_apply_f64(op, args))
    return np.broadcast_to(env[out_ref], probes.shape).astype(np.float64)


@functools.lru_cache(maxsize=None)
def _reference_values(dtype_name: str):
    """Each function of :data:`FUNCTIONS` at the probe points, as the installed JAX writes it in
    this dtype (its constants rounded as the model's are), evaluated in float64."""

    values = []
    for function in FUNCTIONS:
        closed = jax.make_jaxpr(function.reference)(jax.ShapeDtypeStruct((3,), jnp.dtype(dtype_name)))
        program = flatten(closed)
        g = _Graph(program, {program.invars[0]: True})
        values.append(_evaluate(g, set(range(len(program.ops))), program.invars[0], program.outvars[0], _PROBES))
    return tuple(values)


def _distance(values, reference) -> float:
    """Largest ``|values - reference| / (1 + |reference|)`` (equal infinities agree); infinite
    where either is NaN."""
    if np.isnan(values).any() or np.isnan(reference).any():
        return np.inf
    with np.errstate(all="ignore"):
        err = np.abs(values - reference) / (1.0 + np.abs(reference))
        err = np.where(np.isinf(values) & (values == reference), 0.0, np.where(np.isnan(err), np.inf, err))
    return float(err.max())


def _closest_function(values, dtype):
    """``(label, site)`` of the function of :data:`FUNCTIONS` (or the leaky relu family) that
    ``values`` (at :data:`_PROBES`) are, within the dtype's rounding; None if none is."""
    tolerance = max(1e-5, 8 * float(jnp.finfo(dtype).eps))
    best = None
    for function, reference in zip(FUNCTIONS, _reference_values(jnp.dtype(dtype).name)):
        d = _distance(values, reference)
        if d <= tolerance and (best is None or d < best[0]):
            best = d, function.label, function.site
    slope = -float(values[0])  # f(-1) = -slope
    if np.isfinite(slope) and abs(float(values[1]) - 1.0) <= tolerance:
        d = _distance(values, np.where(_PROBES >= 0, _PROBES, slope * _PROBES))
        if d <= tolerance and (best is None or d < best[0]) and abs(slope - 1.0) > tolerance:
            if abs(slope) <= tolerance:
                best = d, "relu", sgnn.relu
            elif abs(slope + 1.0) <= tolerance:
                best = d, "abs", sgnn.abs
            else:  # the slope as the dtype holds it, written shortest (0.3, not 0.30000001192092896)
                slope = float(str(np.dtype(dtype).type(slope)))
                best = d, f"leaky_relu({slope:g})", functools.partial(sgnn.leaky_relu, negative_slope=slope)
    return None if best is None else best[1:]


def _match_function(g: _Graph, position: int, eligible: Callable, taken: set):
    """The elementwise function ending at ``position`` (see the module docstring):
    ``(x, cone, label, site)`` or None."""
    anchor = g.ops[position]
    shape = tuple(anchor.eqn.outvars[0].aval.shape)
    region, frontier, leaves, nonlinear = {position}, [position], [], False
    while frontier:
        i = frontier.pop()
        op = g.ops[i]
        nonlinear |= op.name in _NONLINEAR or (op.name == "mul" and all(g.dynamic(a) for a in op.ins)) or (
            op.name == "div" and g.dynamic(op.ins[1]))
        for a in op.ins:
            if not g.dynamic(a):
                continue
            p = g.producer.get(a)
            if p is None or p[0] in taken or not eligible(p[0], shape):
                leaves.append(a)
            elif p[0] not in region and len(region) < _CONE_LIMIT:
                region.add(p[0])
                frontier.append(p[0])
    if not nonlinear or len(region) < 2:
        return None
    inner = [g.ops[i].outs[0] for i in sorted(region, reverse=True) if i != position]
    candidates = list(dict.fromkeys(inner + sorted(set(leaves), key=lambda r: -g.producer.get(r, (-1,))[0])))
    for x in candidates:
        aval = g.aval(x)
        if aval is not None and not jnp.issubdtype(aval.dtype, jnp.floating):
            continue
        cone = _cone(g, position, x, region)
        if cone is None or len(cone) < 2 or not _used_inside(g, cone, position):
            continue
        values = _evaluate(g, cone, x, anchor.outs[0], _PROBES)
        found = _closest_function(values, anchor.eqn.outvars[0].aval.dtype)
        if found is not None:
            return x, cone, found[0], found[1]
    return None


def _cone(g: _Graph, position: int, x, region: set):
    """The operations of ``region`` between ``x`` and ``position``; None unless ``x`` is the
    only dynamic value they read from outside."""
    cone, stack = set(), [position]
    while stack:
        i = stack.pop()
        if i in cone:
            continue
        if i not in region:
            return None
        cone.add(i)
        for a in g.ops[i].ins:
            if not g.dynamic(a) or a == x:
                continue
            p = g.producer.get(a)
            if p is None:
                return None
            stack.append(p[0])
    return cone


def _eligibility(g: _Graph):
    """``eligible(position, shape)``: the operation may be part of an elementwise function of
    an activation of ``shape`` (every dynamic operand of that shape, every static one a known
    number)."""
    cache = {}

    def own(i):
        op = g.ops[i]
        if op.eqn is None or len(op.outs) != 1 or op.name not in _F64 or not g.dynamic(op.outs[0]):
            return None
        out = tuple(op.eqn.outvars[0].aval.shape)
        dtype = op.eqn.outvars[0].aval.dtype
        if not (jnp.issubdtype(dtype, jnp.floating) or dtype == jnp.bool_):
            return None
        for a, var in zip(op.ins, op.eqn.invars):
            if g.dynamic(a):
                if tuple(var.aval.shape) != out:
                    return None
            elif g.scalar(a) is None:
                return None
        return out

    def eligible(i, shape):
        if i not in cache:
            cache[i] = own(i)
        return cache[i] is not None and cache[i] == shape

    return eligible


# ----------------------------------------------------------------------------- plan
def plan(program, flags) -> Plan:
    """Finds the normalisations, softmaxes, elementwise functions and quotients of a flattened
    program (see the module docstring)."""
    g = _Graph(program, flags)
    result = Plan()
    taken = set()

    def take(anchor, skip, substitute):
        result.skip |= skip - {anchor}
        result.substitutes[anchor] = substitute
        taken.update(skip | {anchor})

    def free(op, position):
        return (op.eqn is not None and position not in taken and position in g.live and len(op.outs) == 1
                and g.dynamic(op.outs[0]))

    for position, op in enumerate(program.ops):
        if op.eqn is not None and op.name in ("rsqrt", "sqrt", "pow") and _root(g, op.outs[0]) is not None:
            found = _match_normalisation(g, position)
            if found is not None and not (found[1] | {found[0]}) & taken:
                take(*found)
    for position, op in enumerate(program.ops):
        if free(op, position) and op.name in ("div", "mul"):
            found = _match_softmax(g, position)
            if found is not None and not found[0] & taken:
                take(position, *found)
    eligible = _eligibility(g)
    for position in range(len(program.ops) - 1, -1, -1):
        op = program.ops[position]
        if not free(op, position) or not eligible(position, g.shape(op.outs[0])):
            continue
        if not jnp.issubdtype(op.eqn.outvars[0].aval.dtype, jnp.floating):
            continue
        found = _match_function(g, position, eligible, taken)
        if found is not None:
            x, cone, label, site = found
            take(position, cone, Substitute((x,), site, label))
    for position in range(len(program.ops) - 1, -1, -1):  # a product before the reciprocal it reads
        op = program.ops[position]
        if free(op, position) and op.name in ("div", "mul", "integer_pow", "pow"):
            found = _match_quotient(g, position)
            if found is not None and not found[0] & taken:
                take(position, *found)
    # dead code (values the outputs do not depend on, no effects) is skipped: it would make
    # neurons nobody reads, and a match absorbs values only dead code reads too
    for position in set(range(len(program.ops))) - g.live:
        result.skip.add(position)
        result.substitutes.pop(position, None)
    return result


def _used_inside(g: _Graph, covered: set, anchor: int) -> bool:
    """Whether every value made inside ``covered`` but the anchor's is read only inside it (or by
    dead operations)."""
    for i in covered - {anchor}:
        for out in g.ops[i].outs:
            if any(u not in covered for u in g.live_uses(out)):
                return False
    return True


# ----------------------------------------------------------------------------- single primitives
def _relu_around(x, c):
    return sgnn.relu(x - c) + c


def _min_around(x, c):
    return c - sgnn.relu(c - x)


def _minimum(a, b):
    return -sgnn.maximum(-a, -b)


def _reciprocal_site(x):
    return sgnn.divide(jnp.ones_like(x), x)


def _rsqrt_site(x):
    return sgnn.rsqrt_mul(jnp.ones_like(x), x)


_UNARY = {"logistic": sgnn.sigmoid, "tanh": sgnn.tanh, "exp": sgnn.exp, "abs": sgnn.abs, "square": sgnn.square}
_POWERS = {2.0: sgnn.square, -1.0: _reciprocal_site, -0.5: _rsqrt_site}


def elementary(op, values, dyn, recognize_all: bool = True):
    """A function of the operation's operands computing it with ``signgd_jax.nn`` sites, or None.

    With ``recognize_all=False`` only ``max(x, 0)`` (plain relu) is recognised.
    """
    name = op.name
    ins = op.ins
    if name == "max" and sum(dyn) == 1 and any(_scalar_literal(r) == 0.0 for r in ins):
        k = dyn.index(True)
        return lambda *v: sgnn.relu(v[k])
    if not recognize_all:
        return None
    if name in _UNARY and dyn[0]:
        return _UNARY[name]
    if name == "integer_pow" and float(op.eqn.params.get("y")) in _POWERS:
        return _POWERS[float(op.eqn.params["y"])]
    if name == "pow" and dyn[0] and not dyn[1] and _uniform(values[1]) in _POWERS:
        site = _POWERS[_uniform(values[1])]
        return lambda a, b: site(a)
    if name in ("max", "min"):
        if all(dyn):
            return sgnn.maximum if name == "max" else _minimum
        around = _relu_around if name == "max" else _min_around
        return (lambda a, b: around(a, b)) if dyn[0] else (lambda a, b: around(b, a))
    if name == "mul" and all(dyn):
        if ins[0] == ins[1]:
            return lambda a, b: sgnn.square(a)
        return sgnn.product
    if name == "div" and dyn[1]:
        return sgnn.divide
    if name == "rsqrt":
        return _rsqrt_site
    if name == "reduce_window_max":
        p = op.eqn.params
        if any(d != 1 for d in (*p["base_dilation"], *p["window_dilation"])):
            return None
        return functools.partial(sgnn.reduce_window_max, window_dimensions=tuple(p["window_dimensions"]),
                                 window_strides=tuple(p["window_strides"]), padding=tuple(map(tuple, p["padding"])))
    if name == "reduce_max":
        return functools.partial(sgnn.reduce_max, axes=tuple(op.eqn.params["axes"]))
    if name == "dot_general" and all(dyn):
        shapes = [tuple(v.aval.shape) for v in op.eqn.invars]
        subscripts = dot_general_subscripts(op.eqn.params["dimension_numbers"], *map(len, shapes))
        return functools.partial(_bilinear_site, subscripts)
    return None


def _bilinear_site(subscripts, x1, x2):
    return sgnn.einsum(subscripts, x1, x2)


def dot_general_subscripts(dimension_numbers, ndim1: int, ndim2: int) -> str:
    """Einsum subscripts of ``lax.dot_general`` with these dimension numbers: output axes are
    the batch axes, then the first operand's free axes, then the second's."""
    (contract1, contract2), (batch1, batch2) = dimension_numbers
    letters = iter(sgnn._LETTERS)
    left, right, output = [None] * ndim1, [None] * ndim2, []
    for a, b in zip(batch1, batch2):
        left[a] = right[b] = next(letters)
        output.append(left[a])
    for a, b in zip(contract1, contract2):
        left[a] = right[b] = next(letters)
    for axes in (left, right):
        for i, c in enumerate(axes):
            if c is None:
                axes[i] = next(letters)
                output.append(axes[i])
    return f"{''.join(left)},{''.join(right)}->{''.join(output)}"
