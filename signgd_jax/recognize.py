"""Standard JAX/Flax operations recognised as the ``signgd_jax.nn`` sites they stand for.

A model written with plain ``flax.linen`` / ``flax.nnx`` / ``jax.nn`` operations converts
without importing ``signgd_jax``: the interpreter (:mod:`signgd_jax.interpret`) flattens the
traced program (calls inlined, scans unrolled) and this module replaces each recognised
operation by the ``signgd_jax.nn`` code it stands for, evaluated through the same interpreter.
So a recognised operation gives exactly the sites, in the same order and with the same inputs,
as the ``signgd_jax.nn`` version of the network: the same SNN.

Recognition works on what the program computes, never on module or function names (names can
lie; a user's function called ``gelu`` is not trusted). Three kinds of rules, applied to
operations whose operand depends on the network input (*dynamic*):

* **Single primitives** (:func:`elementary`):
  ``max(x, 0)`` (``jax.nn.relu``, ``nn.relu``, ``jnp.maximum(x, 0)``) -> relu;
  ``max(x, c)`` with a constant ``c`` -> ``relu(x - c) + c``; ``min(x, c)`` -> ``c - relu(c - x)``
  (so ``jax.nn.relu6`` is two relu sites); ``max``/``min`` of two activations -> maximum;
  ``logistic`` (``jax.nn.sigmoid``) -> sigmoid; ``tanh`` -> tanh; ``exp`` -> exp; ``abs`` -> abs;
  ``square``, ``integer_pow[y=2]`` and ``x * x`` (one operand used twice) -> square;
  ``a * b`` of two activations -> product; ``a / b`` with a dynamic denominator -> divide;
  ``rsqrt(x)`` -> ``rsqrt_mul(1, x)``;
  ``reduce_window_max`` (``nn.max_pool``, ``lax.reduce_window`` with ``lax.max``; any window,
  stride and padding, no dilation) -> one ``max_pool`` site (``signgd_jax.nn.reduce_window_max``;
  paper mode and the ``if`` baseline take it apart into binary max neurons, one axis after the
  other, in axis order: for NHWC the height, then the width);
  ``reduce_max`` (``jnp.max`` over axes) -> the same site with whole axes as the window;
  ``dot_general`` of two activations (``jnp.einsum``, ``@``, ``jnp.matmul``, the two contractions
  of ``jax.nn.dot_product_attention`` and ``flax.linen.MultiHeadDotProductAttention``) -> one
  bilinear vector neuron with the equivalent einsum subscripts (batch axes, then the first
  operand's free axes, then the second's: ``dot_general``'s own output order).
* **Elementwise templates** (:data:`TEMPLATES`): the installed JAX's own functions are traced on
  a small vector (per dtype, cached), flattened like the model, and matched against the
  model's program as a graph (the same primitives and parameters, constants equal to rounding,
  operands of ``add``/``mul``/``max``/``min`` in either order, every intermediate value used
  only inside the match). They follow the JAX version, whatever form its ``jax.nn`` functions
  take: ``jax.nn.gelu`` tanh form -> gelu ``approximate='tanh'``; exact (erf) form -> gelu
  ``approximate='exact'``; ``x * sigmoid(1.702 x)`` -> gelu ``approximate='sigmoid'``;
  ``jax.nn.silu`` / ``x * sigmoid(x)`` -> silu; ``jax.nn.leaky_relu`` with any constant slope
  -> leaky_relu ``negative_slope`` (the slope must be a constant of the program).
* **Normalisation** (:func:`_match_normalisation`), anchored at ``rsqrt`` of an activation:
  ``rsqrt(var + eps)`` where ``var`` is ``mean((x - mean(x))**2)`` (``flax.linen.LayerNorm``
  with ``use_fast_variance=False``), ``max(0, mean(x**2) - mean(x)**2)`` (its default
  fast-variance form, and ``nnx.LayerNorm``) or ``mean(x**2)`` (``RMSNorm``), over the same
  axes, the ``rsqrt`` times constants (the scale) multiplying the centred ``x`` (``x`` for
  RMSNorm). A LayerNorm becomes one ``layer_norm`` site on ``x`` over those axes, as
  ``signgd_jax.nn.LayerNorm`` writes it (a vector neuron in improved mode, the reference's
  decomposition in paper mode, :mod:`signgd_jax.expand`), then the constants; the fast-variance
  form is thus converted through the centred variance, which equals it in exact arithmetic. An
  RMSNorm becomes a square neuron on ``x``, the mean plus ``eps`` (linear), an ``x1/sqrt(x2)``
  neuron, then the constants.

* **Softmax** (:func:`_match_softmax`), anchored at the division of ``jax.nn.softmax``:
  ``e / broadcast(sum_axes(e))`` with ``e = exp(z)`` becomes one softmax vector neuron on ``z``
  along ``axes``; when ``z = x - broadcast(stop_gradient(max(-inf, max_axes(x))))`` (the
  overflow guard of ``jax.nn.softmax``) the guard is absorbed and the neuron reads ``x``
  (the same value: softmax does not change when a constant along its axes is subtracted).

Everything else nonlinear on activations is refused by the interpreter with the primitive's
name and a hint (:data:`HINTS`).
"""
from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from signgd_jax import nn as sgnn

