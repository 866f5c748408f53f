"""Attention written three ways (flax.linen.MultiHeadDotProductAttention,
jax.nn.dot_product_attention, hand-written softmax(q k^T / sqrt(d)) v with einsum) converts to
the same vector-neuron SNN; sites whose inputs hold the batch on another axis are moved to the
batch-first layout, and sites that would mix the samples of a batch are refused by name."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import signgd_jax as sg
from signgd_jax import interpret

TOKENS, WIDTH, HEADS, DEPTH = 4, 8, 2, 4
TIMESTEPS = (4, 16, 64, 256)


class Reference(nn.Module):
    """Creates the shared weights: embedding, Flax attention, head."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(TOKENS * WIDTH, name="embed")(x).reshape(x.shape[0], TOKENS, WIDTH)
        x = nn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=HEADS * DEPTH, out_features=WIDTH,
                                            name="attn")(x)
        return nn.Dense(3, name="head")(x.mean(1))


def _project(p, x, name):
    return jnp.einsum("btc,chd->bthd", x, p[name]["kernel"]) + p[name]["bias"]


def attention_model(variables, x, spelling="flax", bias=None, mask=None, is_causal=False):
    """The reference network with its attention written as ``spelling``."""
    params = variables["params"]
    x = (x @ params["embed"]["kernel"] + params["embed"]["bias"]).reshape(x.shape[0], TOKENS, WIDTH)
    if spelling == "flax":
        module = nn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=HEADS * DEPTH, out_features=WIDTH)
        o = module.apply({"params": params["attn"]}, x)
    else:
        q, k, v = (_project(params["attn"], x, name) for name in ("query", "key", "value"))
        if spelling == "dot_product_attention":
            a = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal)
        else:
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(DEPTH)
            if spelling == "einsum_heads_first":  # the softmax on a [heads, batch, q, k] layout
                probs = jnp.swapaxes(jax.nn.softmax(jnp.swapaxes(scores, 0, 1), axis=-1), 0, 1)
            else:
                probs = jax.nn.softmax(scores if bias is None else scores + bias, axis=-1)
            a = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        o = jnp.einsum("bqhd,hdc->bqc", a, params["attn"]["out"]["kernel"]) + params["attn"]["out"]["bias"]
    return o.mean(1) @ params["head"]["kernel"] + params["head"]["bias"]


@pytest.fixture(scope="module")
def reference():
    x = jax.random.normal(jax.random.key(0), (6, 12))
    return jax.jit(Reference().init)(jax.random.key(1), x), x


def _snn_outputs(fn, variables, x):
    snn = sg.convert(fn, variables, [x], "improved")
    assert [s.kind for s in snn.sites.values()] == ["bilinear", "softmax", "bilinear"]
    return snn, sg.simulate(snn, x, TIMESTEPS)


def _approaches(out, ann):
    errors = [float(jnp.abs(o - ann).max()) for o in out]
    scale = float(jnp.abs(ann).max())
    assert errors[0] > 1e-2 * scale, errors  # it starts away from the ANN ...
    assert errors[0] > errors[1] > errors[2] > errors[3], errors  # ... and approaches it
    assert errors[3] <= 1e-5 * scale + 1e-6, errors


def _sites(fn, variables, x):
    seen = []

    def on_site(name, kind, options, inputs):
        seen.append((kind, dict(options), [tuple(np.shape(v)) for v in inputs]))
        return interpret.ann_site(name, kind, options, inputs)

    out = jax.jit(lambda v, x: interpret.evaluate(fn, v, x, on_site))(variables, x)
    np.testing.assert_allclose(out, jax.jit(fn)(variables, x), rtol=1e-5, atol=1e-6)
    return seen


def test_dot_product_attention_sites_hold_the_batch_first(reference):
    """jax.nn.dot_product_attention computes its softmax on [group, batch, heads, q, k] and
    contracts the values with it at axis 1; each site sees the batch first."""
    variables, x = reference
    fn = functools.partial(attention_model, spelling="dot_product_attention")
    seen = _sites(fn, variables, x)
    assert [s[0] for s in seen] == ["bilinear", "softmax", "bilinear"]
    assert seen[1] == ("softmax", {"axis": (-1,)}, [(6, 1, HEADS, TOKENS, TOKENS)])
    for kind, options, shapes in (seen[0], seen[2]):
        operands, output = options["subscripts"].split("->")
        assert operands[0] == operands.split(",")[1][0] == output[0]  # one batch letter, first
        assert all(shape[0] == 6 for shape in shapes)
    # the layout decisions do not depend on the batch size (a batch of one included)
    for spelling in ("flax", "dot_product_attention", "einsum"):
        fn = functools.partial(attention_model, spelling=spelling)
        one, six = _sites(fn, variables, x[:1]), _sites(fn, variables, x)
        assert [s[:2] for s in one] == [s[:2] for s in six]


