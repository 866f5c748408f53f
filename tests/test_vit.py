"""Vision Transformers in the zoo: ``vit_mini`` converts (improved mode), ``vit_b16`` has the
published shapes and loads torchvision's ``vit_b_16`` state dict.

Fixtures (``tests/fixtures/zoo``): ``vit_b_16_keys.json`` (torchvision's keys, shapes, dtypes in
its order) and ``vit_b_16_logits.npz`` (the logits torchvision 0.26 computed on the two fixed
images with the deterministic stand-in weights), copied from the shared zoo fixtures; the
weight and image rule is ``stand_in`` below (the same rule as ``tests/test_checkpoints.py``).
"""
import json
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import signgd_jax as sg
from signgd_jax import models
from signgd_jax.models import checkpoints
from signgd_jax.models.checkpoints import CheckpointMismatch

FIXTURES = Path(__file__).parent / "fixtures" / "zoo"


def stand_in(name: str, shape) -> np.ndarray:
    """``b = sin(0.1 i + crc32(name) mod 997)`` (float64) scaled by the parameter's role (torch layout)."""
    shape = tuple(shape)
    size = int(np.prod(shape, dtype=np.int64))
    b = np.sin(0.1 * np.arange(size, dtype=np.float64) + zlib.crc32(name.encode()) % 997).reshape(shape)
    leaf = name.rsplit(".", 1)[-1]
    if "bias" in leaf:
        value = 0.05 * b
    elif len(shape) <= 1:
        value = 1.0 + 0.1 * b
    else:
        value = b * np.sqrt(2.0 / np.prod(shape[1:]))
    return value.astype(np.float32)


def stand_in_images(n=2, size=224):
    x = 0.5 * np.sin(0.01 * np.arange(n * 3 * size * size, dtype=np.float64))
    return x.reshape(n, 3, size, size).astype(np.float32).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def torchvision_keys():
    return json.loads((FIXTURES / "vit_b_16_keys.json").read_text())["torchvision_vit_b_16"]


def test_vit_b16_has_the_published_shapes(torchvision_keys):
    model = models.create("vit_b16")
    sample = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), sample)
    assert models.count_params(shapes) == 86_567_656  # torchvision's vit_b_16: 86.6M
    assert sum(int(np.prod(s)) for _, s, _ in torchvision_keys) == 86_567_656
    expected = checkpoints.expected_shapes("vit_b16", "torchvision")
    assert list(expected) == [k for k, _, _ in torchvision_keys]  # every key, in torchvision's order
    assert list(expected.values()) == [tuple(s) for _, s, _ in torchvision_keys]


def test_vit_b16_loads_torchvision_weights_within_tolerance(tmp_path, torchvision_keys):
    path = tmp_path / "vit_b_16.safetensors"
    save_file({name: stand_in(name, shape) for name, shape, _ in torchvision_keys}, str(path))
    model, variables, preprocessing = models.from_checkpoint(str(path), "vit_b16")
    assert preprocessing.image_size == 224
    images = stand_in_images()
    logits = np.asarray(jax.jit(model.apply)(variables, images))
    reference = np.load(FIXTURES / "vit_b_16_logits.npz")["torchvision_vit_b_16"]
    tolerance = 1e-4 * float(np.abs(reference).max()) + 1e-5
    assert float(np.abs(logits - reference).max()) <= tolerance


def first_step_logits(snn, variables, counts):
    """The logits after t = 1 from the last LayerNorm site's spikes (one image, float64).

    Improved mode (docs/design.md): a neuron starts at its calibrated mean, ``u_0 = o``, and
    moves one step, ``u_1 = o - eta_1 r (2 s_1 - 1)``; the class token's row of ``u_1`` is
    then scaled and shifted by the final LayerNorm's ``scale``, ``bias`` and mapped by the head.
    """
    name = max(n for n, s in snn.sites.items() if s.kind == "layer_norm")
    site = snn.sites[name]
    (eta_1,) = np.asarray(snn.schedule.step_sizes(1), np.float64)
    spikes = np.asarray(counts[name], np.float64)[0]  # the class token's row
    assert set(np.unique(spikes)) <= {0.0, 1.0}
    o, r = (np.asarray(a, np.float64)[0, 0] for a in (site.out_offset, site.out_scale))
    u = o - eta_1 * r * (2 * spikes - 1)
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])
    return (u * p["norm"]["scale"] + p["norm"]["bias"]) @ p["head"]["kernel"] + p["head"]["bias"]


def check_first_step(snn, variables, image):
    """One image, T = 1: the logits ``simulate`` returns are :func:`first_step_logits`."""
    logits, counts = sg.simulate(snn, image, (1,), return_spike_counts=True)
    expected = first_step_logits(snn, variables, counts)
    np.testing.assert_allclose(np.asarray(logits[0, 0], np.float64), expected,
                               rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))
    return np.asarray(logits[0])