SUPPORTED_TEXT = (
    "relu (jax.nn.relu, max(x, 0)), max/min with a constant or of two activations, jax.nn.gelu (tanh, exact), "
    "jax.nn.leaky_relu, jax.nn.sigmoid, jnp.tanh, jax.nn.silu, jnp.abs, x*x, x**2, jnp.exp, products and "
    "quotients of activations, rsqrt, LayerNorm/RMSNorm (flax.linen, flax.nnx), max pooling (nn.max_pool, "
    "reduce_window max, jnp.max), jax.nn.softmax, einsum / @ / dot_general of two activations "
    "(attention: jax.nn.dot_product_attention, flax.linen.MultiHeadDotProductAttention)"
)
HINTS = {
    "erf": "only as part of jax.nn.gelu(approximate=False)", "erfc": "only as part of jax.nn.gelu(approximate=False)",
    "integer_pow": "only x**2 has a neuron (square); write higher powers as products",
    "pow": "only x**2 has a neuron (square)", "sqrt": "use signgd_jax.nn.rsqrt_mul (x1/sqrt(x2))",
    "select_n": "jnp.where on activations has no neuron (jax.nn.leaky_relu with a constant slope is recognised)",
    "log": "no neuron kind for log", "log1p": "no neuron kind for log1p", "expm1": "no neuron kind for expm1 (elu)",
    "sin": "no neuron kind for sin; a kind is one row of signgd_jax.kinds",
    "cos": "no neuron kind for cos; a kind is one row of signgd_jax.kinds",
    "reduce_window_max": "max pooling with dilation has no neuron decomposition",
    "argmax": "argmax of activations has no neuron", "sort": "sorting activations has no neuron",
}
for _cmp in ("gt", "ge", "lt", "le", "eq", "ne"):
    HINTS[_cmp] = "comparing activations has no neuron; use jax.nn.relu / jnp.maximum / jax.nn.leaky_relu"


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
class _Graph:
    def __init__(self, program, flags):
        self.ops, self.flags = program.ops, flags
        self.producer = {r: (i, k) for i, op in enumerate(program.ops) for k, r in enumerate(op.outs)}
        self.uses = defaultdict(list)
        for i, op in enumerate(program.ops):
            for r in op.ins:
                if not isinstance(r, Literal):
                    self.uses[r].append(i)
        for r in program.outvars:
            if not isinstance(r, Literal):
                self.uses[r].append(-1)

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

    def shape(self, r):
        if isinstance(r, Literal):
            return tuple(np.shape(r.val))
        i, k = self.producer.get(r, (None, None))
        if i is None or self.ops[i].eqn is None:
            return None
        return tuple(self.ops[i].eqn.outvars[k].aval.shape)


