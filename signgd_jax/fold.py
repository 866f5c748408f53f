"""BatchNorm folding: an eval-mode BatchNorm right after a Conv or Dense is one affine map.

``BN(conv(x; W, b)) = conv(x; W * k, b * k) + beta - mean * k`` with
``k = scale / sqrt(var + eps)``. The layer absorbs ``k``; the BatchNorm module keeps only the
shift ``beta - mean * k`` (stored as its ``bias``; its ``scale`` and running statistics are
dropped) and is applied as a plain add, so the model definition is unchanged and no layer
needs a bias it did not have.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import unfreeze


def _find_pairs(apply_fn, variables, sample):
    """(producer module, BatchNorm module) pairs where the BN input is the producer's output."""
    producers, pairs = {}, []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__":
            if isinstance(module, (nn.Conv, nn.Dense)):
                producers[id(out)] = (out, module)
            elif isinstance(module, nn.BatchNorm) and args and id(args[0]) in producers:
                producer = producers[id(args[0])][1]
                if producers[id(args[0])][0] is args[0]:
                    pairs.append((producer.path, module.path, module.epsilon))
        return out

    with nn.intercept_methods(record):  # a new function object: JAX's trace cache would skip `record`
        jax.eval_shape(lambda v, x: apply_fn(v, x), variables, sample[:1])
    return pairs


def _node(tree, path):
    for name in path:
        tree = tree[name]
    return tree


@dataclasses.dataclass(frozen=True)
class FoldedApply:
    """``apply_fn`` with the BatchNorms at ``folded_paths`` applied as ``x + bias`` (hashable,
    equal for equal models, so equal conversions share ``simulate``'s compilation)."""

    apply_fn: Callable
    folded_paths: frozenset

    def _shift_only(self, next_fun, args, kwargs, context):
        module = context.module
        if (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"
                and module.path in self.folded_paths):
            return args[0] + module.get_variable("params", "bias")
        return next_fun(*args, **kwargs)

    def __call__(self, variables, x):
        with nn.intercept_methods(self._shift_only):
            return self.apply_fn(variables, x)


def folded_apply_fn(apply_fn, folded_paths) -> FoldedApply:
    return FoldedApply(apply_fn, frozenset(folded_paths))


def fold_batch_norm(model, variables, sample, apply_fn):
    """Returns ``(folded_variables, folded_apply_fn)``; unchanged for models without BatchNorm.

    The folded network is checked against the original on ``sample`` (relative difference
    at most 1e-4); a pattern the folder misreads is left unfolded with a warning.
    """
    if not isinstance(model, nn.Module) or "batch_stats" not in variables:
        return variables, apply_fn
    pairs = _find_pairs(apply_fn, variables, sample)
    if not pairs:
        return variables, apply_fn
    new = jax.tree_util.tree_map(lambda a: a, unfreeze(variables))
    for producer_path, bn_path, eps in pairs:
        layer = _node(new["params"], producer_path)
        bn_params = _node(new["params"], bn_path)
        stats = _node(new["batch_stats"], bn_path)
        k = bn_params.get("scale", 1.0) * jax.lax.rsqrt(stats["var"] + eps)
        layer["kernel"] = layer["kernel"] * k
        if "bias" in layer:
            layer["bias"] = layer["bias"] * k
        bn_params["bias"] = bn_params.get("bias", 0.0) - stats["mean"] * k
        bn_params.pop("scale", None)
        parent = _node(new["batch_stats"], bn_path[:-1])
        parent.pop(bn_path[-1])
    folded_fn = folded_apply_fn(apply_fn, [bn for _, bn, _ in pairs])
    x = jnp.asarray(sample)
    before, after = apply_fn(variables, x), folded_fn(new, x)
    if isinstance(before, jax.core.Tracer):  # abstract conversion (jax.eval_shape): nothing to check
        return new, folded_fn
    scale = float(jnp.max(jnp.abs(before))) + 1e-6
    if float(jnp.max(jnp.abs(before - after))) > 1e-4 * scale:
        warnings.warn("BatchNorm folding changed the network output; BatchNorm left unfolded")
        return variables, apply_fn
    return new, folded_fn
