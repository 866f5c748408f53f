"""Recognition does not depend on how a program is written (issue 22).

Each recognised pattern is written in random *spellings* (operand order, grouping, ``*`` or
``jnp.multiply``, ``x / y`` or ``x * (1 / y)``, ``lax.rsqrt`` or ``1 / jnp.sqrt``, the GELU, SiLU,
leaky relu and LayerNorm forms) and must give exactly the sites (kinds and options, in order) of
its canonical spelling, with the ANN value of the program unchanged. A matcher that reads operand
order from the program (say ``mul`` dropped from ``recognize._COMMUTATIVE``) or knows one
spelling only fails here.
"""
from __future__ import annotations

import math

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

from signgd_jax import interpret, kinds

PROPERTY = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

X = jax.random.normal(jax.random.PRNGKey(0), (2, 6)) * 2.0
W = jax.random.normal(jax.random.PRNGKey(1), (6, 6)) * 0.4
SCALE, BIAS = jnp.linspace(0.5, 1.5, 6), jnp.linspace(-1.0, 1.0, 6)
EPS = 1e-5
SLOPE = 0.2


def sites_of(fn, x=X, rtol=2e-5):
    """The sites ``(kind, sorted options)`` that ``fn`` converts to, in order; checks that
    evaluating them as the ANN does gives ``fn(x)``."""
    found = []

    def on_site(name, kind, options, inputs):
        found.append((kind, tuple(sorted(options.items()))))
        return interpret.ann_site(name, kind, options, inputs)

    outs, _ = interpret.run(jax.make_jaxpr(fn)(x), [x], [True], on_site)
    expected = fn(x)
    np.testing.assert_allclose(np.asarray(outs[0], np.float32), np.asarray(expected, np.float32), rtol=rtol,
                               atol=rtol * (1 + float(jnp.abs(expected).max())))
    return found


# ----------------------------------------------------------------------------- spellings
MUL = (lambda a, b: a * b, lambda a, b: b * a, jnp.multiply, lambda a, b: jnp.multiply(b, a))
ADD = (lambda a, b: a + b, lambda a, b: b + a, jnp.add, lambda a, b: jnp.add(b, a))
DIV_CONST = (lambda a, c: a / c, lambda a, c: a * (1 / c), lambda a, c: (1 / c) * a, jnp.divide,
             lambda a, c: jnp.multiply(1 / c, a))
DIV = (lambda a, b: a / b, lambda a, b: a * (1 / b), lambda a, b: (1 / b) * a, jnp.divide, jnp.true_divide,
       lambda a, b: a * jnp.reciprocal(b), lambda a, b: jnp.reciprocal(b) * a, lambda a, b: a * b ** -1, lax.div)
RSQRT_MUL = (lambda a, b: a * lax.rsqrt(b), lambda a, b: lax.rsqrt(b) * a, lambda a, b: a / jnp.sqrt(b),
             lambda a, b: a * (1 / jnp.sqrt(b)), lambda a, b: (1.0 / jnp.sqrt(b)) * a,
             lambda a, b: jnp.multiply(a, lax.rsqrt(b)), lambda a, b: a * b ** -0.5,
             lambda a, b: a * jnp.reciprocal(jnp.sqrt(b)), lambda a, b: jnp.divide(a, b ** 0.5))
RSQRT = (lax.rsqrt, lambda b: 1 / jnp.sqrt(b), lambda b: b ** -0.5, lambda b: jnp.reciprocal(jnp.sqrt(b)),
         lambda b: jnp.sqrt(b) ** -1, lambda b: 1.0 / b ** 0.5)
SQUARE = (jnp.square, lambda x: x * x, lambda x: x ** 2, lambda x: jnp.power(x, 2), lambda x: lax.integer_pow(x, 2),
          lambda x: jnp.multiply(x, x), lambda x: x ** 2.0)
CUBE = (lambda x: x ** 3, lambda x: x * x * x, lambda x: jnp.power(x, 3), lambda x: x * x ** 2,
        lambda x: lax.integer_pow(x, 3), lambda x: jnp.square(x) * x)
