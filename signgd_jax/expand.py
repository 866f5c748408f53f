"""Sites a dynamics takes apart before converting: a LayerNorm or a max-pooling as the
reference's neurons.

A LayerNorm written with ``signgd_jax.nn.LayerNorm`` (or ``flax.linen.LayerNorm``, recognised)
is one ``layer_norm`` site. Improved mode converts it as one vector neuron per element, whose
target is the normalised vector itself. Paper mode reproduces the reference implementation,
which has no such neuron: there the site becomes :func:`signgd_jax.nn.decomposed_layer_norm`
(a square neuron on the centred values, their mean plus ``eps``, an ``x1/sqrt(x2)`` neuron).
Likewise a max-pooling (``signgd_jax.nn.max_pool``, ``reduce_window_max``, ``reduce_max``, or
``flax.linen.max_pool`` / ``jnp.max`` recognised) is one ``max_pool`` site, a vector neuron per
pooled output in improved mode; paper mode and the ``if`` baseline (whose max of spikes is a
``maximum`` site) take it apart into the chain of binary max neurons, one axis after the other
(``reduce_window_max(..., chain=True)``).

:class:`ExpandedApply` does that rewrite on the traced program: it evaluates the network with
the interpreter and re-emits every site as it is, except the expanded kinds, which are emitted
as their decomposition, each under its module path (so the sites keep their names' paths). The
result is an ordinary ``apply_fn(variables, x)``, so ``convert``, ``simulate`` and the
measurements all see the same sites.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from signgd_jax import interpret
from signgd_jax.nn import decomposed_layer_norm, reduce_window_max, site_p
from signgd_jax.types import site_path


def _layer_norm_parts(options: dict, x):
    return decomposed_layer_norm(x, options["axis"], options["epsilon"], options["normalized_scale"])


def _max_pool_parts(options: dict, x):
    return reduce_window_max(x, options["window_dimensions"], options["window_strides"], options["padding"],
                             chain=True)


# kind -> (whether a site of it is taken apart, given its options; its decomposition)
EXPANSIONS: dict[str, tuple[Callable, Callable]] = {
    "layer_norm": (lambda options: options.get("normalized_scale") is not None, _layer_norm_parts),
    "max_pool": (lambda options: True, _max_pool_parts),
}


@dataclasses.dataclass(frozen=True)
class ExpandedApply:
    """``apply_fn`` with the sites of ``kinds`` replaced by their decomposition (hashable, equal
    for equal models, so equal conversions share ``simulate``'s compilation)."""

    apply_fn: Callable
    kinds: tuple

    def _site(self, name, kind, options, inputs):
        with jax.named_scope(site_path(name)):
            if kind in self.kinds:
                applies, parts = EXPANSIONS[kind]
                if applies(options):
                    return parts(options, *inputs)
            return site_p.bind(*inputs, kind=kind, options=tuple(sorted(options.items())))

    def __call__(self, variables, x):
        run, leaves = interpret.traced(self.apply_fn, variables, x)
        return run(leaves, x, self._site)


def expanded(apply_fn: Callable, kinds: tuple) -> Callable:
    """``apply_fn`` with the sites of ``kinds`` taken apart (itself when ``kinds`` is empty)."""
    return ExpandedApply(apply_fn, tuple(kinds)) if kinds else apply_fn
