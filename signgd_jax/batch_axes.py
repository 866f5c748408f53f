"""Which axis of every value of a traced network holds the image batch.

The converter keeps per-position statistics over axis 0 of every site and builds one neuron per
position of one sample, so each site must see its inputs and output with the batch first. Most
programs keep it there, but some move it: ``jax.nn.dot_product_attention`` computes its softmax
on a tensor laid out ``[group, batch, heads, queries, keys]`` and contracts the values with it
at axis 1. This module follows the batch axis through a flattened program
(:func:`signgd_jax.interpret.flatten`) from the network input (axis 0) to every value, one rule
per primitive, reading only each equation's parameters and shapes (no second trace):

* an ``int``: the axis holding the batch;
* ``None``: no batch axis (a value that does not depend on the network input);
* a :class:`Lost`: the batch cannot be followed past this operation (it was reduced, contracted,
  sliced, merged with another axis by a reshape, or met a primitive without a rule).

The interpreter then moves the batch to the front of each site's inputs, re-spells the site's
options for that layout (:func:`site_layout`; a kind's ``batch_first`` in
:mod:`signgd_jax.kinds`), and moves the output's batch back; a site with an input whose batch
is lost, or whose options would mix the samples of a batch, is refused by name.

A reshape locates the batch by the number of elements before it; with a batch of one next to
other axes of size one this is ambiguous and the first such axis is taken.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from jax.extend.core import Literal

from signgd_jax.kinds import get as get_kind


@dataclasses.dataclass(frozen=True, eq=False)
class Lost:
    """The batch axis cannot be followed past ``name`` (the equation ``eqn``, or None)."""

    name: str
    eqn: Any = None


def _shape(var) -> tuple:
    return tuple(getattr(var.aval, "shape", ()))


def _dropping(axis: int, removed) -> int | None:
    """``axis`` after ``removed`` axes are dropped; None if it is one of them."""
    removed = {int(r) for r in removed}
    return None if axis in removed else axis - sum(r < axis for r in removed)


def _common(axes):
    """The one axis shared by every operand that has one (None: no operand has), else Lost."""
    known = {a for a in axes if a is not None}
    lost = [a for a in known if isinstance(a, Lost)]
    if lost or len(known) > 1:
        return lost[0] if lost else Lost("operands holding the batch on different axes")
    return int(known.pop()) if known else None


_AXIS_PARAMS = ("axis", "axes", "dimension", "dimensions")


def _params_axes(params) -> set:
    found = set()
    for key in _AXIS_PARAMS:
        value = params.get(key)
        if hasattr(value, "__index__"):
            found.add(int(value))
        elif isinstance(value, (tuple, list)):
            found |= {int(v) for v in value if hasattr(v, "__index__")}
    return found


def _dot_general(eqn, axes):
    (c1, c2), (b1, b2) = eqn.params["dimension_numbers"]
    ndims = [len(_shape(v)) for v in eqn.invars]
    free = [[d for d in range(n) if d not in (*c, *b)] for n, c, b in zip(ndims, (c1, c2), (b1, b2))]
    outs = []
    for k, (a, c, b) in enumerate(zip(axes, (c1, c2), (b1, b2))):
        if a is None:
            continue
        if a in c:
            return None  # contracts over the batch
        if a in b:
            outs.append(("batch", list(b).index(a)))
        else:
            outs.append(("free", len(b1) + (0 if k == 0 else len(free[0])) + free[k].index(a)))
    if len(outs) == 2 and not (outs[0][0] == outs[1][0] == "batch" and outs[0][1] == outs[1][1]):
        return None  # two batch axes that do not meet: every sample against every other
    return outs[0][1]


def _reshape(a: int, before: tuple, after: tuple):
    prefix, size = math.prod(before[:a]), before[a]
    for j, n in enumerate(after):
        if n == size and math.prod(after[:j]) == prefix:
            return j
    return None


def _gather(eqn, axes):
    if axes[1] is not None:
        return None
    a, dims = axes[0], eqn.params["dimension_numbers"]
    operand = _shape(eqn.invars[0])
    if (a in dims.start_index_map or a in dims.collapsed_slice_dims or a in dims.operand_batching_dims
            or eqn.params["slice_sizes"][a] != operand[a]):
        return None
    kept = [d for d in range(len(operand)) if d not in (*dims.collapsed_slice_dims, *dims.operand_batching_dims)]
    return dims.offset_dims[kept.index(a)]


def _full_along(a: int, operand: tuple, result: tuple) -> bool:
    return len(operand) == len(result) and operand[a] == result[a]


def _rule(eqn, axes):
    """The batch axis of ``eqn``'s outputs (one for all) from its operands' (some not None)."""
    name, p = eqn.primitive.name, eqn.params
    ins = [_shape(v) for v in eqn.invars]
    out = _shape(eqn.outvars[0]) if eqn.outvars else ()
    a = next((x for x in axes if x is not None), None)
    if name == "dot_general":
        return _dot_general(eqn, axes)
    if name == "conv_general_dilated":
        lhs, _, out_spec = p["dimension_numbers"]
        ok = axes[1] is None and a == lhs[0] and p.get("batch_group_count", 1) == 1
        return out_spec[0] if ok else None
    if name == "gather":
        return _gather(eqn, axes)
    if name in ("dynamic_slice", "dynamic_update_slice", "pad", "slice", "select_n", "clamp", "concatenate",
                "split"):
        a = _common(axes)
        if not isinstance(a, int):
            return None
        if name == "concatenate" and a == p["dimension"] or name == "split" and a == p["axis"]:
            return None
        if name == "pad" and tuple(p["padding_config"][a]) != (0, 0, 0):
            return None
        if name == "dynamic_update_slice" and ins[1][a] != ins[0][a]:
            return None
        if name in ("slice", "dynamic_slice") and not _full_along(a, ins[0], out):
            return None
        return a
    if name == "transpose":
        return list(p["permutation"]).index(a)
    if name == "broadcast_in_dim":
        return p["broadcast_dimensions"][a] if ins[0] else None
    if name == "reshape":
        return _reshape(a, ins[0], out)
    if name == "squeeze":
        return _dropping(a, [d % len(ins[0]) for d in p["dimensions"]])
    if name.startswith(("reduce_", "argm")) and "axes" in p and not name.startswith("reduce_window"):
        return _dropping(a, p["axes"])
    if name.startswith("reduce_window"):
        window, strides = p["window_dimensions"], p["window_strides"]
        padding = p["padding"]
        if window[a] != 1 or strides[a] != 1 or tuple(padding[a]) != (0, 0):
            return None
        return a
    if name == "signgd_site":
        options = dict(p["options"])
        try:
            return site_layout(p["kind"], options, list(axes), [len(s) for s in ins])[2]
        except ValueError:
            return None
    # anything else: shape-preserving primitives (elementwise, casts, cumulative sums ...) keep
    # the batch where their operands have it, unless they act along it
    a = _common(axes)
    if not isinstance(a, int) or a in _params_axes(p):
        return None
    # (operands of one rank may broadcast along axes of size 1, never along the batch)
    shapes = [s for s, x in zip(ins, axes) if x is not None] + [_shape(v) for v in eqn.outvars]
    if len({len(s) for s in shapes}) != 1 or len({s[a] for s in shapes}) != 1:
        return None
    return a


def _op_rule(op, axes):
    """The batch axes of ``op``'s outputs (a list)."""
    if op.eqn is None:  # made by unrolling a scan
        if op.tag == "take":
            a = axes[0]
            return [a if a is None or isinstance(a, Lost) else (a - 1 if a > 0 else Lost("scan over the batch"))]
        if op.tag == "stack":
            a = _common(axes)
            return [a + 1 if isinstance(a, int) else (a if isinstance(a, Lost) or a is None
                                                     else Lost("stacking scan outputs"))]
        return [None] * len(op.outs)
    if all(a is None for a in axes):
        return [None] * len(op.outs)
    lost = next((a for a in axes if isinstance(a, Lost)), None)
    if lost is not None:
        return [lost] * len(op.outs)
    out = _rule(op.eqn, axes)
    out = int(out) if hasattr(out, "__index__") and not isinstance(out, bool) else Lost(op.name, op.eqn)
    return [out] * len(op.outs)


def propagate(program, input_axes) -> dict:
    """``{reference: batch axis}`` for every value of ``program`` (see the module docstring);
    ``input_axes``: the batch axis of each of ``program.invars`` (None for static inputs)."""
    found = dict(zip(program.invars, input_axes))
    for op in program.ops:
        axes = [None if isinstance(r, Literal) else found.get(r) for r in op.ins]
        for r, a in zip(op.outs, _op_rule(op, axes)):
            found[r] = a
    return found


def site_layout(kind: str, options: dict, axes, ndims):
    """``(options, axis to move to the front per input (None: leave), output batch axis)`` for a
    site whose inputs hold the batch at ``axes`` (None for a static input). A ValueError says
    why the site would mix the samples of a batch."""
    row = get_kind(kind)
    if row.batch_first is not None:
        return row.batch_first(options, list(axes), list(ndims))
    a = _common(axes)
    if isinstance(a, Lost):
        raise ValueError("its inputs hold the batch on different axes: it would mix the samples of a batch")
    # inputs broadcast to one shape: static ones move with the dynamic ones
    return options, [a] * len(axes), a