SQRT_2_OVER_PI = (lambda: math.sqrt(2 / math.pi), lambda: np.sqrt(2 / np.pi), lambda: jnp.sqrt(2 / jnp.pi),
                  lambda: 0.7978845608028654)
SQRT_2 = (lambda: math.sqrt(2.0), lambda: jnp.sqrt(2.0), lambda: np.float32(np.sqrt(2.0)))
MEAN = (lambda v: jnp.mean(v, -1, keepdims=True), lambda v: v.mean(axis=-1, keepdims=True),
        lambda v: v.sum(-1, keepdims=True) / v.shape[-1], lambda v: jnp.sum(v, -1, keepdims=True) * (1 / v.shape[-1]),
        lambda v: (1.0 / v.shape[-1]) * jnp.sum(v, axis=(-1,), keepdims=True), lambda v: jnp.mean(v, -1)[..., None])


class Spelling:
    """Choices replayed from a fixed list, so that every call of a function written with one
    spells the same program (it is traced once and evaluated once)."""

    def __init__(self, choices):
        self.choices, self.count = choices, 0

    def choose(self, options):
        value = options[self.choices[self.count % len(self.choices)] % len(options)]
        self.count += 1
        return value

    def flag(self) -> bool:
        return self.choose((False, True))

    def mul(self, a, b):
        return self.choose(MUL)(a, b)

    def add(self, a, b):
        return self.choose(ADD)(a, b)

    def times(self, c, x):
        """``c * x`` for a constant ``c``: either order, or ``x / (1 / c)``."""
        return self.choose(DIV_CONST)(x, 1 / c) if self.flag() else self.mul(c, x)

    def half_x_times(self, x, t):
        """``0.5 * x * (1 + t)`` grouped one of six ways."""
        one_plus = self.add(1.0, t)  # dead code in the fourth grouping: a dead use blocks no match
        return self.choose((
            lambda: self.mul(self.mul(0.5, x), one_plus),  # (0.5 x)(1 + t)
            lambda: self.mul(x, self.mul(0.5, one_plus)),  # x (0.5 (1 + t))
            lambda: self.mul(0.5, self.mul(x, one_plus)),  # 0.5 (x (1 + t))
            lambda: self.mul(x, self.add(0.5, self.mul(0.5, t))),  # x (0.5 + 0.5 t)
            lambda: self.mul(x, one_plus) / 2.0,
            lambda: self.mul(self.mul(x, one_plus), 0.5),
        ))()


def second(x):
    """Another activation of ``x``'s shape (affine in ``x``)."""
    return x @ W + 0.25


def positive(x):
    """An activation of ``x``'s shape, positive on the inputs used here (affine in ``x``)."""
    return 0.1 * (x @ W) + 3.0


def gelu_tanh(s, x):
    if s.flag():
        return s.choose((jax.nn.gelu, fnn.gelu, lambda v: jax.nn.gelu(v, approximate=True)))(x)
    cube, k = s.choose(CUBE), s.choose(SQRT_2_OVER_PI)
    if s.flag():  # sqrt(2/pi) x + sqrt(2/pi) 0.044715 x**3
        inner = s.add(s.times(k(), x), s.times(k() * 0.044715, cube(x)))
    else:
        inner = s.times(k(), s.add(x, s.times(0.044715, cube(x))))
    return s.half_x_times(x, jnp.tanh(inner))


def gelu_erf(s, x):
    form = s.choose(range(5))
    if form == 0:
        return jax.nn.gelu(x, approximate=False)
    if form == 1:
        return x * jax.scipy.stats.norm.cdf(x)
    root2 = s.choose(SQRT_2)
    if form == 2:  # 0.5 x erfc(-x / sqrt 2)
        return s.mul(s.mul(0.5, x), jax.scipy.special.erfc(s.choose(DIV_CONST)(-x, root2())))
    erf = s.choose((jax.scipy.special.erf, lax.erf))
    scaled = s.choose(DIV_CONST)(x, root2()) if form == 3 else s.times(0.7071067811865476, x)
    return s.half_x_times(x, erf(scaled))


