"""Runs a traced network with its nonlinearity sites handled by a caller-supplied function.

The converter and the simulator never edit a model: they trace it once to a jaxpr and
evaluate that jaxpr here, in three stages.

1. *Flatten* (:func:`flatten`): calls (``jit``, ``closed_call``, ``remat``/``checkpoint``,
   ``custom_jvp_call``, ``custom_vjp_call``) are inlined and ``scan`` (``lax.scan``,
   ``nn.scan``, ``lax.fori_loop`` with Python-int bounds) is unrolled, so every loop iteration
   gets its own sites. Every other primitive that carries a sub-program (``while``, ``cond``,
   ``shard_map``, ...) stays one operation: it is evaluated as it is when no network activation
   flows into it, and refused by name when one does. Nothing is run "once as a call".
2. *Recognise* (:mod:`signgd_jax.recognize`): standard operations (``jax.nn.gelu``,
   ``flax.linen.LayerNorm``, ``nn.max_pool``, ``x * x``, ...) become the ``signgd_jax.nn``
   sites they stand for.
3. *Evaluate*: ordinary equations are evaluated as they are; each site is handed to
   ``on_site(name, kind, options, inputs)``, which returns the value that flows on (the ANN
   value while calibrating, ones or zeros in the probe pass, a neuron's output in the SNN
   step); ``name`` is the site's key in ``SNN.sites`` (:func:`signgd_jax.types.site_name`: its
   evaluation index, kind and Flax module path). Values are tagged *dynamic* when they depend
   on the network input; a nonlinear operation on a dynamic value that is not a site raises
   :class:`UnsupportedOperation` naming the primitive, the Flax module path and the user's
   source line. Every site is called with the image batch first in its inputs and output,
   wherever the program holds it (:mod:`signgd_jax.batch_axes`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Literal

from signgd_jax import batch_axes as batch
from signgd_jax.program import Op, Program, _carries_program, dynamic_flags, flatten  # noqa: F401 (re-exported)
from signgd_jax import recognize
from signgd_jax.kinds import get as get_kind
from signgd_jax.nn import SITE_KINDS, ann_op, site_p
from signgd_jax.types import site_name


class UnsupportedOperation(ValueError):
    """A nonlinear operation between the network input and its output that has no neuron.

    Its message's first line names the operation refused, where it is (Flax module path and
    source line) and what to write instead; a refused operation's second line lists what is
    supported (:data:`SUPPORTED_TEXT`).
    """


# Operations that are affine in their dynamic operands whatever the static ones are.
_LINEAR = {
    "add", "sub", "neg", "add_any", "reshape", "broadcast_in_dim", "transpose", "squeeze",
    "expand_dims", "reduce_sum", "slice", "rev", "convert_element_type", "copy", "copy_p",
    "concatenate", "reduce_precision", "cumsum", "reduce_window_sum", "sharding_constraint",
    "mesh_cast", "reshard", "pvary", "optimization_barrier", "stop_gradient",
}
# Affine only when the listed operand positions are static.
_STATIC_OPERANDS = {
    "pad": (1,), "select_n": (0,), "dynamic_slice": "tail", "gather": (1,), "div": (1,),
    "dynamic_update_slice": "tail2",
}
# Bilinear operations: affine when at most one operand is dynamic.
_BILINEAR = {"mul", "dot_general", "conv_general_dilated"}
# Sub-program primitives refused on activations, with what to write instead.
_REFUSED_CONTROL = {
    "while": "lax.while_loop (or lax.fori_loop with traced bounds): its trip count is not fixed when "
             "converting; use lax.fori_loop with Python-int bounds, lax.scan or nn.scan",
    "cond": "lax.cond / lax.switch on network activations: a spiking network has no branches; "
            "compute both sides and combine them, or branch on a Python value",
}
SUPPORTED_TEXT = (
    "supported: " + recognize.SUPPORTED_TEXT + "; signgd_jax.nn sites (" + ", ".join(SITE_KINDS) + "); "
    "between them only affine operations (dense, conv, BatchNorm in eval mode, adds, means, average "
    "pooling, reshapes, padding, slicing); loops: lax.scan, nn.scan, lax.fori_loop with Python-int bounds"
)


def _affine_ok(name: str, dynamic: Sequence[bool]) -> bool:
    if name in _STATIC_OPERANDS:
        positions = _STATIC_OPERANDS[name]
        if positions == "tail":
            positions = range(1, len(dynamic))
        elif positions == "tail2":
            positions = range(2, len(dynamic))
        return not any(dynamic[i] for i in positions)
    if name in _LINEAR:
        return True
    if name in _BILINEAR:
        return sum(dynamic) <= 1
    return False


# operations whose operands must share one dtype: a program traced in float32 and replayed with
# reduced-precision values (simulate(..., dtype=bfloat16)) meets its float32 constants here
_SAME_DTYPE = frozenset({"mul", "add", "sub", "div", "max", "min", "add_any", "pow", "dot_general",
                         "conv_general_dilated", "select_n", "atan2", "rem"})


def _same_float_dtype(values):
    """The floating operands in the narrowest floating dtype among them (unchanged if they agree)."""
    floats = {np.dtype(v.dtype) for v in values if hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating)}
    if len(floats) < 2:
        return values
    narrow = min(floats, key=lambda d: jnp.finfo(d).bits)
    return [v.astype(narrow) if hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating) else v for v in values]


def _bind(eqn, values):
    if eqn.primitive.name in _SAME_DTYPE:
        values = _same_float_dtype(values)
    params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(params, tuple):  # older JAX: (subfuns, params)
        subfuns, params = params
        values = (*subfuns, *values)
    out = eqn.primitive.bind(*values, **params)
    return out if eqn.primitive.multiple_results else [out]


# ----------------------------------------------------------------------------- errors
def describe(eqn, path: tuple | None = None) -> str:
    """Where an equation comes from: ``in module 'Net/Block_0/Dense_1' at file.py:12 (fn)``; the
    module path is ``path`` (an :class:`Op`'s, whole through calls and loops) when given, else
    the equation's own name stack."""
    if eqn is None:
        return ""
    parts = []
    try:
        stack = str(eqn.source_info.name_stack) if path is None else "/".join(path)
        if stack:
            parts.append(f"in module '{stack}'")
    except Exception:  # noqa: BLE001 - location is a courtesy, never an error of its own
        pass
    try:
        from jax._src import source_info_util
        frame = source_info_util.user_frame(eqn.source_info.traceback)
        if frame is not None:
            parts.append(f"at {frame.file_name}:{frame.start_line} ({frame.function_name})")
    except Exception:  # noqa: BLE001
        pass
    return (" " + " ".join(parts)) if parts else ""


def _refuse(op: Op):
    """Raises :class:`UnsupportedOperation`: one short line (what, where, what to do), then the
    list of what is supported on a line of its own."""
    name = op.name
    where = describe(op.eqn, op.path)
    if name in _REFUSED_CONTROL:
        first = f"cannot convert '{name}'{where}: {_REFUSED_CONTROL[name]}"
    elif op.eqn is not None and _carries_program(op.eqn):
        first = (f"cannot convert '{name}'{where}: a sub-program primitive the converter does not unroll "
                 "is applied to network activations; compute it from constants only, or write it with the "
                 "supported operations (next line)")
    else:
        hint = recognize.HINTS.get(name, "no neuron kind computes it")
        first = (f"cannot convert operation '{name}' applied to network activations{where}: {hint}; "
                 "write it with the supported operations (next line)")
    raise UnsupportedOperation(f"{first}\n{SUPPORTED_TEXT}")


# ----------------------------------------------------------------------------- evaluation
def _abstract(value):
    return jax.ShapeDtypeStruct(np.shape(value), jnp.result_type(value))


def _run_substitute(fn, op, values, dyn, axes, on_site, counter, affine_rule, strict):
    """Evaluates ``fn`` (written with ``signgd_jax.nn``) through this interpreter in place of
    ``op``, whose output shapes and module path it takes; ``axes``: the batch axes of ``values``."""
    closed = jax.make_jaxpr(fn)(*[_abstract(v) for v in values])
    outs, out_dyn = run(closed, list(values), list(dyn), on_site, counter, affine_rule, strict, batch_axes=axes,
                        path=op.path)
    fixed = []
    for out, aval in zip(outs, [v.aval for v in op.eqn.outvars]):
        out = jnp.asarray(out)
        if out.shape != tuple(aval.shape):
            out = jnp.broadcast_to(out, aval.shape)
        fixed.append(out.astype(aval.dtype))
    return fixed, out_dyn


def run(closed: ClosedJaxpr, args: Sequence, dynamic: Sequence[bool], on_site: Callable,
        counter: list | None = None, affine_rule: Callable | None = None, strict: bool = True,
        recognize_ops: bool | None = None, batch_axes: Sequence | None = None, path: tuple = ()):
    """Evaluates ``closed`` on ``args``; returns ``(outputs, output_is_dynamic)``.

    ``counter`` numbers the sites in evaluation order, which is the same for every trace of
    one model, so a site's name (its index, kind and module path) identifies it across batch
    sizes and passes; ``path``: the module path ``closed`` was traced in (see
    :func:`signgd_jax.program.flatten`).
    ``affine_rule(eqn, values, dynamic)``, if given, evaluates the affine equations on dynamic
    values instead (returning their outputs, or None for the ordinary evaluation).
    With ``strict=False`` other nonlinear operations on dynamic values are evaluated as they
    are instead of raising (for training-time passes, e.g. BatchNorm in training mode).
    ``recognize_ops`` (default: ``strict``) turns standard operations into sites
    (:mod:`signgd_jax.recognize`); without it only ``signgd_jax.nn`` sites and ``max(x, 0)`` are.
    ``batch_axes``: the axis of each argument holding the image batch (default: 0 for the
    dynamic ones); every site is called with the batch first in its inputs and output
    (:mod:`signgd_jax.batch_axes`), and, when ``strict``, a site that would mix the samples of a
    batch, or whose input's batch axis cannot be followed, is refused.
    """
    counter = [0] if counter is None else counter
    recognize_ops = strict if recognize_ops is None else recognize_ops
    program = flatten(closed, path)
    flags = dynamic_flags(program, dynamic)
    if strict:
        _refuse_dynamic_control(program, flags)
    if batch_axes is None:
        batch_axes = [(0 if np.ndim(a) else batch.Lost("a scalar input")) if d else None for a, d in zip(args, dynamic)]
    axes = batch.propagate(program, batch_axes)
    plan = recognize.plan(program, flags) if recognize_ops else recognize.Plan()
    env = dict(program.consts)
    env_dyn = {r: False for r in program.consts}
    for r, arg, dyn in zip(program.invars, args, dynamic):
        env[r], env_dyn[r] = arg, dyn

    def read(r):
        if isinstance(r, Literal):
            return r.val, False
        return env[r], env_dyn[r]

    def axes_of(refs):
        return [None if isinstance(r, Literal) else axes.get(r) for r in refs]

    for position, op in enumerate(program.ops):
        if position in plan.skip:
            continue
        if position in plan.substitutes:
            sub = plan.substitutes[position]
            sub_values, sub_dyn = zip(*[read(r) for r in sub.ins])
            outs, out_dyn = _run_substitute(sub.fn, op, sub_values, sub_dyn, axes_of(sub.ins), on_site, counter,
                                            affine_rule, strict)
            for r, out, d in zip(op.outs, outs, out_dyn):
                env[r], env_dyn[r] = out, d
            continue
        values, dyn = zip(*[read(r) for r in op.ins]) if op.ins else ((), ())
        name = op.name
        if not any(dyn):
            outs, out_dyn = (op.fn(*values) if op.fn is not None else _bind(op.eqn, values)), False
        elif op.fn is not None:
            outs, out_dyn = op.fn(*values), True
        elif op.eqn.primitive is site_p:
            outs, out_dyn = [_run_site(op, values, on_site, counter, axes_of(op.ins), strict)], True
        elif (rule := recognize.elementary(op, values, dyn, recognize_ops)) is not None:
            outs, _ = _run_substitute(rule, op, values, dyn, axes_of(op.ins), on_site, counter, affine_rule, strict)
            out_dyn = True
        elif _affine_ok(name, dyn):
            outs = affine_rule(op.eqn, values, dyn) if affine_rule else None
            outs, out_dyn = (_bind(op.eqn, values) if outs is None else outs), True
        elif not strict:
            outs, out_dyn = _bind(op.eqn, values), True
        else:
            _refuse(op)
        out_dyn = out_dyn if isinstance(out_dyn, (list, tuple)) else [out_dyn] * len(op.outs)
        for r, out, d in zip(op.outs, outs, out_dyn):
            env[r], env_dyn[r] = out, d

    results = [read(r) for r in program.outvars]
    return [r[0] for r in results], [r[1] for r in results]


def _refuse_dynamic_control(program, flags) -> None:
    """Control flow on activations is refused before anything runs, by its name."""
    for op in program.ops:
        if op.name in _REFUSED_CONTROL and any(flags.get(r, False) for r in op.ins if not isinstance(r, Literal)):
            _refuse(op)


def _run_site(op, values, on_site: Callable, counter: list, axes, strict: bool):
    """The output of a ``signgd_jax.nn`` site equation: numbered by ``counter``, named with its
    module path (:func:`signgd_jax.types.site_name`), its inputs given to ``on_site`` with the
    batch first (the output moved back to the batch's axis);
    UnsupportedOperation, when ``strict``, for inputs its kind's check refuses."""
    index = counter[0]
    counter[0] += 1
    kind, options = op.eqn.params["kind"], dict(op.eqn.params["options"])
    options, values, out_axis = _batch_first(op, kind, options, values, axes, strict)
    check = get_kind(kind).check
    problem = check(options, [np.shape(v) for v in values]) if check is not None and strict else None
    if problem:
        raise UnsupportedOperation(f"cannot convert site '{kind}'{describe(op.eqn, op.path)}: {problem}")
    out = on_site(site_name(index, kind, op.path), kind, options, list(values))
    return out if not out_axis else jnp.moveaxis(out, 0, out_axis)


def _batch_first(op, kind, options, values, axes, strict):
    """The site's options and inputs with the batch first, and where its output holds the batch
    (:func:`signgd_jax.batch_axes.site_layout`); unchanged when not ``strict`` and the layout
    is unknown or mixes samples (training-time passes)."""
    lost = next((a for a in axes if isinstance(a, batch.Lost)), None)
    try:
        if lost is not None:
            raise ValueError(f"the batch axis of its input cannot be followed past '{lost.name}'"
                             f"{describe(lost.eqn)} (the batch was reduced, contracted, sliced or merged "
                             "with another axis)")
        options, moves, out_axis = batch.site_layout(kind, options, axes, [np.ndim(v) for v in values])
    except ValueError as problem:
        if strict:
            raise UnsupportedOperation(f"cannot convert site '{kind}'{describe(op.eqn, op.path)}: {problem}") from None
        return options, values, 0
    values = [v if not m else jnp.moveaxis(v, m, 0) for v, m in zip(values, moves)]
    return options, values, out_axis


def ann_site(name: str, kind: str, options: dict, inputs: Sequence):
    """``on_site`` that evaluates every site as the ANN does (the network unchanged)."""
    return ann_op(kind, options)(*inputs)


def trace(apply_fn: Callable, variables, example_input) -> ClosedJaxpr:
    """The jaxpr of ``apply_fn(variables, x)`` for the shapes of ``example_input``."""
    shape = jax.ShapeDtypeStruct(np.shape(example_input), jax.numpy.result_type(example_input))
    abstract_vars = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), variables)
    return jax.make_jaxpr(apply_fn)(abstract_vars, shape)


def traced(apply_fn: Callable, variables, example_input):
    """``(run, leaves)``: ``apply_fn(variables, x)`` traced once at the shape of
    ``example_input``, with ``run(leaves, x, on_site, affine_rule=None)`` evaluating that trace
    on the variables' ``leaves`` and the input ``x``, every site handed to ``on_site``; ``run``
    returns the network's output, a ValueError unless it is one array of logits."""
    closed = trace(apply_fn, variables, example_input)
    leaves = jax.tree_util.tree_leaves(variables)

    def run_traced(leaves, x, on_site: Callable, affine_rule: Callable | None = None):
        outs, _ = run(closed, [*leaves, x], [False] * len(leaves) + [True], on_site, None, affine_rule)
        if len(outs) != 1:
            raise ValueError(f"the network must return one array of logits, got {len(outs)} outputs")
        return outs[0]

    return run_traced, leaves


def evaluate(apply_fn: Callable, variables, x, on_site: Callable, affine_rule: Callable | None = None):
    """``apply_fn(variables, x)`` with every site replaced by ``on_site``; returns the output."""
    run_traced, leaves = traced(apply_fn, variables, x)
    return run_traced(leaves, x, on_site, affine_rule)
