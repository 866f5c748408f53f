"""The traced program as data: a jaxpr with its calls inlined and its scans unrolled.

:func:`flatten` turns a ``ClosedJaxpr`` into a :class:`Program`, a flat list of :class:`Op` in
evaluation order (each ``jit``/``remat``/custom-derivative call inlined, each ``scan`` iteration
its own operations). The recogniser (:mod:`signgd_jax.recognize`) reads it for patterns and the
interpreter (:mod:`signgd_jax.interpret`) evaluates it; this module sits below both.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

# Primitives whose sub-program is inlined (param holding it); scan is unrolled separately.
_CALLS = {
    "jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
    "remat": "jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr", "named_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
}


def _sub_program(eqn):
    """The inlinable sub-program of a call primitive, else None."""
    key = _CALLS.get(eqn.primitive.name)
    sub = eqn.params.get(key) if key else None
    if isinstance(sub, ClosedJaxpr):
        return sub
    if isinstance(sub, Jaxpr):
        return ClosedJaxpr(sub, ())
    return None


def _carries_program(eqn) -> bool:
    def is_program(value):
        if isinstance(value, (ClosedJaxpr, Jaxpr)):
            return True
        return isinstance(value, (tuple, list)) and any(isinstance(v, (ClosedJaxpr, Jaxpr)) for v in value)
    return any(is_program(v) for v in eqn.params.values())


# ----------------------------------------------------------------------------- flattening
@dataclasses.dataclass(frozen=True)
class Op:
    """One operation of a flattened program.

    ``eqn``: the jaxpr equation it evaluates, or None for an operation made by unrolling
    (``fn``, always linear, named by ``tag``: ``take`` one loop iteration's slice, ``stack`` the
    outputs, ``zeros`` for an empty loop's). ``ins``: references (hashable) or ``Literal``;
    ``outs``: references.
    """

    eqn: Any
    ins: tuple
    outs: tuple
    fn: Callable | None = None
    tag: str = ""

    @property
    def name(self) -> str:
        return self.eqn.primitive.name if self.eqn is not None else "unrolled_loop_slice"


@dataclasses.dataclass
class Program:
    """A jaxpr with calls inlined and scans unrolled: ``ops`` in evaluation order."""

    ops: list
    consts: dict
    invars: list
    outvars: list


def _take(i, xs):
    return jax.lax.index_in_dim(xs, i, axis=0, keepdims=False)


def _stack(*ys):
    return jnp.stack(ys)


def flatten(closed: ClosedJaxpr) -> Program:
    """Inlines calls and unrolls scans of ``closed`` (see the module docstring)."""
    program = Program([], {}, [], [])
    fresh = itertools.count()
    program.invars = [("in", i) for i in range(len(closed.jaxpr.invars))]
    program.outvars = _flatten_into(program, closed.jaxpr, closed.consts, program.invars, fresh)
    return program


def _flatten_into(program: Program, jaxpr: Jaxpr, consts, in_refs, fresh) -> list:
    scope = next(fresh)
    local = {}

    def ref(var):
        return var if isinstance(var, Literal) else local[var]

    for var, const in zip(jaxpr.constvars, consts):
        local[var] = (scope, var)
        program.consts[(scope, var)] = const
    for var, r in zip(jaxpr.invars, in_refs):
        local[var] = r
    for eqn in jaxpr.eqns:
        ins = [ref(v) for v in eqn.invars]
        sub = _sub_program(eqn)
        if sub is not None:
            outs = _flatten_into(program, sub.jaxpr, sub.consts, ins, fresh)
        elif eqn.primitive.name == "scan":
            outs = _unroll_scan(program, eqn, ins, fresh)
        else:
            outs = [(scope, v) for v in eqn.outvars]
            program.ops.append(Op(eqn, tuple(ins), tuple(outs)))
        for var, out in zip(eqn.outvars, outs):
            local[var] = out
    return [ref(v) for v in jaxpr.outvars]


def _unroll_scan(program: Program, eqn, ins, fresh) -> list:
    body, length = eqn.params["jaxpr"], eqn.params["length"]
    n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts, carry, xs = ins[:n_consts], list(ins[n_consts:n_consts + n_carry]), ins[n_consts + n_carry:]
    ys = {}
    order = range(length - 1, -1, -1) if eqn.params.get("reverse") else range(length)
    for i in order:
        x_i = []
        for x in xs:
            out = ("scan", next(fresh))
            program.ops.append(Op(None, (x,), (out,), fn=lambda v, i=i: [_take(i, v)], tag="take"))
            x_i.append(out)
        outs = _flatten_into(program, body.jaxpr, body.consts, [*consts, *carry, *x_i], fresh)
        carry, ys[i] = list(outs[:n_carry]), outs[n_carry:]
    stacked = []
    for j, var in enumerate(eqn.outvars[n_carry:]):
        out = ("scan", next(fresh))
        if length:
            program.ops.append(Op(None, tuple(ys[i][j] for i in range(length)), (out,),
                                  fn=lambda *v: [_stack(*v)], tag="stack"))
        else:
            aval = var.aval
            program.ops.append(Op(None, (), (out,), fn=lambda a=aval: [jnp.zeros(a.shape, a.dtype)], tag="zeros"))
        stacked.append(out)
    return [*carry, *stacked]


def dynamic_flags(program: Program, dynamic: Sequence[bool]) -> dict:
    """Which references depend on the dynamic inputs (any dynamic operand makes a dynamic output)."""
    flags = dict(zip(program.invars, dynamic))
    for op in program.ops:
        d = any(flags.get(r, False) for r in op.ins if not isinstance(r, Literal))
        for r in op.outs:
            flags[r] = d
    return flags