def gelu_sigmoid(s, x):
    if s.flag():  # x / (1 + exp(-1.702 x))
        return s.choose(DIV)(x, s.add(1.0, jnp.exp(s.times(-1.702, x))))
    return s.mul(x, jax.nn.sigmoid(s.times(1.702, x)))


def silu(s, x):
    return s.choose((
        lambda: s.choose((jax.nn.silu, jax.nn.swish, fnn.silu, fnn.swish))(x),
        lambda: s.mul(x, jax.nn.sigmoid(x)),
        lambda: s.mul(jax.scipy.special.expit(x), x),
        lambda: s.choose(DIV)(x, s.add(1.0, jnp.exp(-x))),
    ))()


def leaky_relu(s, x):
    return s.choose((
        lambda: jax.nn.leaky_relu(x, SLOPE),
        lambda: fnn.leaky_relu(x, negative_slope=SLOPE),
        lambda: jnp.where(x >= 0, x, s.times(SLOPE, x)),
        lambda: jnp.where(x > 0, x, s.times(SLOPE, x)),
        lambda: jnp.where(x < 0, s.times(SLOPE, x), x),
        lambda: jnp.maximum(x, s.times(SLOPE, x)),
        lambda: jnp.maximum(s.times(SLOPE, x), x),
    ))()


def relu(s, x):
    return s.choose((jax.nn.relu, fnn.relu, lambda v: jnp.maximum(v, 0), lambda v: jnp.maximum(0.0, v),
                     lambda v: lax.max(v, jnp.zeros_like(v)), lambda v: jnp.where(v > 0, v, 0.0),
                     lambda v: v * (v > 0), lambda v: jnp.clip(v, 0.0, None)))(x)


def absolute(s, x):
    return s.choose((jnp.abs, lambda v: jnp.maximum(v, -v), lambda v: jnp.maximum(-v, v),
                     lambda v: jnp.where(v >= 0, v, -v), lambda v: jnp.sqrt(v * v)))(x)


def square(s, x):
    return s.choose(SQUARE)(x)


def sigmoid(s, x):
    return s.choose((jax.nn.sigmoid, jax.scipy.special.expit, lambda v: 1 / s.add(1.0, jnp.exp(-v)),
                     lambda v: jnp.reciprocal(s.add(1.0, jnp.exp(-v))),
                     lambda v: s.mul(0.5, s.add(1.0, jnp.tanh(v / 2)))))(x)


def tanh(s, x):
    return s.choose((jnp.tanh, lax.tanh, lambda v: 2 * jax.nn.sigmoid(s.times(2.0, v)) - 1,
                     lambda v: s.add(-1.0, s.mul(2.0, jax.nn.sigmoid(2 * v)))))(x)


def relu6(s, x):
    return s.choose((jax.nn.relu6, lambda v: jnp.clip(v, 0.0, 6.0), lambda v: jnp.minimum(jnp.maximum(v, 0.0), 6.0),
                     lambda v: jnp.minimum(6.0, jnp.maximum(0.0, v))))(x)


def product(s, x):
    return s.choose(MUL + (lax.mul,))(x, second(x))


def maximum(s, x):
    return s.choose((jnp.maximum, lambda a, b: jnp.maximum(b, a), lax.max, lambda a, b: lax.max(b, a)))(x, second(x))


def minimum(s, x):
    return s.choose((jnp.minimum, lambda a, b: jnp.minimum(b, a), lax.min, lambda a, b: -jnp.maximum(-a, -b)))(
        x, second(x))


def divide(s, x):
    return s.choose(DIV)(x, positive(x))


def rsqrt_mul(s, x):
    return s.choose(RSQRT_MUL)(x, positive(x))


def rsqrt(s, x):
    return s.choose(RSQRT)(positive(x))