def _scalar_literal(r):
    if isinstance(r, Literal) and np.ndim(r.val) == 0:
        try:
            return float(r.val)
        except (TypeError, ValueError):
            return None
    return None


def _is_zero(g: _Graph, r) -> bool:
    """A constant zero: a literal 0, or broadcasts / reshapes of one."""
    for _ in range(8):
        value = _scalar_literal(r)
        if value is not None:
            return value == 0.0
        found = g.op(r, "broadcast_in_dim", "reshape", "convert_element_type", "expand_dims")
        if found is None:
            return False
        r = found[1].ins[0]
    return False


_SHAPE_OPS = ("broadcast_in_dim", "reshape", "expand_dims", "squeeze", "convert_element_type")


def _strip(g: _Graph, r, path: list):
    """Follows shape-only operations back from ``r``; appends their positions to ``path``."""
    while (found := g.op(r, *_SHAPE_OPS)) is not None and len(found[1].ins) == 1:
        path.append(found[0])
        r = found[1].ins[0]
    return r


def _square_of(g: _Graph, r, path: list):
    found = g.op(r, "square", "integer_pow", "mul")
    if found is None:
        return None
    i, op = found
    if op.name == "integer_pow" and op.eqn.params.get("y") != 2:
        return None
    if op.name == "mul" and op.ins[0] != op.ins[1]:
        return None
    path.append(i)
    return op.ins[0]


def _mean_of(g: _Graph, r, path: list):
    """``(z, axes)`` when ``r = reduce_sum(z, axes) / n`` with ``n`` the number of summed elements."""
    found = g.op(r, "div", "mul")
    if found is None:
        return None
    i, op = found
    a, b = op.ins
    if op.name == "mul" and _scalar_literal(a) is not None:
        a, b = b, a
    factor = _scalar_literal(b)
    summed = g.op(a, "reduce_sum")
    if factor is None or summed is None:
        return None
    z = summed[1].ins[0]
    axes = tuple(summed[1].eqn.params["axes"])
    shape = g.shape(z) if g.shape(z) is not None else tuple(summed[1].eqn.invars[0].aval.shape)
    count = float(np.prod([shape[ax] for ax in axes]))
    expected = count if op.name == "div" else 1.0 / count
    if not np.isclose(factor, expected, rtol=1e-5):
        return None
    path += [i, summed[0]]
    return z, axes


# ----------------------------------------------------------------------------- normalisation
def _variance_source(g: _Graph, v, path: list):
    """``(form, x, axes)`` of a variance value ``v``; form 'layer' (centred) or 'rms'."""
    # fast form: max(0, mean(x**2) - mean(x)**2)
    clamp = g.op(v, "max")
    if clamp is not None:
        i, op = clamp
        zero = [k for k, r in enumerate(op.ins) if _scalar_literal(r) == 0.0]
        if len(zero) != 1:
            return None
        diff = g.op(op.ins[1 - zero[0]], "sub")
        if diff is None:
            return None
        sub_path = [i, diff[0]]
        mean_sq = _mean_of(g, diff[1].ins[0], sub_path)
        mean = _square_of(g, diff[1].ins[1], sub_path)
        if mean_sq is None or mean is None:
            return None
        x2 = _square_of(g, mean_sq[0], sub_path)
        first = _mean_of(g, mean, [])  # the mean itself stays (it also centres x)
        if x2 is None or first is None or first != (x2, mean_sq[1]):
            return None
        path += sub_path
        return "layer", x2, mean_sq[1], mean
    sub_path = []
    mean_sq = _mean_of(g, v, sub_path)
    if mean_sq is None:
        return None
    z = _square_of(g, mean_sq[0], sub_path)
    if z is None:
        return None
    centred = g.op(z, "sub")
    if centred is not None:
        x, centre = centred[1].ins
        mean = _strip(g, centre, [])
        if _mean_of(g, mean, []) == (x, mean_sq[1]):
            path += sub_path
            return "layer", x, mean_sq[1], mean
    path += sub_path
    return "rms", z, mean_sq[1], None


