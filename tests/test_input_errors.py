"""Input mistakes are refused at our API with a hint, not deep in Flax."""
import flax.linen as fnn
import jax
import pytest

import signgd_jax as sg


def test_channels_first_images_get_a_layout_hint():
    model = fnn.Sequential([fnn.Conv(4, (3, 3)), lambda y: y.reshape(y.shape[0], -1), fnn.Dense(3)])
    nhwc = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
    variables = model.init(jax.random.key(1), nhwc)
    with pytest.raises(ValueError, match=r"looks like \[batch, C, H, W\].*transpose"):
        sg.convert(model, variables, nhwc.transpose(0, 3, 1, 2))


def test_a_metrics_sample_without_its_batch_axis_is_named():
    from signgd_jax import metrics

    model = fnn.Sequential([fnn.Dense(4), sg.nn.relu, fnn.Dense(3)])
    x = jax.random.uniform(jax.random.key(0), (5, 6))
    snn = sg.convert(model, model.init(jax.random.key(1), x), x, dynamics="improved")
    _, counts = sg.simulate(snn, x, 4, return_spike_counts=True)
    assert metrics.spike_statistics(snn, counts, 5, 4, x)["sops_per_image_step"] > 0
    with pytest.raises(ValueError, match=r"sample must be a batch \[n, \.\.\.\].*got shape \(6,\)"):
        metrics.spike_statistics(snn, counts, 5, 4, x[0])