def variance(s, x, mean, centred):
    """The variance of ``x`` along the last axis, spelled one of several ways, and whether it
    is the fast form ``mean(x**2) - mean**2`` without a clamp (its ``eps`` may go inside)."""
    form = s.choose(range(5))
    if form == 0:
        return s.choose(MEAN)(s.choose(SQUARE)(centred)), False
    if form == 1:
        return jnp.var(x, axis=-1, keepdims=True), False
    mean_square, square_mean = s.choose(MEAN)(s.choose(SQUARE)(x)), s.choose(SQUARE)(mean)
    if form == 2:
        return mean_square - square_mean, True
    return s.choose((lambda v: jnp.maximum(v, 0.0), lambda v: jnp.maximum(0.0, v)))(mean_square - square_mean), False


def layer_norm(s, x):
    if s.flag():
        module = fnn.LayerNorm(epsilon=EPS, use_fast_variance=s.flag())
        return module.apply({"params": {"scale": SCALE, "bias": BIAS}}, x)
    mean = s.choose(MEAN)(x)
    centred = x - mean
    var, fast = variance(s, x, mean, centred)
    if fast and s.flag():  # eps + mean(x**2) - mean**2, grouped as Python does
        argument = s.add(EPS, s.choose(MEAN)(s.choose(SQUARE)(x))) - s.choose(SQUARE)(mean)
    else:
        argument = s.add(var, EPS)
    if s.flag():  # the scale inside: c * (rsqrt(.) * scale), as flax writes it
        y = s.mul(centred, s.mul(s.choose(RSQRT)(argument), SCALE))
    else:
        y = s.mul(s.choose(RSQRT_MUL)(centred, argument), SCALE)
    return s.add(y, BIAS)


def rms_norm(s, x):
    if s.flag():
        return fnn.RMSNorm(epsilon=EPS).apply({"params": {"scale": SCALE}}, x)
    argument = s.add(s.choose(MEAN)(s.choose(SQUARE)(x)), EPS)
    return s.mul(s.choose(RSQRT_MUL)(x, argument), SCALE)


def softmax(s, x):
    if s.flag():
        return s.choose((jax.nn.softmax, fnn.softmax, lambda v: jax.nn.softmax(v, axis=-1)))(x)
    guard = s.choose((lambda v: v, lambda v: v - jnp.max(v, -1, keepdims=True),
                      lambda v: v - lax.stop_gradient(v.max(axis=-1, keepdims=True))))
    if s.flag():  # exp(z) written twice
        return s.choose(DIV)(jnp.exp(guard(x)), jnp.sum(jnp.exp(guard(x)), -1, keepdims=True))
    e = jnp.exp(guard(x))
    return s.choose(DIV)(e, e.sum(axis=-1, keepdims=True))


def _gelu(form):
    return [("gelu", (("approximate", form),))]


PATTERNS = {  # spelled, the sites of its canonical spelling
    "gelu_tanh": (gelu_tanh, _gelu("tanh")),
    "gelu_erf": (gelu_erf, _gelu("exact")),
    "gelu_sigmoid": (gelu_sigmoid, _gelu("sigmoid")),
    "silu": (silu, [("silu", ())]),
    "leaky_relu": (leaky_relu, [("leaky_relu", (("negative_slope", SLOPE),))]),
    "relu": (relu, [("relu", ())]),
    "abs": (absolute, [("abs", ())]),
    "square": (square, [("square", ())]),
    "sigmoid": (sigmoid, [("sigmoid", ())]),
    "tanh": (tanh, [("tanh", ())]),
    "relu6": (relu6, [("relu", ()), ("relu", ())]),
    "product": (product, [("product", ())]),
    "maximum": (maximum, [("maximum", ())]),
    "minimum": (minimum, [("maximum", ())]),
    "divide": (divide, [("divide", ())]),
    "rsqrt_mul": (rsqrt_mul, [("rsqrt_mul", ())]),
    "rsqrt": (rsqrt, [("rsqrt_mul", ())]),
    "layer_norm": (layer_norm, [("layer_norm", (("axis", (-1,)), ("epsilon", EPS), ("normalized_scale", 1.0)))]),
    "rms_norm": (rms_norm, [("square", ()), ("rsqrt_mul", ())]),
    "softmax": (softmax, [("softmax", (("axis", (-1,)),))]),
}
CANONICAL = {
    "gelu_tanh": jax.nn.gelu, "gelu_erf": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_sigmoid": lambda x: x * jax.nn.sigmoid(1.702 * x), "silu": jax.nn.silu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, SLOPE), "relu": jax.nn.relu, "abs": jnp.abs, "square": jnp.square,
    "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu6": jax.nn.relu6, "product": lambda x: x * second(x),
    "maximum": lambda x: jnp.maximum(x, second(x)), "minimum": lambda x: jnp.minimum(x, second(x)),
    "divide": lambda x: x / positive(x), "rsqrt_mul": lambda x: x * lax.rsqrt(positive(x)),
    "rsqrt": lambda x: lax.rsqrt(positive(x)),
    "layer_norm": lambda x: fnn.LayerNorm(epsilon=EPS).apply({"params": {"scale": SCALE, "bias": BIAS}}, x),
    "rms_norm": lambda x: fnn.RMSNorm(epsilon=EPS).apply({"params": {"scale": SCALE}}, x),
    "softmax": jax.nn.softmax,
}
choices = st.lists(st.integers(0, 2519), min_size=16, max_size=16)  # 2520: a multiple of every option count


