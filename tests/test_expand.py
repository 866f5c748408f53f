"""A LayerNorm is one site: improved mode converts it as a vector neuron, paper mode as the
reference's square and x1/sqrt(x2) neurons (signgd_jax.expand)."""
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import signgd_jax as sg
from signgd_jax.expand import ExpandedApply

T = (4, 32, 128)


class Block(fnn.Module):
    """Dense -> LayerNorm -> GELU -> Dense, the LayerNorm written four ways."""

    norm: str = "auto"

    @fnn.compact
    def __call__(self, x):
        x = fnn.Dense(6)(x.reshape(x.shape[0], -1))
        if self.norm == "flax":
            x = fnn.LayerNorm(name="LayerNorm_0")(x)
        else:
            vector = {"auto": None, "vector": True, "decomposed": False}[self.norm]
            x = sg.nn.LayerNorm(vector_neuron=vector, name="LayerNorm_0")(x)
        return fnn.Dense(3)(sg.nn.gelu(fnn.Dense(5)(x)))


@pytest.fixture(scope="module")
def weights():
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (12, 2, 2)), np.float32)
    variables = Block("decomposed").init(jax.random.PRNGKey(1), x)
    scale = jnp.linspace(0.6, 1.4, 6)
    variables = jax.tree_util.tree_map(lambda a: a, variables)
    variables["params"]["LayerNorm_0"]["scale"] = scale
    return variables, x


def _convert(norm, variables, x, mode):
    return sg.convert(Block(norm), variables, [x], dynamics=mode)


@pytest.mark.parametrize("norm", ["auto", "flax"])
def test_paper_mode_takes_a_layer_norm_apart_as_the_reference_does(weights, norm):
    variables, x = weights
    reference = _convert("decomposed", variables, x, "paper")
    snn = _convert(norm, variables, x, "paper")
    assert isinstance(snn.apply_fn, ExpandedApply)
    assert [(n, s.kind, s.options) for n, s in snn.sites.items()] == \
        [(n, s.kind, s.options) for n, s in reference.sites.items()]
    assert [s.kind for s in snn.sites.values()] == ["square", "rsqrt_mul", "gelu"]
    for name, site in snn.sites.items():
        for a, b in zip(jax.tree_util.tree_leaves(site), jax.tree_util.tree_leaves(reference.sites[name])):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(sg.simulate(snn, x, T), sg.simulate(reference, x, T), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["auto", "flax"])
def test_improved_mode_converts_a_layer_norm_as_one_vector_neuron(weights, norm):
    variables, x = weights
    vector = _convert("vector", variables, x, "improved")
    snn = _convert(norm, variables, x, "improved")
    assert [s.kind for s in snn.sites.values()] == ["layer_norm", "gelu"]
    np.testing.assert_allclose(sg.simulate(snn, x, T), sg.simulate(vector, x, T), rtol=1e-5, atol=1e-6)
    ann = np.asarray(Block(norm).apply(variables, x))
    errors = np.abs(np.asarray(sg.simulate(snn, x, T)) - ann).max(axis=(1, 2))
    assert errors[-1] < errors[0] / 10 and errors[-1] < 0.05 * np.abs(ann).mean(), errors
    # one state per element where the decomposition has two
    decomposed = _convert("decomposed", variables, x, "improved")
    assert sum(s.out_offset.size for s in decomposed.sites.values()) == \
        sum(s.out_offset.size for s in snn.sites.values()) + 6  # square 6 + rsqrt_mul 6 vs layer_norm 6


def test_paper_mode_still_refuses_a_vector_neuron_written_as_such(weights):
    variables, x = weights
    with pytest.raises(sg.UnsupportedOperation, match="layer_norm"):
        _convert("vector", variables, x, "paper")


def test_equal_models_give_equal_expanded_functions(weights):
    variables, x = weights
    a, b = _convert("auto", variables, x, "paper"), _convert("auto", variables, x, "paper")
    assert a.apply_fn == b.apply_fn and hash(a.apply_fn) == hash(b.apply_fn)
