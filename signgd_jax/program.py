"""The traced program as data: a jaxpr with its calls inlined and its scans unrolled.

:func:`flatten` turns a ``ClosedJaxpr`` into a :class:`Program`, a flat list of :class:`Op` in
evaluation order (each ``jit``/``remat``/custom-derivative call inlined, each ``scan`` iteration
its own operations), each with the Flax module path it was traced in (:func:`module_path`,
composed through the calls and loops). The recogniser (:mod:`signgd_jax.recognize`) reads it for
patterns and the interpreter (:mod:`signgd_jax.interpret`) evaluates it; this module sits below
both.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
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
    ``outs``: references. ``path``: the module path it was traced in, as components
    (:func:`module_path`).
    """

    eqn: Any
    ins: tuple
    outs: tuple
    fn: Callable | None = None
    tag: str = ""
    path: tuple = ()

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


def flatten(closed: ClosedJaxpr, path: tuple = ()) -> Program:
    """Inlines calls and unrolls scans of ``closed`` (see the module docstring); its operations'
    paths start with ``path``."""
    program = Program([], {}, [], [])
    fresh = itertools.count()
    program.invars = [("in", i) for i in range(len(closed.jaxpr.invars))]
    program.outvars = _flatten_into(program, closed.jaxpr, closed.consts, program.invars, fresh, tuple(path))
    return program


# a JAX transform around a scope in a name stack ('vmap(Dense_0)'), and what a path component may hold
_TRANSFORM = re.compile(r"^[A-Za-z_]\w*\((.*)\)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def module_path(name_stack) -> tuple:
    """The components of a JAX name stack, outermost first: the Flax linen modules an equation
    was traced in (``'Net/Block_0/Dense_0'``; linen pushes them by default, NNX does not).
    Transform wrappers (``vmap(...)``) are removed and any character but letters, digits, ``_``
    and ``-`` becomes ``_``, so each component is safe as a file name and the path, joined by
    ``/``, as a JSON key."""
    parts = []
    for part in str(name_stack).split("/"):
        while (wrapped := _TRANSFORM.match(part)) is not None:
            part = wrapped.group(1)
        if part:
            parts.append(_UNSAFE.sub("_", part))
    return tuple(parts)


def _in_iteration(own: tuple, iteration: int) -> tuple:
    """The path of an equation of a loop body in iteration ``iteration``: the index follows the
    first component (the scanned module under ``nn.scan``: ``layers/3/Dense_0``), or stands alone."""
    return (*own[:1], str(iteration), *own[1:])


def _flatten_into(program: Program, jaxpr: Jaxpr, consts, in_refs, fresh, scope: tuple, iteration=None) -> list:
    """Appends the operations of ``jaxpr`` traced inside ``scope`` (the path of the equation that
    holds it), in loop iteration ``iteration`` when it is a scan body; returns its outputs."""
    frame = next(fresh)
    local = {}

    def ref(var):
        return var if isinstance(var, Literal) else local[var]

    for var, const in zip(jaxpr.constvars, consts):
        local[var] = (frame, var)
        program.consts[(frame, var)] = const
    for var, r in zip(jaxpr.invars, in_refs):
        local[var] = r
    for eqn in jaxpr.eqns:
        own = module_path(eqn.source_info.name_stack)
        path = (*scope, *(own if iteration is None else _in_iteration(own, iteration)))
        ins = [ref(v) for v in eqn.invars]
        sub = _sub_program(eqn)
        if sub is not None:
            outs = _flatten_into(program, sub.jaxpr, sub.consts, ins, fresh, path)
        elif eqn.primitive.name == "scan":
            outs = _unroll_scan(program, eqn, ins, fresh, path)
        else:
            outs = [(frame, v) for v in eqn.outvars]
            program.ops.append(Op(eqn, tuple(ins), tuple(outs), path=path))
        for var, out in zip(eqn.outvars, outs):
            local[var] = out
    return [ref(v) for v in jaxpr.outvars]


def _unroll_scan(program: Program, eqn, ins, fresh, path: tuple) -> list:
    body, length = eqn.params["jaxpr"], eqn.params["length"]
    n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts, carry, xs = ins[:n_consts], list(ins[n_consts:n_consts + n_carry]), ins[n_consts + n_carry:]
    ys = {}
    order = range(length - 1, -1, -1) if eqn.params.get("reverse") else range(length)
    for i in order:
        x_i = []
        for x in xs:
            out = ("scan", next(fresh))
            program.ops.append(Op(None, (x,), (out,), fn=lambda v, i=i: [_take(i, v)], tag="take", path=path))
            x_i.append(out)
        outs = _flatten_into(program, body.jaxpr, body.consts, [*consts, *carry, *x_i], fresh, path, i)
        carry, ys[i] = list(outs[:n_carry]), outs[n_carry:]
    stacked = []
    for j, var in enumerate(eqn.outvars[n_carry:]):
        out = ("scan", next(fresh))
        if length:
            program.ops.append(Op(None, tuple(ys[i][j] for i in range(length)), (out,),
                                  fn=lambda *v: [_stack(*v)], tag="stack", path=path))
        else:
            aval = var.aval
            program.ops.append(Op(None, (), (out,), fn=lambda a=aval: [jnp.zeros(a.shape, a.dtype)], tag="zeros",
                                  path=path))
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