def spelled(name, picked):
    build = PATTERNS[name][0]
    return lambda x: build(Spelling(picked), x)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_canonical_spellings_give_the_expected_sites(name):
    assert sites_of(CANONICAL[name]) == PATTERNS[name][1]


@settings(max_examples=500, **PROPERTY)
@given(name=st.sampled_from(sorted(PATTERNS)), picked=choices)
def test_every_spelling_gives_the_canonical_sites(name, picked):
    assert sites_of(spelled(name, picked)) == PATTERNS[name][1]


@settings(max_examples=60, **PROPERTY)
@given(names=st.lists(st.sampled_from(sorted(PATTERNS)), min_size=2, max_size=3), picked=choices)
def test_programs_of_several_patterns_give_their_sites_in_order(names, picked):
    """Patterns one after the other, a dense layer between them, each spelled its own way."""
    def program(build):
        def fn(x):
            for i, name in enumerate(names):
                x = build(name, i)(x)
                x = x @ W + 0.5
            return x
        return fn

    spelled_sites = sites_of(program(lambda name, i: spelled(name, picked[i:] + picked[:i])))
    assert spelled_sites == sites_of(program(lambda name, i: CANONICAL[name]))
    assert spelled_sites == [site for name in names for site in PATTERNS[name][1]]


# ----------------------------------------------------------------------------- the cases
@pytest.mark.parametrize("fn,expected", [
    (lambda x: jax.nn.sigmoid(1.702 * x) * x, _gelu("sigmoid")),
    (lambda x: x * jax.nn.sigmoid(x * 1.702), _gelu("sigmoid")),
    (lambda x: jax.nn.sigmoid(x) * x, [("silu", ())]),
    (lambda x: jnp.multiply(jax.nn.sigmoid(x), x), [("silu", ())]),
    (lambda x: x * (1 / positive(x)), [("divide", ())]),
    (lambda x: 1 / jnp.sqrt(positive(x)), [("rsqrt_mul", ())]),
], ids=["sigmoid(1.702x)*x", "x*sigmoid(x*1.702)", "sigmoid(x)*x", "multiply(sigmoid(x),x)", "x*(1/y)", "1/sqrt"])
def test_operand_order_and_reciprocals(fn, expected):
    assert sites_of(fn) == expected


