"""Convertible nonlinearities: the places where a trained network gets spiking neurons.

Every nonlinearity of a convertible model goes through one JAX primitive, ``signgd_site``.
Evaluated normally (eager, ``jit``, ``grad``, ``vmap``) it *is* the ANN operation, so a model
written with these functions trains like any Flax model. The converter traces the model to a
jaxpr, finds the sites, and replaces each one by a signGD neuron (see ``signgd_jax.dynamics``);
everything between sites must be affine in the network input (convolutions, dense layers,
BatchNorm in eval mode, residual adds, pooling by averaging, reshapes).

Elementary sites (one neuron per element; targets, tie rules and ranges are in
:mod:`signgd_jax.kinds`):

=============  ======  =========================================  =========================
kind           inputs  ANN operation                              neuron target ``phi``
=============  ======  =========================================  =========================
relu           1       ``max(x, 0)``                              same
leaky_relu     1       ``x if x >= 0 else a*x``                   same
gelu           1       exact / tanh GELU (``approximate``)        ``x*sigmoid(1.702 x)``
sigmoid        1       ``1 / (1 + exp(-x))``                      same
tanh           1       ``tanh(x)``                                same
silu           1       ``x * sigmoid(x)``                         same
abs            1       ``|x|``                                    same
square         1       ``x**2``                                   same
exp            1       ``exp(x)``                                 same
qcfs           1       ``clip(floor(x*L + 1/2)/L, 0, 1)``         same (:func:`qcfs`)
maximum        2       ``max(x1, x2)``                            same
product        2       ``x1 * x2``                                same
rsqrt_mul      2       ``x1 / sqrt(x2)``                          same (fires only if x2>0)
divide         2       ``x1 / x2``                                same (compares x2*v, x1)
=============  ======  =========================================  =========================

Vector sites (one neuron per *output* element, whose target reads several input elements;
:mod:`signgd_jax.kinds` documents targets, tie rules and ranges; improved mode, except where
paper mode takes a site apart, see below):

=============  ======  =========================================  =========================
kind           inputs  ANN operation and target ``phi``           function
=============  ======  =========================================  =========================
softmax        1       ``jax.nn.softmax(x, axis)``                :func:`softmax`
layer_norm     1       ``(x - mean) / sqrt(var + eps)`` on axis   :func:`normalize`
max_pool       1       ``lax.reduce_window`` max (per-axis        :func:`max_pool`,
                       window, strides, padding)                  :func:`reduce_window_max`
bilinear       2       ``einsum(subscripts, x1, x2)``             :func:`einsum`, :func:`matmul`
=============  ======  =========================================  =========================

A bilinear site's inputs keep their own shapes; every other binary site broadcasts its inputs
to one shape.

Max-pooling and LayerNorm are one site each that every dynamics converts its own way:
improved mode as one vector neuron per output element, paper mode (and, for max-pooling, the
``if`` baseline) as the paper's decompositions over elementary sites (:mod:`signgd_jax.expand`):
binary max neurons, first along the height, then along the width (``max_pool(..., chain=True)``
writes them directly), and linear centring, a square neuron, a linear mean plus eps, an
``x1/sqrt(x2)`` neuron, a linear affine (:func:`decomposed_layer_norm`). Their ANN values
equal the usual operators to float tolerance.

A ``qcfs`` site (L = option ``levels``) is in threshold units; its ANN operation passes
gradients straight through the floor (:func:`qcfs` scales it by a trainable threshold).

Plain ``jax.nn.relu`` / ``flax.linen.relu`` (``max(x, 0)``) are recognised as ReLU sites too.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from signgd_jax.kinds import (  # noqa: F401 (re-exported)
    BINARY_KINDS,
    ELEMENTWISE_KINDS,
    KINDS,
    SITE_KINDS,
    UNARY_KINDS,
    VECTOR_KINDS,
    ann_op,
)


site_p = Primitive("signgd_site")


def _site_impl(*args, kind, options):
    return ann_op(kind, options)(*args)


def _site_abstract(*avals, kind, options):
    if KINDS[kind].elementwise:
        return jax.core.ShapedArray(avals[0].shape, avals[0].dtype)
    shape = jax.eval_shape(ann_op(kind, options), *[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals])
    return jax.core.ShapedArray(shape.shape, avals[0].dtype)


def _site_jvp(primals, tangents, *, kind, options):
    # Differentiation sees the plain ANN operation: training never needs the site marker.
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return jax.jvp(ann_op(kind, options), tuple(primals), tuple(tangents))


def _site_batch(args, dims, *, kind, options):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    moved = [jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    batched = KINDS[kind].batched_options
    if batched is not None:  # e.g. einsum subscripts gain a letter for the new leading axis
        options = tuple(sorted(batched(dict(options)).items()))
    return site_p.bind(*moved, kind=kind, options=options), 0


site_p.def_impl(_site_impl)
site_p.def_abstract_eval(_site_abstract)
mlir.register_lowering(site_p, mlir.lower_fun(_site_impl, multiple_results=False))
ad.primitive_jvps[site_p] = _site_jvp
batching.primitive_batchers[site_p] = _site_batch


def site(kind: str, *inputs, **options):
    """Binds one site; inputs of binary sites are broadcast to one shape, except for kinds whose
    inputs keep their own shapes (``Kind.own_shapes``: bilinear)."""
    if kind not in SITE_KINDS:
        raise ValueError(f"unknown site kind {kind!r}; supported: {', '.join(SITE_KINDS)}")
    expected = KINDS[kind].arity
    if len(inputs) != expected:
        raise ValueError(f"site {kind!r} takes {expected} input(s), got {len(inputs)}")
    inputs = [jnp.asarray(x) for x in inputs]
    dtype = jnp.result_type(*inputs)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    if KINDS[kind].own_shapes:
        inputs = [x.astype(dtype) for x in inputs]
    else:
        shape = jnp.broadcast_shapes(*[x.shape for x in inputs])
        inputs = [jnp.broadcast_to(x.astype(dtype), shape) for x in inputs]
    return site_p.bind(*inputs, kind=kind, options=tuple(sorted(options.items())))


# ----------------------------------------------------------------------------- functions
def relu(x):
    return site("relu", x)


def leaky_relu(x, negative_slope: float = 0.01):
    return site("leaky_relu", x, negative_slope=float(negative_slope))


def gelu(x, approximate: bool | str = True):
    """GELU whose neuron tracks ``x * sigmoid(1.702 x)`` (the paper's approximation).

    ``approximate``: True / 'tanh' (Flax's default), False / 'exact' (erf), or 'sigmoid'
    (the ANN then computes exactly what the neuron tracks).
    """
    mode = {True: "tanh", False: "exact"}.get(approximate, approximate)
    if mode not in ("tanh", "exact", "sigmoid"):
        raise ValueError(f"gelu approximate must be True, False, 'tanh', 'exact' or 'sigmoid', got {approximate!r}")
    return site("gelu", x, approximate=mode)


def sigmoid(x):
    return site("sigmoid", x)


def tanh(x):
    return site("tanh", x)


def silu(x):
    """``x * sigmoid(x)`` (swish)."""
    return site("silu", x)


def abs(x):  # noqa: A001 - mirrors jnp.abs
    return site("abs", x)


def square(x):
    return site("square", x)


def exp(x):
    return site("exp", x)


def qcfs(x, threshold, levels: int = 8):
    """QCFS, the quantisation-clip-floor-shift activation of Bu et al. (ICLR 2022):
    ``threshold * clip(floor(x / threshold * levels + 1/2) / levels, 0, 1)``.

    One ``qcfs`` site in threshold units (option ``levels``, L): the division by ``threshold``
    and the multiplication after the site are affine, so the converter sees the site on
    ``x / threshold``. The floor has a straight-through gradient (that of
    ``clip(x / threshold, 0, 1)``), so ``x`` and the (trainable) ``threshold`` get gradients;
    ``threshold`` may be a scalar or broadcast against ``x``.
    """
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels <= 0:
        raise ValueError(f"qcfs levels must be a positive integer, got {levels!r}")
    x = jnp.asarray(x)
    threshold = jnp.asarray(threshold, x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
    return site("qcfs", x / threshold, levels=int(levels)) * threshold


def maximum(x1, x2):
    return site("maximum", x1, x2)


def product(x1, x2):
    return site("product", x1, x2)


def rsqrt_mul(x1, x2):
    """``x1 / sqrt(x2)`` as one binary neuron (LayerNorm's normalisation)."""
    return site("rsqrt_mul", x1, x2)


def divide(x1, x2):
    return site("divide", x1, x2)


def _negative_axes(axis, ndim: int) -> tuple[int, ...]:
    """``axis`` (an int or a sequence) as sorted negative axes: unchanged by a new leading axis."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if not axes or any(not -ndim <= a < ndim for a in axes):
        raise ValueError(f"axis {axis!r} is out of range for an array of {ndim} dimension(s)")
    return tuple(sorted({a % ndim - ndim for a in axes}))


def softmax(x, axis=-1):
    """``jax.nn.softmax(x, axis)`` as one vector neuron per output element."""
    x = jnp.asarray(x)
    return site("softmax", x, axis=_negative_axes(axis, x.ndim))


def normalize(x, axis=-1, epsilon: float = 1e-6):
    """LayerNorm's normalised vector ``(x - mean) / sqrt(var + eps)`` over ``axis`` (an int or a
    sequence of axes; mean and variance over all of them), without scale and shift: one
    ``layer_norm`` site with no ``normalized_scale``: one vector neuron per element, never taken
    apart into the square and ``x1/sqrt(x2)`` neurons of :func:`decomposed_layer_norm` (so the
    improved and ecmt dynamics convert it; paper, if and qcfs refuse it). ``layer_norm(...,
    vector_neuron=True)`` is this over the last axis, then scale and shift."""
    x = jnp.asarray(x)
    return site("layer_norm", x, axis=_negative_axes(axis, x.ndim), epsilon=float(epsilon))


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def explicit_subscripts(subscripts: str, shape1, shape2) -> str:
    """Two-operand einsum ``subscripts`` with ``...`` spelled out and an explicit output."""
    subscripts = subscripts.replace(" ", "")
    operands, arrow, output = subscripts.partition("->")
    parts = operands.split(",")
    if len(parts) != 2:
        raise ValueError(f"a bilinear site contracts exactly two operands, got subscripts {subscripts!r}")
    named = set(subscripts.replace("...", "").replace(",", "").replace("->", ""))
    if not named <= set(_LETTERS):
        raise ValueError(f"einsum subscripts must be letters, got {subscripts!r}")
    spare = [c for c in _LETTERS if c not in named]
    ranks = [len(shape1) - len(parts[0].replace("...", "")), len(shape2) - len(parts[1].replace("...", ""))]
    width = max([r for r, p in zip(ranks, parts) if "..." in p], default=0)
    dots = "".join(spare[:width])
    parts = [p.replace("...", dots[width - r:] if r else "") for p, r in zip(parts, ranks)]
    if not arrow:  # implicit output: the broadcast axes, then letters used once, in order
        once = sorted(c for c in set(parts[0] + parts[1]) if (parts[0] + parts[1]).count(c) == 1 and c not in dots)
        output = dots + "".join(once)
    output = output.replace("...", dots)
    for p, shape in zip(parts, (shape1, shape2)):
        if len(p) != len(shape):
            raise ValueError(f"einsum subscripts {subscripts!r} do not fit operand shapes "
                             f"{tuple(shape1)}, {tuple(shape2)}")
    return f"{parts[0]},{parts[1]}->{output}"


def einsum(subscripts: str, x1, x2):
    """``jnp.einsum(subscripts, x1, x2)`` of two activations as one bilinear vector neuron per
    output element (attention scores, attention-weighted values). The operands keep their own
    shapes; the batch axis must come first in both and in the output."""
    x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
    return site("bilinear", x1, x2, subscripts=explicit_subscripts(subscripts, x1.shape, x2.shape))


def matmul(x1, x2):
    """``x1 @ x2`` of two activations (batched over the leading axes, which must agree)."""
    x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
    if x1.ndim < 2 or x2.ndim < 2 or x1.ndim != x2.ndim:
        raise ValueError(f"matmul of activations needs operands of one rank >= 2, got {x1.shape} and {x2.shape}")
    return einsum("...ij,...jk->...ik", x1, x2)


def _pool_axis(x, axis: int, window: int, stride: int, pad: tuple[int, int]):
    """Max over windows along one axis as a chain of binary max neurons."""
    if pad != (0, 0):
        widths = [(0, 0)] * x.ndim
        widths[axis] = pad
        x = jnp.pad(x, widths, constant_values=-1e9)  # padding never wins a max
    count = (x.shape[axis] - window) // stride + 1

    def offset(k):
        start = [0] * x.ndim
        limit = list(x.shape)
        strides = [1] * x.ndim
        start[axis] = k
        limit[axis] = k + (count - 1) * stride + 1
        strides[axis] = stride
        return jax.lax.slice(x, start, limit, strides)

    out = offset(0)
    for k in range(1, window):
        out = maximum(out, offset(k))
    return out


def _pads(padding, window, size, stride):
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return (0, 0)
        if padding.upper() == "SAME":
            out = -(-size // stride)
            total = max((out - 1) * stride + window - size, 0)
            return (total // 2, total - total // 2)
        raise ValueError(f"padding must be 'VALID', 'SAME' or pairs, got {padding!r}")
    return tuple(padding)


def max_pool(x, window_shape: Sequence[int] = (2, 2), strides: Sequence[int] | None = None, padding="VALID",
             chain: bool = False):
    """Max-pooling of an NHWC array (the window over the axes after the batch), padding -1e9.

    Default: one ``max_pool`` site (:func:`reduce_window_max`), which improved mode converts as
    one vector neuron per pooled output, and paper mode and the ``if`` baseline as binary max
    neurons: first along H, then along W (for a 2x2 window row 2i meets row 2i+1, giving H/2,
    then column 2j meets column 2j+1; larger windows chain the pairs in the same order).
    ``chain=True``: always those binary max neurons.
    """
    x = jnp.asarray(x)
    strides = tuple(strides or window_shape)
    window_shape = tuple(window_shape)
    if len(window_shape) != len(strides) or len(window_shape) > x.ndim - 1:
        raise ValueError(f"max_pool of an array of shape {x.shape} needs one window size and stride per axis after "
                         f"the batch, got window_shape={window_shape}, strides={strides}")
    if isinstance(padding, str):
        pads = [_pads(padding, w, x.shape[1 + i], s) for i, (w, s) in enumerate(zip(window_shape, strides))]
    else:
        pads = [tuple(p) for p in padding]
    rest = x.ndim - 1 - len(window_shape)
    return reduce_window_max(x, (1, *window_shape) + (1,) * rest, (1, *strides) + (1,) * rest,
                             ((0, 0), *pads) + ((0, 0),) * rest, chain=chain)


def layer_norm(x, scale=None, bias=None, epsilon: float = 1e-6, normalized_scale: float = 1.0,
               vector_neuron: bool | None = None):
    """LayerNorm over the last axis: the normalised vector ``(x - mean) / sqrt(var + eps)``,
    then scale and shift (affine).

    ``vector_neuron=None`` (default): one ``layer_norm`` site that each dynamics converts its own
    way: improved mode as one vector neuron per element, paper mode as the reference's
    decomposition (:func:`decomposed_layer_norm`). ``True``: always the vector neuron
    (:func:`normalize`; paper mode refuses it). ``False``: always the decomposition.
    ``normalized_scale`` (a constant k) lets the decomposition's x1/sqrt(x2) neuron produce
    ``k * c/sqrt(.)`` and divides it out again after it: the same function, smaller targets.
    """
    x = jnp.asarray(x)
    if vector_neuron is None:
        y = site("layer_norm", x, axis=(-1,), epsilon=float(epsilon), normalized_scale=float(normalized_scale))
    elif vector_neuron:
        y = normalize(x, -1, epsilon)
    else:
        y = decomposed_layer_norm(x, (-1,), epsilon, normalized_scale)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


def decomposed_layer_norm(x, axis=(-1,), epsilon: float = 1e-6, normalized_scale: float = 1.0):
    """The reference's LayerNorm: ``c = x - mean(x)`` (linear), ``c**2`` (square neuron),
    ``mean(c**2) + eps`` (linear), ``c / sqrt(.)`` (x1/sqrt(x2) neuron, tracking
    ``normalized_scale`` times the normalised value, divided out after it)."""
    centred = x - jnp.mean(x, axis=axis, keepdims=True)
    variance = jnp.mean(square(centred), axis=axis, keepdims=True) + epsilon
    if normalized_scale != 1.0:
        return rsqrt_mul(centred * normalized_scale, variance) * (1.0 / normalized_scale)
    return rsqrt_mul(centred, variance)


# ----------------------------------------------------------------------------- modules
class ReLU(nn.Module):
    @nn.compact
    def __call__(self, x):
        return relu(x)


class LeakyReLU(nn.Module):
    negative_slope: float = 0.01

    @nn.compact
    def __call__(self, x):
        return leaky_relu(x, self.negative_slope)


class GELU(nn.Module):
    approximate: bool | str = True

    @nn.compact
    def __call__(self, x):
        return gelu(x, self.approximate)


class QCFS(nn.Module):
    """:func:`qcfs` with its own trainable scalar threshold (lambda), parameter ``threshold``.

    ``levels``: L, the quantisation steps; ``init_threshold``: lambda's initial value (the
    QCFS code starts every lambda at 8.0; the zoo's mnist-sized models start at 4.0, see
    docs/design.md, "QCFS").
    """

    levels: int = 8
    init_threshold: float = 8.0

    @nn.compact
    def __call__(self, x):
        threshold = self.param("threshold", nn.initializers.constant(self.init_threshold), (), jnp.float32)
        return qcfs(x, threshold, self.levels)


class MaxPool(nn.Module):
    window_shape: Sequence[int] = (2, 2)
    strides: Sequence[int] | None = None
    padding: str | Sequence[tuple[int, int]] = "VALID"
    chain: bool = False  # True: always binary max neurons (see max_pool)

    @nn.compact
    def __call__(self, x):
        return max_pool(x, self.window_shape, self.strides, self.padding, self.chain)


class LayerNorm(nn.Module):
    """Drop-in for ``flax.linen.LayerNorm`` (same parameter names ``scale`` and ``bias``).

    ``input_scale`` (a fixed constant, default 1) normalises ``input_scale * x`` with
    ``epsilon * input_scale**2``: exactly the same function, but the square neuron of the
    decomposition then tracks ``input_scale**2`` times smaller values; ``normalized_scale``
    does the same for the x1/sqrt(x2) neuron (see :func:`layer_norm`). A model meant for
    paper-mode conversion, whose output estimates are confined to +-3, uses them to keep its
    LayerNorm neurons in range.
    """

    epsilon: float = 1e-6
    use_scale: bool = True
    use_bias: bool = True
    input_scale: float = 1.0
    normalized_scale: float = 1.0
    vector_neuron: bool | None = None  # None: the dynamics decides; True / False: see layer_norm

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,)) if self.use_scale else None
        bias = self.param("bias", nn.initializers.zeros, (features,)) if self.use_bias else None
        if self.input_scale != 1.0:
            x = x * self.input_scale
        return layer_norm(x, scale, bias, self.epsilon * self.input_scale ** 2, self.normalized_scale,
                          self.vector_neuron)


# ----------------------------------------------------------------------------- any layout
def reduce_window_max(x, window_dimensions: Sequence[int], window_strides: Sequence[int],
                      padding: Sequence[tuple[int, int]], chain: bool = False):
    """``lax.reduce_window`` max (no dilation) of any layout, padding -1e9 (never wins a max).

    Default: one ``max_pool`` site with these options (one vector neuron per output in improved
    mode; paper mode and the ``if`` baseline take it apart into the chain). ``chain=True``:
    binary max neurons, one axis after the other in axis order (for NHWC windows exactly
    :func:`max_pool`'s H-then-W pairs). Windows of size 1 everywhere have no neuron (strides and
    padding alone are affine)."""
    x = jnp.asarray(x)
    options = dict(window_dimensions=tuple(int(w) for w in window_dimensions),
                   window_strides=tuple(int(s) for s in window_strides),
                   padding=tuple((int(lo), int(hi)) for lo, hi in padding))
    if any(len(v) != x.ndim for v in options.values()):
        raise ValueError(f"reduce_window_max of an array of shape {x.shape} needs one window size, stride and "
                         f"padding per axis, got {options}")
    if chain or all(w == 1 for w in options["window_dimensions"]):
        for axis, (w, s, p) in enumerate(zip(*options.values())):
            if (w, s, p) != (1, 1, (0, 0)):
                x = _pool_axis(x, axis, w, s, p)
        return x
    return site("max_pool", x, **options)


def reduce_max(x, axes: Sequence[int], chain: bool = False):
    """``jnp.max(x, axis=axes)``: one ``max_pool`` site whose window is the whole of ``axes``
    (then those axes dropped); ``chain=True`` (and paper mode and the ``if`` baseline): a chain of
    binary max neurons per axis, one axis after the other, ``n - 1`` neuron layers deep for ``n``
    elements."""
    x = jnp.asarray(x)
    axes = sorted({a % x.ndim for a in axes})
    window = tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))
    x = reduce_window_max(x, window, window, ((0, 0),) * x.ndim, chain=chain)
    return jnp.squeeze(x, axis=tuple(axes))