def _is_centred(g: _Graph, c, x, mean) -> bool:
    found = g.op(c, "sub")
    return found is not None and found[1].ins[0] == x and _strip(g, found[1].ins[1], []) == mean


def _match_normalisation(g: _Graph, position: int):
    """Matches LayerNorm / RMSNorm at the ``rsqrt`` at ``position``; ``(anchor, skip, Substitute)``."""
    rsqrt = g.ops[position]
    added = g.op(rsqrt.ins[0], "add")
    if added is None:
        return None
    a, b = added[1].ins
    if _scalar_literal(a) is not None:
        a, b = b, a
    eps = _scalar_literal(b)
    if eps is None or not g.dynamic(a):
        return None
    path = [added[0]]
    v = _strip(g, a, path)
    source = _variance_source(g, v, path)
    if source is None:
        return None
    form, x, axes, mean = source
    # forward: rsqrt(.) * constants ... * c
    factors, r, chain = [], rsqrt.outs[0], [position]
    while True:
        users = g.uses.get(r, [])
        if len(users) != 1 or users[0] < 0:
            return None
        j = users[0]
        op = g.ops[j]
        if op.eqn is None:
            return None
        chain.append(j)
        if op.name in _SHAPE_OPS and len(op.ins) == 1:
            r = op.outs[0]
            continue
        if op.name != "mul":
            return None
        other = op.ins[1] if op.ins[0] == r else op.ins[0]
        if not g.dynamic(other):
            factors.append(other)
            r = op.outs[0]
            continue
        c = other
        break
    if form == "layer" and not _is_centred(g, c, x, mean):
        return None
    if form == "rms" and not (c == x or (g.op(c, "sub") and g.op(c, "sub")[1].ins[0] == x
                                         and _is_zero(g, g.op(c, "sub")[1].ins[1]))):
        return None
    anchor = chain[-1]
    skip = set(path) | set(chain[:-1])
    for i in skip:  # every absorbed value is used only inside the match
        for out in g.ops[i].outs:
            if any(u not in skip and u != anchor for u in g.uses.get(out, [])):
                return None
    if form == "layer":  # one layer_norm site on x (the dynamics decides how to convert it)
        def layer_normalise(x_value, *scales):
            ndim = len(np.shape(x_value))
            y = sgnn.site("layer_norm", x_value, axis=tuple(sorted(int(a) - ndim for a in axes)),
                          epsilon=float(str(np.float32(eps))), normalized_scale=1.0)  # 1e-6, not 9.99e-7
            for s in scales:
                y = y * s
            return y

        return anchor, skip, Substitute((x, *factors), layer_normalise, "LayerNorm")

    def rms_normalise(x_value, *scales):
        variance = jnp.mean(sgnn.square(x_value), axis=axes, keepdims=True) + eps
        y = sgnn.rsqrt_mul(x_value, variance)
        for s in scales:
            y = y * s
        return y

    return anchor, skip, Substitute((x, *factors), rms_normalise, "RMSNorm")


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
            guard = [k for k, v in enumerate(op.ins) if _scalar_literal(v) == -np.inf]
            if len(guard) != 1:
                return None
            r = op.ins[1 - guard[0]]
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