# ----------------------------------------------------------------------------- GELU's form
GELU_FORMS = {  # form recorded -> {spelling: function}
    "exact": {
        "jax.nn.gelu(approximate=False)": lambda x: jax.nn.gelu(x, approximate=False),
        "0.5x(1+erf(x/sqrt2))": lambda x: 0.5 * x * (1 + jax.scipy.special.erf(x / jnp.sqrt(2.0))),
        "x(1+lax.erf(x*(1/sqrt2)))*0.5": lambda x: x * (1 + lax.erf(x * (1 / math.sqrt(2)))) * 0.5,
        "x*norm.cdf(x)": lambda x: x * jax.scipy.stats.norm.cdf(x),
    },
    "tanh": {
        "jax.nn.gelu": jax.nn.gelu,
        "0.5x(1+tanh(c(x+0.044715x**3)))": lambda x: 0.5 * x * (1 + jnp.tanh(
            math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
        "x(0.5+0.5tanh(cx+c'x*x*x))": lambda x: x * (0.5 + 0.5 * jnp.tanh(0.7978845608 * x + 0.0356774081 * x * x * x)),
    },
    "sigmoid": {
        "x*sigmoid(1.702x)": lambda x: x * jax.nn.sigmoid(1.702 * x),
        "x/(1+exp(-1.702x))": lambda x: x / (1 + jnp.exp(-1.702 * x)),
    },
}


@pytest.mark.parametrize("form,fn", [(form, fn) for form, spellings in GELU_FORMS.items() for fn in spellings.values()],
                         ids=[label for spellings in GELU_FORMS.values() for label in spellings])
def test_gelu_site_records_the_form_the_ann_computes(form, fn):
    """The ``approximate`` option names the ANN's own GELU, and the gelu kind's ANN function with
    it reproduces the program to float32 rounding (the forms differ by up to 2e-2)."""
    assert sites_of(fn) == _gelu(form)
    x = jnp.linspace(-6.0, 6.0, 241)
    np.testing.assert_allclose(kinds.ann_op("gelu", {"approximate": form})(x), fn(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_gelu_form_is_told_apart_in_low_precision(dtype):
    """The forms differ by less than bfloat16 resolves; the closest one is recorded."""
    x = X.astype(dtype)
    for form, spellings in GELU_FORMS.items():
        for label, fn in spellings.items():
            if label == "x*norm.cdf(x)":  # jax.scipy's ndtr takes float32 and float64 only
                continue
            assert sites_of(fn, x, rtol=float(jnp.finfo(dtype).eps) * 4) == _gelu(form)


@pytest.mark.parametrize("fn,expected", [
    (lambda x: x * jax.nn.sigmoid(1.6 * x), [("sigmoid", ()), ("product", ())]),  # not 1.702: no GELU
    (lambda x: jnp.minimum(jax.nn.relu(x), 100.0), [("relu", ()), ("relu", ())]),  # a cap far out is seen
    (lambda x: jnp.where(x >= 0, x, 0.2 * x) + 1e-3 * x, [("leaky_relu", (("negative_slope", 0.2),))]),
    (lambda x: x * (0.5 + 0.5 * jnp.tanh(0.7978845608 * x + 0.05 * x * x * x)),  # 0.05, not 0.0357
     [("product", ()), ("product", ()), ("tanh", ()), ("product", ())]),
], ids=["sigmoid(1.6x)", "relu capped at 100", "leaky plus linear", "tanh-GELU, wrong constant"])
def test_functions_near_a_recognised_one_are_not_taken_for_it(fn, expected):
    assert sites_of(fn) == expected  # (the linear term stays outside the leaky relu)


# ----------------------------------------------------------------------------- tie rule, messages
def test_exp_fires_on_a_tie():
    """kinds.py: relu, square and exp fire when ``v == phi(x)``; gelu, abs and the rest only above."""
    x = jnp.array([0.0, 1.0, -2.0])
    exp = kinds.get("exp")
    target = exp.target(x)
    assert exp.fires_on_tie
    assert bool(jnp.all(exp.above(target, [x], {})))
    below = jnp.nextafter(target, -jnp.inf)
    assert not bool(jnp.any(exp.above(below, [x], {})))
    assert bool(jnp.all(exp.above(jnp.nextafter(target, jnp.inf), [x], {})))
    gelu = kinds.get("gelu")
    assert not bool(jnp.any(gelu.above(gelu.target(x), [x], {})))


def test_refusal_is_one_short_line_then_the_list():
    with pytest.raises(interpret.UnsupportedOperation) as info:
        sites_of(lambda x: jnp.sin(x) + 1.0)
    first, supported = str(info.value).split("\n")
    assert first.startswith("cannot convert operation 'sin'") and "test_spellings.py" in first
    assert "write it with the supported operations" in first and len(first) < 300
    assert supported.startswith("supported: ") and "jax.nn.gelu" in supported
