"""An SNN saved with signgd_jax.save and loaded onto a target gives the same logits; a target of
another dynamics is refused by name; __version__ is the installed version."""
import flax.linen as fnn
import jax
import numpy as np
import pytest

import signgd_jax as sg


class Net(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return fnn.Dense(3)(fnn.gelu(fnn.Dense(8)(x)))


def test_round_trip_and_refusals(tmp_path):
    model, x = Net(), jax.random.normal(jax.random.key(0), (16, 4))
    variables = model.init(jax.random.key(1), x)
    snn = sg.convert(model, variables, x, dynamics="improved", spike_levels=3)
    path = sg.save(snn, str(tmp_path / "snn"))
    target = sg.convert(model, variables, x[:4] * 3, dynamics="improved", spike_levels=3)  # other calibration
    assert not np.array_equal(sg.simulate(target, x, 8), sg.simulate(snn, x, 8))
    loaded = sg.load(path, target)
    np.testing.assert_array_equal(sg.simulate(loaded, x, (1, 8)), sg.simulate(snn, x, (1, 8)))
    with pytest.raises(ValueError, match="spike_levels"):
        sg.load(path, target.with_spike_levels(2))
    with pytest.raises(ValueError, match="exists"):
        sg.save(snn, path)
    with pytest.raises(TypeError, match="plain dict"):
        sg.simulate({"sites": {}}, x, 8)


def test_version_is_the_installed_one():
    from importlib import metadata

    assert sg.__version__ == metadata.version("signgd-jax")

