"""Faster XLA:CPU forms of two kinds of convolution, as a sum of shifted, scaled slices.

    y[..., h, w, :] = sum_{i, j} x_pad[..., h*s_h + i, w*s_w + j, :] (*) kernel[i, j]

``(*)`` is a per-channel product for a depthwise kernel ``(kh, kw, 1, C)`` and a contraction over
the few input channels for a narrow kernel ``(kh, kw, C_in, C_out)`` with ``kh kw C_in <= 27``
(a 3x3 convolution of a 1- or 3-channel image: the first layer of MNIST and CIFAR networks).
XLA:CPU runs both kinds slowly as convolutions: the grouped (depthwise) one 10-30x slower than
this form, the narrow one as a matrix product with at most 27-long rows whose output goes to
memory. Written as slices, XLA fuses the sum into whatever consumes it, e.g. the neuron of the
next site, and the convolution's output never goes through memory (resnet_mini, batch 128:
8.4 -> 4.8 ms per simulation step and 7.0 -> 4.8 ms per ANN forward, ``benchmarks/simulate.py``).
Both forms are linear in ``x`` and equal the convolution up to float rounding (summation order).

:func:`cpu_conv_rule` applies them to a traced network as an ``interpret.run`` affine rule; the
simulation uses it on CPU, and :func:`cpu_forward` compiles an ANN the same way.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from signgd_jax import interpret

# A dense convolution is rewritten when its patch has at most this many taps (3x3 over RGB).
NARROW_TAPS = 27
_NHWC = (0, 3, 1, 2)
_HWIO = (3, 2, 0, 1)


def shifted_sum_conv(x, kernel, strides: Sequence[int], padding: Sequence[tuple[int, int]]):
    """The NHWC convolution of ``x`` with an HWIO ``kernel``, depthwise when ``kernel.shape[2] == 1``
    and ``x`` has more channels, as a sum of shifted slices (module docstring); no bias."""
    kh, kw, c_in, _ = kernel.shape
    (sh, sw), ((ph, qh), (pw, qw)) = strides, padding
    # lax.pad rather than jnp.pad: one plain `pad` equation, no nested jit, in a traced jaxpr.
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] * (x.ndim - 3) + [(ph, qh, 0), (pw, qw, 0), (0, 0, 0)])
    out_h = (x.shape[-3] - kh) // sh + 1
    out_w = (x.shape[-2] - kw) // sw + 1
    depthwise = c_in == 1 and x.shape[-1] > 1
    y = None
    for i in range(kh):
        for j in range(kw):
            window = x[..., i: i + (out_h - 1) * sh + 1: sh, j: j + (out_w - 1) * sw + 1: sw, :]
            if depthwise:
                terms = [window * kernel[i, j, 0]]
            else:
                terms = [window[..., c: c + 1] * kernel[i, j, c] for c in range(c_in)]
            for term in terms:
                y = term if y is None else y + term
    return y


def _shifted_form_applies(params, x_shape, kernel_shape) -> bool:
    """A plain 2-D NHWC/HWIO convolution that is depthwise, or narrow and either 1x1 or with
    overlapping windows. Patchify convolutions (kernel = stride) are left alone: the fused form
    was measured slower there (ResMLP's stem), being recomputed in each of its consumers."""
    dims = params["dimension_numbers"]
    layout = (tuple(dims.lhs_spec), tuple(dims.rhs_spec), tuple(dims.out_spec))
    dilated = any(d != 1 for d in (*params["lhs_dilation"], *params["rhs_dilation"]))
    if len(kernel_shape) != 4 or layout != (_NHWC, _HWIO, _NHWC) or params["batch_group_count"] != 1 or dilated:
        return False
    kh, kw, c_in, c_out = kernel_shape
    groups = params["feature_group_count"]
    if groups > 1:
        return c_in == 1 and groups == x_shape[-1] == c_out
    overlapping = any(s < k for s, k in zip(params["window_strides"], (kh, kw)))
    return kh * kw * c_in <= NARROW_TAPS and (overlapping or kh * kw == 1)


def cpu_conv_rule(eqn, values, dynamic):
    """``interpret.run`` affine rule: suitable convolutions of a dynamic input with a static
    kernel in the shifted-sum form, anything else ``None`` (evaluated as it is)."""
    if eqn.primitive.name != "conv_general_dilated" or dynamic[1] or not dynamic[0]:
        return None
    x, kernel = values
    params = eqn.params
    if not _shifted_form_applies(params, x.shape, kernel.shape):
        return None
    y = shifted_sum_conv(x, kernel, params["window_strides"], params["padding"])
    return [y.astype(eqn.outvars[0].aval.dtype)]


def cpu_forward(apply_fn: Callable) -> Callable:
    """``apply_fn(variables, x)`` evaluated with :func:`cpu_conv_rule` (same values, up to rounding),
    for models built on :mod:`signgd_jax.nn`; jit it like ``apply_fn``."""

    def forward(variables, x):
        return interpret.evaluate(apply_fn, variables, x, interpret.ann_site, affine_rule=cpu_conv_rule)

    return forward


def platform_of(*trees) -> str:
    """The platform of the first concrete array in ``trees``, else JAX's default backend."""
    for leaf in jax.tree_util.tree_leaves(trees):
        devices = getattr(leaf, "devices", None)
        if callable(devices) and not isinstance(leaf, jax.core.Tracer):
            return next(iter(devices())).platform
    return jax.default_backend()
