"""Vector neurons (softmax, layer_norm, bilinear): each tracks its target, binds inputs of their
own shapes, and an attention block converts in improved mode and approaches its ANN as T grows."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import signgd_jax as sg
from signgd_jax import dynamics, interpret, kinds
from signgd_jax import nn as sn
from signgd_jax.nn import site_p
from signgd_jax.schedules import make_schedule
from signgd_jax.types import Site


def _random(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


# ----------------------------------------------------------------------------- trajectories
def _trajectory(kind, inputs, num_steps, **options):
    """``u_t`` of one improved-mode vector neuron with its inputs held constant, run with the
    same ``signgd_neuron`` step as the simulator; ``o = phi/2``, ``r = |phi|/2`` per element."""
    inputs = tuple(jnp.asarray(x)[None] for x in inputs)
    phi = kinds.get(kind).target(*inputs, **options)
    site = Site(kind=kind, options=tuple(sorted(options.items())), a0=inputs, a1_plus_a0=tuple(2 * x for x in inputs),
                out_offset=phi / 2, out_scale=jnp.maximum(jnp.abs(phi) / 2, 1e-5))
    neuron = dynamics.get("improved").neuron(site)
    etas = make_schedule("exponential", 0.15, 0.95).step_sizes(num_steps)

    def one(state, eta):
        state, _, _ = neuron.step(state, inputs, eta)
        return state, state[0]

    return jax.lax.scan(one, neuron.init(1), etas)[1], phi[0]


def _converges(traj, phi):
    errors = [float(jnp.abs(traj[t - 1] - phi).max()) for t in (8, 32, 128, 256)]
    scale = float(jnp.abs(phi).max())
    assert errors[0] > 1e-3 * scale, errors  # it starts away from its target ...
    assert errors[1] < errors[0] and errors[2] < errors[1], errors  # ... and approaches it
    assert errors[3] <= 1e-5 * scale + 1e-6, errors


def test_softmax_neuron_tracks_softmax_along_its_axis():
    x = 2.0 * _random(0, (3, 5))
    for axis in ((-1,), (-2,)):
        traj, phi = _trajectory("softmax", (x,), 256, axis=axis)
        np.testing.assert_allclose(phi, jax.nn.softmax(x, axis=axis[0]), rtol=1e-6)
        assert traj.shape == (256, 3, 5)
        _converges(traj, phi)
    # the public single-neuron helper runs the same neuron
    helper = dynamics.neuron_trajectory("softmax", x, 256, dynamics="improved", axis=(-1,))
    np.testing.assert_allclose(helper[-1], jax.nn.softmax(x, -1), atol=1e-6)


def test_layer_norm_neuron_tracks_the_normalised_vector():
    x = 3.0 * _random(1, (4, 6)) + 1.0
    traj, phi = _trajectory("layer_norm", (x,), 256, axis=(-1,), epsilon=1e-6)
    expected = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(phi, expected, atol=1e-5)
    assert traj.shape == (256, 4, 6)  # one state per element
    _converges(traj, phi)


def test_bilinear_neuron_tracks_the_contraction_of_inputs_of_different_shapes():
    q, k = _random(2, (5, 2, 4)), _random(3, (7, 2, 4))
    traj, phi = _trajectory("bilinear", (q, k), 256, subscripts="aqhd,akhd->ahqk")
    np.testing.assert_allclose(phi, jnp.einsum("qhd,khd->hqk", q, k), rtol=1e-5, atol=1e-6)
    assert traj.shape == (256, 2, 5, 7)  # shaped like the output, not like either input
    _converges(traj, phi)


def test_vector_neuron_fires_strictly_above_its_target():
    x = jnp.array([[0.0, 1.0, 2.0]])
    phi = jax.nn.softmax(x, -1)
    fired = kinds.get("softmax").above(phi, (x,), {"axis": (-1,)})
    assert not bool(fired.any())  # a tie does not fire
    assert bool(kinds.get("softmax").above(phi + 1e-3, (x,), {"axis": (-1,)}).all())


# ----------------------------------------------------------------------------- binding
def test_bilinear_site_keeps_input_shapes_and_product_still_broadcasts():
    a, b = _random(4, (2, 3, 4)), _random(5, (2, 4, 6))
    jaxpr = jax.make_jaxpr(sn.matmul)(a, b)
    (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive is site_p]
    assert [tuple(v.aval.shape) for v in eqn.invars] == [(2, 3, 4), (2, 4, 6)]
    assert tuple(eqn.outvars[0].aval.shape) == (2, 3, 6)
    np.testing.assert_allclose(sn.matmul(a, b), a @ b, rtol=1e-5, atol=1e-6)
    jaxpr = jax.make_jaxpr(sn.product)(a, jnp.ones((4,)))
    (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive is site_p]
    assert [tuple(v.aval.shape) for v in eqn.invars] == [(2, 3, 4), (2, 3, 4)]


def test_vector_sites_batch_and_differentiate_like_their_ann_ops():
    q, k = _random(6, (3, 5, 2, 4)), _random(7, (3, 6, 2, 4))
    per_sample = jax.vmap(lambda q, k: sn.softmax(sn.einsum("qhd,khd->hqk", q, k), axis=2))(q, k)
    np.testing.assert_allclose(per_sample, jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), -1),
                               rtol=1e-5, atol=1e-6)
    unbatched_k = jax.vmap(lambda q: sn.einsum("qhd,khd->hqk", q, k[0]))(q)
    np.testing.assert_allclose(unbatched_k, jnp.einsum("bqhd,khd->bhqk", q, k[0]), rtol=1e-5, atol=1e-6)

    def loss(fn, q):
        return jnp.sum(fn(q) ** 2)

    grad = jax.jit(jax.grad(loss, 1), static_argnums=0)
    ours = grad(lambda q: sn.normalize(sn.einsum("...qhd,...khd->...hqk", q, k)), q)
    plain = grad(lambda q: jax.nn.standardize(jnp.einsum("bqhd,bkhd->bhqk", q, k), epsilon=1e-6), q)
    np.testing.assert_allclose(ours, plain, rtol=1e-3, atol=1e-4)


def test_einsum_subscripts_are_spelled_out():
    assert sn.explicit_subscripts("...ij,...jk->...ik", (2, 3, 4), (2, 4, 5)) == "aij,ajk->aik"
    assert sn.explicit_subscripts("ij,jk", (3, 4), (4, 5)) == "ij,jk->ik"  # numpy's implicit output
    with pytest.raises(ValueError, match="two operands"):
        sn.explicit_subscripts("ij,jk,kl->il", (1, 1), (1, 1))
    with pytest.raises(ValueError, match="do not fit"):
        sn.einsum("ij,jk->ik", jnp.ones((2, 3, 4)), jnp.ones((4, 5)))


# ----------------------------------------------------------------------------- recognition
def _sites_of(fn, x, variables=None):
    variables = {} if variables is None else variables
    seen = []

    def on_site(name, kind, options, inputs):
        seen.append((kind, dict(options), [tuple(np.shape(v)) for v in inputs]))
        return interpret.ann_site(name, kind, options, inputs)

    out = interpret.evaluate(lambda v, x: fn(v, x), variables, x, on_site)
    np.testing.assert_allclose(out, fn(variables, x), rtol=1e-5, atol=1e-6)
    return seen


def test_plain_jax_attention_is_recognised_as_vector_neurons():
    def attention(v, x):
        q, k, val = x[..., :4], x[..., 4:8], x[..., 8:]
        return jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / 2.0, axis=-1) @ val

    seen = _sites_of(attention, _random(8, (2, 5, 12)))
    assert [s[0] for s in seen] == ["bilinear", "softmax", "bilinear"]
    assert seen[1][1] == {"axis": (-1,)}
    assert seen[0][2] == [(2, 5, 4), (2, 4, 5)]  # own shapes: q and k transposed


def test_softmax_without_the_max_guard_and_softmax_on_another_axis():
    def unguarded(v, x):
        e = jnp.exp(x)
        return e / jnp.sum(e, axis=1, keepdims=True)

    assert [s[0] for s in _sites_of(unguarded, _random(9, (2, 5, 3)))] == ["softmax"]
    assert _sites_of(unguarded, _random(9, (2, 5, 3)))[0][1] == {"axis": (-2,)}
    # exp used elsewhere too: not absorbed into a softmax; exp and divide neurons instead
    def shared(v, x):
        e = jnp.exp(x)
        return e / jnp.sum(e, axis=-1, keepdims=True) + e

    kinds_seen = [s[0] for s in _sites_of(shared, _random(10, (2, 3)))]
    assert "softmax" not in kinds_seen and "exp" in kinds_seen and "divide" in kinds_seen


def test_flax_attention_is_recognised():
    x = _random(11, (2, 5, 8))
    module = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
    variables = module.init(jax.random.key(0), x)
    seen = _sites_of(lambda v, x: module.apply(v, x), x, variables)
    assert [s[0] for s in seen] == ["bilinear", "softmax", "bilinear"]


def test_contraction_over_the_batch_is_refused():
    def mixes_samples(v, x):
        return jnp.einsum("bi,ci->bc", x, x)  # every sample against every other

    with pytest.raises(interpret.UnsupportedOperation, match="mix the samples"):
        _sites_of(mixes_samples, _random(12, (3, 4)))


# ----------------------------------------------------------------------------- conversion
class AttentionBlock(nn.Module):
    """A pre-norm transformer block; ``spelling`` picks how attention is written."""

    spelling: str = "signgd"
    heads: int = 2
    width: int = 16

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(self.width, name="embed")(x.reshape(x.shape[0], -1, 8))
        d = self.width // self.heads
        y = sn.LayerNorm(vector_neuron=True, name="norm1")(x)
        qkv = nn.Dense(3 * self.width, name="qkv")(y).reshape(*y.shape[:2], 3, self.heads, d)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.spelling == "signgd":
            a = sn.softmax(sn.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d), axis=-1)
            o = sn.einsum("bhqk,bkhd->bqhd", a, v)
        else:  # plain jax, as people write it
            a = jax.nn.softmax(jnp.swapaxes(q, 1, 2) @ jnp.transpose(k, (0, 2, 3, 1)) / np.sqrt(d), axis=-1)
            o = jnp.swapaxes(a @ jnp.swapaxes(v, 1, 2), 1, 2)
        x = x + nn.Dense(self.width, name="proj")(o.reshape(*y.shape[:2], self.width))
        y = nn.Dense(2 * self.width, name="fc1")(sn.LayerNorm(vector_neuron=True, name="norm2")(x))
        x = x + nn.Dense(self.width, name="fc2")(sn.gelu(y, approximate="sigmoid"))
        return nn.Dense(10, name="head")(x.mean(1))


@pytest.fixture(scope="module")
def block():
    x = _random(13, (8, 6, 8))
    model = AttentionBlock()
    variables = jax.jit(model.init)(jax.random.key(1), x)
    return model, variables, x


def test_attention_block_converts_and_approaches_its_ann(block):
    model, variables, x = block
    snn = sg.convert(model, variables, [x], "improved")
    assert [s.kind for s in snn.sites.values()] == ["layer_norm", "bilinear", "softmax", "bilinear",
                                                    "layer_norm", "gelu"]
    assert snn.sites["001_bilinear@AttentionBlock"].a0[0].shape == (1, 6, 2, 8)
    ann = model.apply(variables, x)
    out = sg.simulate(snn, x, (8, 32, 256))
    errors = [float(jnp.abs(o - ann).max()) for o in out]
    scale = float(jnp.abs(ann).max())
    assert errors[0] > errors[1] > errors[2], errors
    # every target is the ANN's own function here (sigmoid GELU), so the SNN reaches the ANN
    assert errors[2] <= 1e-4 * scale + 1e-5, errors
    # a wrong target (e.g. a softmax along the wrong axis) would leave a visible gap
    wrong = dict(snn.sites)
    wrong["002_softmax@AttentionBlock"] = wrong["002_softmax@AttentionBlock"].replace(options=(("axis", (-2,)),))
    far = sg.simulate(snn.replace(sites=wrong), x, (256,))[0]
    assert float(jnp.abs(far - ann).max()) > 100 * errors[2] + 1e-3


def test_attention_spellings_convert_to_the_same_snn(block):
    model, variables, x = block
    outs = []
    for spelling in ("signgd", "plain"):
        snn = sg.convert(AttentionBlock(spelling=spelling), variables, [x], "improved")
        assert [s.kind for s in snn.sites.values()][:4] == ["layer_norm", "bilinear", "softmax", "bilinear"]
        outs.append(sg.simulate(snn, x, (16, 64)))
    scale = float(jnp.abs(outs[0]).max())
    assert float(jnp.abs(outs[0] - outs[1]).max()) <= 1e-4 * scale


def test_paper_mode_refuses_vector_neurons_by_name(block):
    model, variables, x = block
    with pytest.raises(interpret.UnsupportedOperation, match=r"improved.*bilinear, layer_norm, softmax"):
        sg.convert(model, variables, [x], "paper")


def test_layer_norm_vector_neuron_halves_the_state():
    x = 2.0 * _random(14, (4, 5, 6)) + 0.5
    for vector, expected in ((False, ["square", "rsqrt_mul"]), (True, ["layer_norm"])):
        model = sn.LayerNorm(vector_neuron=vector)
        variables = model.init(jax.random.key(0), x)
        snn = sg.convert(lambda v, x: model.apply(v, x).reshape(x.shape[0], -1), variables, [x], "improved")
        assert [s.kind for s in snn.sites.values()] == expected
        state = sum(int(np.prod(jax.eval_shape(lambda: dynamics.IMPROVED.neuron(s).init(1)).shape))
                    for s in snn.sites.values())
        assert state == (30 if vector else 60)  # decomposed: a square and an x1/sqrt(x2) neuron per element
        ann = model.apply(variables, x).reshape(4, -1)
        final = sg.simulate(snn, x, (256,))[0]
        assert float(jnp.abs(final - ann).max()) <= 1e-4 * float(jnp.abs(ann).max())
