"""Runs a traced network with its nonlinearity sites handled by a caller-supplied function.

The converter and the simulator never edit a model: they trace it once to a jaxpr and
evaluate that jaxpr here. Ordinary equations are evaluated as they are; each site (see
``signgd_jax.nn``) is handed to ``on_site(index, kind, options, inputs)``, which returns the
value that flows on (the ANN value while calibrating, ones or zeros in the probe pass, a
neuron's output in the SNN step). Values are tagged *dynamic* when they depend on the network
input; a nonlinear operation on a dynamic value that is not a site cannot be converted and is
reported by name.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from signgd_jax.nn import SITE_KINDS, ann_op, site_p


class UnsupportedOperation(ValueError):
    """A nonlinear operation between the network input and its output that has no neuron."""


# Operations that are affine in their dynamic operands whatever the static ones are.
_LINEAR = {
    "add", "sub", "neg", "add_any", "reshape", "broadcast_in_dim", "transpose", "squeeze",
    "expand_dims", "reduce_sum", "slice", "rev", "convert_element_type", "copy", "copy_p",
    "concatenate", "reduce_precision", "cumsum", "reduce_window_sum", "sharding_constraint",
    "mesh_cast", "reshard", "pvary", "optimization_barrier",
}
# Affine only when the listed operand positions are static.
_STATIC_OPERANDS = {
    "pad": (1,), "select_n": (0,), "dynamic_slice": "tail", "gather": (1,), "div": (1,),
}
# Bilinear operations: affine when at most one operand is dynamic.
_BILINEAR = {"mul", "dot_general", "conv_general_dilated"}
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_HINTS = {
    "max": "use signgd_jax.nn.maximum / relu", "reduce_window_max": "use signgd_jax.nn.max_pool",
    "rsqrt": "use signgd_jax.nn.LayerNorm / layer_norm", "sqrt": "use signgd_jax.nn.rsqrt_mul",
    "tanh": "use signgd_jax.nn.gelu", "erf": "use signgd_jax.nn.gelu", "logistic": "use signgd_jax.nn.gelu",
    "exp": "use signgd_jax.nn.exp", "integer_pow": "use signgd_jax.nn.square", "abs": "use signgd_jax.nn.abs",
}
SUPPORTED_TEXT = (
    "supported nonlinearities: signgd_jax.nn sites (" + ", ".join(SITE_KINDS) + "), signgd_jax.nn.max_pool, "
    "signgd_jax.nn.LayerNorm/layer_norm and plain relu (max(x, 0)); between them only affine operations "
    "(dense, conv, BatchNorm in eval mode, adds, means, reshapes, padding, slicing)"
)


def _is_zero_literal(var) -> bool:
    return isinstance(var, Literal) and np.ndim(var.val) == 0 and float(var.val) == 0.0


def _affine_ok(name: str, dynamic: Sequence[bool]) -> bool:
    if name in _LINEAR:
        return True
    if name in _BILINEAR:
        return sum(dynamic) <= 1
    if name in _STATIC_OPERANDS:
        positions = _STATIC_OPERANDS[name]
        positions = range(1, len(dynamic)) if positions == "tail" else positions
        return not any(dynamic[i] for i in positions)
    return False


def _sub_jaxpr(eqn):
    for key in _CALL_PARAMS:
        sub = eqn.params.get(key)
        if isinstance(sub, ClosedJaxpr):
            return sub
        if isinstance(sub, Jaxpr):
            return ClosedJaxpr(sub, ())
    return None


def _bind(eqn, values):
    params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(params, tuple):  # older JAX: (subfuns, params)
        subfuns, params = params
        values = (*subfuns, *values)
    out = eqn.primitive.bind(*values, **params)
    return out if eqn.primitive.multiple_results else [out]


def run(closed: ClosedJaxpr, args: Sequence, dynamic: Sequence[bool], on_site: Callable,
        counter: list | None = None, affine_rule: Callable | None = None, strict: bool = True):
    """Evaluates ``closed`` on ``args``; returns ``(outputs, output_is_dynamic)``.

    ``counter`` numbers the sites in evaluation order, which is the same for every trace of
    one model, so a site's index identifies it across batch sizes and passes.
    ``affine_rule(eqn, values, dynamic)``, if given, evaluates the affine equations on dynamic
    values instead (returning their outputs, or None for the ordinary evaluation).
    With ``strict=False`` other nonlinear operations on dynamic values are evaluated as they
    are instead of raising (for training-time passes, e.g. BatchNorm in training mode).
    """
    counter = [0] if counter is None else counter
    env = {}

    def read(var):
        if isinstance(var, Literal):
            return var.val, False
        return env[var]

    for var, const in zip(closed.jaxpr.constvars, closed.consts):
        env[var] = (const, False)
    for var, arg, dyn in zip(closed.jaxpr.invars, args, dynamic):
        env[var] = (arg, dyn)

    for eqn in closed.jaxpr.eqns:
        values, dyn = zip(*[read(v) for v in eqn.invars]) if eqn.invars else ((), ())
        name = eqn.primitive.name
        is_site = eqn.primitive is site_p
        relu_pattern = name == "max" and sum(dyn) == 1 and any(_is_zero_literal(v) for v in eqn.invars)
        if not any(dyn):
            outs, out_dyn = _bind(eqn, values), False
        elif is_site or relu_pattern:
            index = counter[0]
            counter[0] += 1
            if is_site:
                kind, options = eqn.params["kind"], dict(eqn.params["options"])
                inputs = list(values)
            else:
                kind, options = "relu", {}
                inputs = [values[dyn.index(True)]]
            outs, out_dyn = [on_site(index, kind, options, inputs)], True
        elif (sub := _sub_jaxpr(eqn)) is not None:
            outs, dyn_list = run(sub, values, dyn, on_site, counter, affine_rule, strict)
            out_dyn = any(dyn_list)
        elif _affine_ok(name, dyn):
            outs = affine_rule(eqn, values, dyn) if affine_rule else None
            outs, out_dyn = (_bind(eqn, values) if outs is None else outs), True
        elif not strict:
            outs, out_dyn = _bind(eqn, values), True
        else:
            hint = _HINTS.get(name)
            raise UnsupportedOperation(
                f"cannot convert operation '{name}' applied to network activations"
                + (f" ({hint})" if hint else "") + f"; {SUPPORTED_TEXT}"
            )
        for var, out in zip(eqn.outvars, outs):
            env[var] = (out, out_dyn)

    results = [read(v) for v in closed.jaxpr.outvars]
    return [r[0] for r in results], [r[1] for r in results]


def ann_site(index: int, kind: str, options: dict, inputs: Sequence):
    """``on_site`` that evaluates every site as the ANN does (the network unchanged)."""
    return ann_op(kind, options)(*inputs)


def trace(apply_fn: Callable, variables, example_input) -> ClosedJaxpr:
    """The jaxpr of ``apply_fn(variables, x)`` for the shapes of ``example_input``."""
    shape = jax.ShapeDtypeStruct(np.shape(example_input), jax.numpy.result_type(example_input))
    abstract_vars = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), variables)
    return jax.make_jaxpr(apply_fn)(abstract_vars, shape)


def evaluate(apply_fn: Callable, variables, x, on_site: Callable, affine_rule: Callable | None = None):
    """``apply_fn(variables, x)`` with every site replaced by ``on_site``; returns the output."""
    closed = trace(apply_fn, variables, x)
    leaves = jax.tree_util.tree_leaves(variables)
    outs, out_dyn = run(closed, [*leaves, x], [False] * len(leaves) + [True], on_site, None, affine_rule)
    if len(outs) != 1:
        raise ValueError(f"the network must return one array of logits, got {len(outs)} outputs")
    return outs[0]