def _match_softmax(g: _Graph, position: int):
    """Matches ``exp(z) / sum(exp(z))`` at the ``div`` at ``position``: ``(skip, Substitute)``."""
    div = g.ops[position]
    numerator, denominator = div.ins
    e = g.op(numerator, "exp")
    if e is None or not g.dynamic(numerator):
        return None
    ndim = len(div.eqn.outvars[0].aval.shape)
    summed = g.op(_strip(g, denominator, []), "reduce_sum")
    if summed is None or ndim == 0:
        return None
    axes = tuple(sorted(summed[1].eqn.params["axes"]))
    path = []
    if _reduced_along(g, denominator, axes, ndim, "reduce_sum", path) != numerator:
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


# ----------------------------------------------------------------------------- templates
_SLOPE = 0.3721  # stands for any constant slope in the leaky_relu template


@dataclasses.dataclass(frozen=True)
class Template:
    """An elementwise function recognised by its traced program; ``site(x, *constants)``."""

    label: str
    reference: Callable
    site: Callable


TEMPLATES = (
    Template("jax.nn.gelu(approximate=True)", lambda x: jax.nn.gelu(x, approximate=True),
             lambda x: sgnn.gelu(x, approximate="tanh")),
    Template("jax.nn.gelu(approximate=False)", lambda x: jax.nn.gelu(x, approximate=False),
             lambda x: sgnn.gelu(x, approximate="exact")),
    Template("x * sigmoid(1.702 x)", lambda x: x * jax.nn.sigmoid(1.702 * x),
             lambda x: sgnn.gelu(x, approximate="sigmoid")),
    Template("jax.nn.leaky_relu", lambda x: jax.nn.leaky_relu(x, _SLOPE),
             lambda x, slope: sgnn.leaky_relu(x, slope)),
    Template("jax.nn.silu", jax.nn.silu, sgnn.silu),
)
_COMMUTATIVE = {"add", "add_any", "mul", "max", "min"}
_IGNORED_PARAMS = {"sharding", "out_sharding", "accuracy"}


@functools.lru_cache(maxsize=None)
def _template_program(index: int, dtype_name: str):
    from signgd_jax.interpret import flatten  # the interpreter imports this module

    closed = jax.make_jaxpr(TEMPLATES[index].reference)(jax.ShapeDtypeStruct((3,), jnp.dtype(dtype_name)))
    program = flatten(closed)
    graph = _Graph(program, {program.invars[0]: True})
    return graph, program.invars[0], program.outvars[0]


def _params_equal(a, b) -> bool:
    pa = {k: v for k, v in a.eqn.params.items() if k not in _IGNORED_PARAMS}
    pb = {k: v for k, v in b.eqn.params.items() if k not in _IGNORED_PARAMS}
    try:
        return pa == pb
    except Exception:  # noqa: BLE001 - incomparable parameters do not match
        return False


def _match_template(g: _Graph, t: _Graph, t_in, t_out, anchor_ref, rtol: float):
    """Structural match of template graph ``t`` at ``anchor_ref``: ``(x, covered, constants)``."""

    def match(tr, ur, state):
        mapping, covered, wild = state
        tv = _scalar_literal(tr)
        if isinstance(tr, Literal):
            uv = _scalar_literal(ur)
            if tv is None or uv is None:
                return None
            if tv == _SLOPE:
                return mapping, covered, wild + (uv,)
            return state if np.isclose(tv, uv, rtol=rtol, atol=0.0) else None
        if tr in mapping:
            return state if mapping[tr] == ur else None
        if tr == t_in:
            if isinstance(ur, Literal) or not g.dynamic(ur):
                return None
            return {**mapping, tr: ur}, covered, wild
        ti, tk = t.producer[tr]
        top = t.ops[ti]
        if isinstance(ur, Literal) or ur not in g.producer:
            return None
        ui, uk = g.producer[ur]
        uop = g.ops[ui]
        if (uk != tk or uop.eqn is None or uop.name != top.name or len(uop.ins) != len(top.ins)
                or ui in covered.values() or not _params_equal(top, uop)):
            return None
        base = ({**mapping, tr: ur}, {**covered, ti: ui}, wild)
        orders = [top.ins]
        if top.name in _COMMUTATIVE and len(top.ins) == 2:
            orders.append(top.ins[::-1])
        for order in orders:
            state = base
            for a, b in zip(order, uop.ins):
                state = match(a, b, state)
                if state is None:
                    break
            if state is not None:
                return state
        return None

    state = match(t_out, anchor_ref, ({}, {}, ()))
    if state is None or t_in not in state[0]:
        return None
    return state[0][t_in], set(state[1].values()), state[2]


