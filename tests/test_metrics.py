"""Spike statistics against a hand-computed one-layer network."""
import flax.linen as fnn
import jax.numpy as jnp
import numpy as np

import signgd_jax as sg
from signgd_jax import metrics, nn


class OneLayer(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        hidden = nn.relu(fnn.Dense(3, use_bias=False, name="hidden")(x))
        return fnn.Dense(2, use_bias=False, name="out")(hidden)


W1 = np.eye(3, dtype=np.float32)
# Output weights with zeros: neuron 0 reaches both outputs, neuron 1 one output, neuron 2 none.
W2 = np.array([[1.0, -2.0], [0.0, 0.5], [0.0, 0.0]], np.float32)
VARIABLES = {"params": {"hidden": {"kernel": W1}, "out": {"kernel": W2}}}
IMAGES = np.array([[0.5, 0.25, 1.0], [1.0, 0.75, 0.0]], np.float32)


def hand_spike_counts(inputs, steps):
    """The baseline's integrate-and-fire neurons written out for a constant input."""
    x = np.zeros_like(inputs)
    v = np.zeros_like(inputs)
    counts = np.zeros_like(inputs)
    for t in range(1, steps + 1):
        eta = 1.0 / (t + 1)
        x = x - eta * (x - inputs)
        spike = (x > v).astype(np.float32)
        v = v - eta * (v - spike)
        counts += spike
    return counts


def test_fan_out_counts_nonzero_synapses():
    snn = sg.convert(OneLayer(), VARIABLES, [IMAGES], dynamics="if")
    fan = metrics.fan_out(snn, IMAGES)
    np.testing.assert_array_equal(fan["000_relu@OneLayer"], [2, 1, 0])
    np.testing.assert_array_equal(fan["input"], [1, 1, 1])


def test_spike_counts_and_synaptic_operations_match_hand_computation():
    steps = 20
    snn = sg.convert(OneLayer(), VARIABLES, [IMAGES], dynamics="if")
    logits, counts = sg.simulate(snn, IMAGES, (steps,), return_spike_counts=True)
    scaled = IMAGES / IMAGES.max(0)  # ReLU scaling by the calibrated per-unit maximum
    expected = hand_spike_counts(scaled, steps)
    np.testing.assert_allclose(counts["000_relu@OneLayer"], expected.sum(0))
    stats = metrics.spike_statistics(snn, counts, num_images=2, num_steps=steps, sample=IMAGES)
    layer = stats["layers"]["000_relu@OneLayer"]
    per_step = expected.sum(0) / (2 * steps)
    assert abs(layer["firing_rate"] - per_step.mean()) < 1e-6
    assert abs(layer["sops_per_image_step"] - (per_step * [2, 1, 0]).sum()) < 1e-6
    assert abs(stats["energy_pj_per_image_step"] - (stats["sops_per_image_step"] * 0.9 + 3 * 4.6)) < 1e-4
    # the ANN: 3x3 + 3x2 multiply-accumulates in the dense layers, plus XLA's count of the
    # 3 ReLU maxima (at most one flop each, half a MAC)
    assert 15 <= stats["ann_macs_per_image"] <= 15 + 3 / 2


def test_accuracy_per_step():
    logits = jnp.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    np.testing.assert_allclose(metrics.accuracy_per_step(logits, [0, 1]), [1.0, 0.5])
