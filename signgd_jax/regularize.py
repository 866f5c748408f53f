"""Conversion-aware training: keep neuron targets inside the range signGD can reach.

In paper mode an output estimate starts at ``v_0 = 0`` and moves at most ``sum(eta_t)`` (2.89 by
T=64, 3.0 in the limit). ReLUs are rescaled to [0, 1] by the converter, but GELU, LayerNorm's
square and ``x1/sqrt(x2)``, max, exp, ... are not: a target ``phi(x)`` beyond the range is
never reached and the SNN saturates. Networks without normalisation (ResMLP) grow such
targets freely. The penalty

    R = sum over sites k not in ``exclude`` of mean_i relu(|phi_k(x_i)| - bound)**2

added to the training loss (``loss + lam * R``) keeps them within ``bound``; it is zero for a
network already in range, so it changes nothing where nothing needs changing.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from signgd_jax import interpret
from signgd_jax.nn import ann_op


def with_range_penalty(apply_fn: Callable, bound: float = 2.5, exclude: Sequence[str] = ("relu",)):
    """``apply_fn(variables, x, **kwargs)`` returning ``(outputs, R)`` (see the module docstring).

    Works for any function whose nonlinearities are ``signgd_jax.nn`` sites (plain relu
    included), in training mode too (BatchNorm batch statistics are evaluated as they are).
    ``exclude`` lists the site kinds left unpenalised: relu by default, since the converter
    rescales it.
    """

    def penalised(variables, x, **kwargs):
        closed, out_shape = jax.make_jaxpr(lambda v, z: apply_fn(v, z, **kwargs), return_shape=True)(variables, x)
        terms = []

        def on_site(name, kind, options, inputs):
            out = ann_op(kind, options)(*inputs)
            if kind not in exclude:
                excess = jax.nn.relu(jnp.abs(out.astype(jnp.float32)) - bound)
                terms.append(jnp.mean(jnp.square(excess)))
            return out

        leaves = jax.tree_util.tree_leaves(variables)
        outs, _ = interpret.run(closed, [*leaves, x], [False] * len(leaves) + [True], on_site, strict=False)
        penalty = sum(terms) if terms else jnp.zeros((), jnp.float32)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs), penalty

    return penalised