def test_vit_b16_converts_and_simulates_224x224_images(tmp_path, torchvision_keys):
    """ViT-B/16 with torchvision-layout weights, converted in improved mode on two 224x224
    images and simulated on them: finite logits of the ANN's shape, the first step exactly as
    the neuron equations say, T = 8 ten times closer to the ANN than T = 1 (slow: ~30-40 s)."""
    path = tmp_path / "vit_b_16.safetensors"
    save_file({name: stand_in(name, shape) for name, shape, _ in torchvision_keys}, str(path))
    model, variables, _ = models.from_checkpoint(str(path), "vit_b16")
    images = jnp.asarray(stand_in_images())
    snn = sg.convert(model, variables, [images], "improved")
    ann = np.asarray(jax.jit(model.apply)(variables, images))
    out = np.asarray(sg.simulate(snn, images, (1, 2, 8)))
    assert out.shape == (3, 2, 1000) and np.isfinite(out).all()
    errors = [float(np.abs(o - ann).max()) for o in out]
    assert errors[-1] < errors[0] / 10, errors
    np.testing.assert_allclose(check_first_step(snn, variables, images[:1]), out[0, :1], rtol=1e-5, atol=1e-6)


def test_torchvision_mismatch_names_the_key(torchvision_keys):
    arrays = {name: np.zeros(shape, np.float32) for name, shape, _ in torchvision_keys[:4]}
    with pytest.raises(CheckpointMismatch, match="not a vit_b16 checkpoint"):
        checkpoints.from_arrays(arrays, "vit_b16")
    with pytest.raises(CheckpointMismatch, match="missing key 'encoder.layers.encoder_layer_0.ln_1.weight'"):
        checkpoints.from_arrays(arrays, "vit_b16", source="torchvision")
    arrays = {name: np.zeros(shape, np.float32) for name, shape, _ in torchvision_keys}
    arrays["encoder.pos_embedding"] = np.zeros((1, 196, 768), np.float32)
    with pytest.raises(CheckpointMismatch, match=r"encoder.pos_embedding.*\(1, 196, 768\)"):
        checkpoints.from_arrays(arrays, "vit_b16")
    arrays["encoder.pos_embedding"] = np.zeros((1, 197, 768), np.float32)
    arrays["heads.pre_logits.weight"] = np.zeros((768, 768), np.float32)
    with pytest.raises(CheckpointMismatch, match="unexpected key 'heads.pre_logits.weight'"):
        checkpoints.from_arrays(arrays, "vit_b16")


def test_vit_mini_converts_in_improved_mode_and_approaches_its_ann():
    model = models.create("vit_mini")
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    variables = jax.jit(lambda x: model.init(jax.random.key(1), x))(x)
    assert models.input_shape("vit_mini") == (28, 28, 1)
    snn = sg.convert(model, variables, [x], "improved")
    site_kinds = [s.kind for s in snn.sites.values()]
    assert site_kinds.count("bilinear") == 6 and site_kinds.count("softmax") == 3
    assert site_kinds.count("layer_norm") == 7 and site_kinds.count("gelu") == 3
    # the attention scores' state: heads x tokens x tokens per image, as the ANN's activation
    assert snn.sites["001_bilinear@VisionTransformer/blocks_0/attention"].out_offset.shape == (1, 4, 50, 50)
    ann = jax.jit(model.apply)(variables, x)
    out = sg.simulate(snn, x, (16, 256))
    errors = [float(jnp.abs(o - ann).max()) for o in out]
    assert errors[1] < errors[0] / 10, errors
    assert errors[1] <= 1e-3 * float(jnp.abs(ann).max()), errors
    check_first_step(snn, variables, x[:1])  # what the ViT-B/16 check (slow) also checks
    with pytest.raises(sg.interpret.UnsupportedOperation, match="improved"):
        sg.convert(model, variables, [x], "paper")


def test_vit_mini_decomposed_for_paper_mode_computes_the_same_function():
    x = jax.random.uniform(jax.random.key(2), (2, 28, 28, 1))
    vector, decomposed = models.create("vit_mini", depth=1), models.create("vit_mini", depth=1, vector_neurons=False)
    variables = jax.jit(lambda x: vector.init(jax.random.key(3), x))(x)
    ann = jax.jit(vector.apply)(variables, x)
    np.testing.assert_allclose(jax.jit(decomposed.apply)(variables, x), ann, rtol=1e-4, atol=1e-5)
    snn = sg.convert(decomposed, variables, [x], "paper")
    assert [s.kind for s in snn.sites.values()] == ["square", "rsqrt_mul", "product", "exp", "divide", "product",
                                                    "square", "rsqrt_mul", "gelu", "square", "rsqrt_mul"]
    # the reference decomposition's state: one product neuron per (query, key, head, channel)
    assert snn.sites["002_product@VisionTransformer/blocks_0/attention"].a0[0].shape == (1, 50, 50, 4, 16)
