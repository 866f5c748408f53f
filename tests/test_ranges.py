"""Improved mode's neuron units u = o + r v: o the mean, r the largest deviation or k standard
deviations over the calibration images (convert(..., spread=k))."""
import flax.linen as fnn
import jax
import numpy as np
import pytest

import signgd_jax as sg
from signgd_jax.kinds import ann_op


class MLP(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return fnn.Dense(3)(sg.nn.gelu(fnn.Dense(7)(x)))


@pytest.fixture(scope="module")
def setup():
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (30, 4)), np.float32)
    model = MLP()
    variables = model.init(jax.random.PRNGKey(1), x)
    dense = variables["params"]["Dense_1"]  # Dense(3) is made first
    pre = x @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    return model, variables, x, np.asarray(ann_op("gelu", {})(pre), np.float64)  # what the neuron is calibrated on


@pytest.mark.parametrize("spread", [None, 3.0, 1.5])
def test_ranges_are_the_largest_deviation_or_k_standard_deviations(setup, spread):
    model, variables, x, a = setup
    site = next(iter(sg.convert(model, variables, [x[:16], x[16:]], dynamics="improved", spread=spread).sites.values()))
    mean = a.mean(0)
    expected = np.maximum(a.max(0) - mean, mean - a.min(0)) if spread is None else spread * a.std(0)
    np.testing.assert_allclose(site.out_offset[0], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(site.out_scale[0], expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("dynamics,spread", [("paper", 3.0), ("improved", 0.0), ("improved", -1.0),
                                             ("improved", float("nan")), ("improved", True), ("improved", "3")])
def test_bad_spreads_are_refused(setup, dynamics, spread):
    model, variables, x, _ = setup
    with pytest.raises(ValueError, match="spread applies to dynamics='improved'"):
        sg.convert(model, variables, [x], dynamics=dynamics, spread=spread)