# ----------------------------------------------------------------------------- plan
def plan(program, flags) -> Plan:
    """Finds the normalisations and templates of a flattened program (see the module docstring)."""
    g = _Graph(program, flags)
    result = Plan()
    taken = set()
    for position, op in enumerate(program.ops):
        if op.eqn is not None and op.name == "rsqrt" and g.dynamic(op.ins[0]):
            found = _match_normalisation(g, position)
            if found is not None and not (found[1] | {found[0]}) & taken:
                anchor, skip, substitute = found
                result.skip |= skip
                result.substitutes[anchor] = substitute
                taken |= skip | {anchor}
    for position, op in enumerate(program.ops):
        if op.eqn is not None and op.name == "div" and position not in taken and g.dynamic(op.ins[0]):
            found = _match_softmax(g, position)
            if found is not None and not (found[0] | {position}) & taken:
                skip, substitute = found
                result.skip |= skip
                result.substitutes[position] = substitute
                taken |= skip | {position}
    template_names = {t_graph.ops[-1].name for t_graph in _template_graphs(jnp.float32)}
    for position in range(len(program.ops) - 1, -1, -1):
        op = program.ops[position]
        if position in taken or op.eqn is None or len(op.outs) != 1 or op.name not in template_names:
            continue
        if not g.dynamic(op.outs[0]):
            continue
        dtype = op.eqn.outvars[0].aval.dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            continue
        rtol = 16 * float(jnp.finfo(dtype).eps)
        for index in _template_order():
            t_graph, t_in, t_out = _template_program(index, jnp.dtype(dtype).name)
            found = _match_template(g, t_graph, t_in, t_out, op.outs[0], rtol)
            if found is None:
                continue
            x, covered, constants = found
            if covered & taken or not _used_inside(g, covered, position):
                continue
            site = TEMPLATES[index].site
            result.skip |= covered - {position}
            result.substitutes[position] = Substitute((x,), functools.partial(_apply_site, site, constants),
                                                      TEMPLATES[index].label)
            taken |= covered
            break
    return result


def _apply_site(site, constants, x):
    return site(x, *constants)


def _used_inside(g: _Graph, covered: set, anchor: int) -> bool:
    for i in covered - {anchor}:
        for out in g.ops[i].outs:
            if any(u not in covered for u in g.uses.get(out, [])):
                return False
    return True


def _template_graphs(dtype):
    return [_template_program(i, jnp.dtype(dtype).name)[0] for i in range(len(TEMPLATES))]


@functools.lru_cache(maxsize=None)
def _template_order():
    """Larger templates first, so a template inside another does not take its operations."""
    sizes = [len(_template_program(i, "float32")[0].ops) for i in range(len(TEMPLATES))]
    return tuple(sorted(range(len(TEMPLATES)), key=lambda i: -sizes[i]))


# ----------------------------------------------------------------------------- single primitives
def _relu_around(x, c):
    return sgnn.relu(x - c) + c


def _min_around(x, c):
    return c - sgnn.relu(c - x)


def _minimum(a, b):
    return -sgnn.maximum(-a, -b)


_UNARY = {"logistic": sgnn.sigmoid, "tanh": sgnn.tanh, "exp": sgnn.exp, "abs": sgnn.abs, "square": sgnn.square}


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
    if name == "integer_pow" and op.eqn.params.get("y") == 2:
        return sgnn.square
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
        return lambda x: sgnn.rsqrt_mul(jnp.ones_like(x), x)
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