def test_three_spellings_give_the_same_snn_and_approach_the_ann(reference):
    variables, x = reference
    ann = attention_model(variables, x)
    outs = {}
    for spelling in ("flax", "dot_product_attention", "einsum"):
        fn = functools.partial(attention_model, spelling=spelling)
        np.testing.assert_allclose(fn(variables, x), ann, rtol=1e-5, atol=1e-6)
        _, outs[spelling] = _snn_outputs(fn, variables, x)
        _approaches(outs[spelling], ann)
    scale = float(jnp.abs(outs["flax"]).max())
    for spelling in ("dot_product_attention", "einsum"):
        assert float(jnp.abs(outs[spelling] - outs["flax"]).max()) <= 1e-5 * scale, spelling


def test_constant_bias_converts_like_the_hand_written_bias(reference):
    """A constant additive bias before the softmax is affine: the same SNN as the einsum spelling."""
    variables, x = reference
    bias = jax.random.normal(jax.random.key(5), (1, HEADS, TOKENS, TOKENS))
    outs = []
    for spelling in ("dot_product_attention", "einsum"):
        fn = functools.partial(attention_model, spelling=spelling, bias=bias)
        _, out = _snn_outputs(fn, variables, x)
        _approaches(out, fn(variables, x))
        outs.append(out)
    assert float(jnp.abs(outs[0] - outs[1]).max()) <= 1e-5 * float(jnp.abs(outs[0]).max())
    far = attention_model(variables, x, "dot_product_attention")  # the bias does matter
    assert float(jnp.abs(outs[0][-1] - far).max()) > 1e-2


def test_constant_mask_and_causal_attention_convert(reference):
    """A constant mask is jnp.where on constants (affine); masked scores are a large negative
    constant, so the softmax neuron's target is 0 there."""
    variables, x = reference
    mask = jnp.array(np.random.RandomState(0).rand(1, 1, TOKENS, TOKENS) > 0.3) | jnp.eye(TOKENS, dtype=bool)
    for options in (dict(mask=mask), dict(is_causal=True)):
        fn = functools.partial(attention_model, spelling="dot_product_attention", **options)
        ann = fn(variables, x)
        assert float(jnp.abs(ann - attention_model(variables, x)).max()) > 1e-2  # the mask does matter
        _, out = _snn_outputs(fn, variables, x)
        _approaches(out, ann)


def test_mask_computed_from_activations_is_refused_by_name(reference):
    variables, x = reference

    def data_mask(variables, x):
        h = x.reshape(x.shape[0], 3, 4)
        return jax.nn.dot_product_attention(h[:, :, None], h[:, :, None], h[:, :, None],
                                            mask=(h.sum(-1) > 0)[:, None, None, :]).sum((1, 2))

    with pytest.raises(interpret.UnsupportedOperation, match="comparing activations"):
        sg.convert(data_mask, {}, [x], "improved")


def test_softmax_on_a_heads_first_layout_is_moved_to_the_batch_first_layout(reference):
    """A softmax on [heads, batch, q, k] used to be calibrated over the heads (and ran only when
    the batch size equalled the number of heads); now it is the einsum spelling's SNN."""
    variables, x = reference
    xs = x[:HEADS]
    moved, out = _snn_outputs(functools.partial(attention_model, spelling="einsum_heads_first"), variables, xs)
    plain, expected = _snn_outputs(functools.partial(attention_model, spelling="einsum"), variables, xs)
    np.testing.assert_allclose(moved.sites["001_softmax"].out_offset, plain.sites["001_softmax"].out_offset,
                               rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(out - expected).max()) <= 1e-5 * float(jnp.abs(expected).max())
    other = sg.simulate(moved, x, (64,))[0]  # another batch size runs too
    assert float(jnp.abs(other[:HEADS] - out[2]).max()) <= 1e-5 * float(jnp.abs(out[2]).max())


@pytest.mark.parametrize("case", ["softmax over the batch", "rows merged with the batch", "relu on [c, batch]"])
def test_sites_that_would_mix_samples_are_refused_by_name(case):
    x = jax.random.normal(jax.random.key(3), (5, 3, 4))
    w = jax.random.normal(jax.random.key(4), (4, 4))
    models = {
        "softmax over the batch": (lambda v, x: jax.nn.softmax(x @ v, axis=0).sum(1), "mix the samples"),
        "rows merged with the batch": (lambda v, x: jax.nn.relu(x.reshape(-1, 4) @ v).reshape(5, -1),
                                       "cannot be followed past 'reshape'"),
        "relu on [c, batch]": (lambda v, x: jax.nn.relu((x @ v).T).T.sum(1), None),
    }
    fn, message = models[case]
    if message is None:  # a transposed elementwise site is moved, not refused
        seen = _sites(fn, w, x)
        assert seen == [("relu", {}, [(5, 4, 3)])]
        return
    with pytest.raises(interpret.UnsupportedOperation, match=message):
        sg.convert(fn, w, [x], "improved")
