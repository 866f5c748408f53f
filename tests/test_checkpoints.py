"""Published checkpoints into the zoo, checked against the publishers' own logits.

``tests/fixtures/zoo`` holds, per published model, its checkpoint keys and shapes and the logits
the publisher's code (torchvision, timm, vision_transformer) computed on two fixed images with
deterministic stand-in weights. Each test makes those weights by the same rule, writes them in
the source's own file format, loads them with ``models.from_checkpoint`` and compares logits
within ``1e-4 * max|logit| + 1e-5``.
"""
import json
import sys
import warnings
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import signgd_jax as sg
from signgd_jax import interpret, models
from signgd_jax import nn as snn_nn
from signgd_jax.models import checkpoints, preprocessing

FIXTURES = Path(__file__).parent / "fixtures" / "zoo"

# fixture name -> (zoo model, source, the publisher's array layout, file suffix)
CASES = {
    "torchvision_resnet18": ("resnet18", "torchvision", "torch", ".safetensors"),
    "torchvision_resnet34": ("resnet34", "torchvision", "torch", ".safetensors"),
    "torchvision_vgg16_bn": ("vgg16_bn", "torchvision", "torch", ".safetensors"),
    "torchvision_convnext_small": ("convnext_small", "torchvision", "torch", ".safetensors"),
    "timm_convnext_small": ("convnext_small", "timm", "torch", ".safetensors"),
    "timm_resmlp_big_24_224": ("resmlp_big_24", "timm", "torch", ".safetensors"),
    "timm_mixer_b16_224": ("mixer_b16", "timm", "torch", ".safetensors"),
    "vit_jax_mixer_b16_npz": ("mixer_b16", "vit_jax", "flax", ".npz"),
}


# ----------------------------------------------------------------------------- stand-in weights
def stand_in(name: str, shape, layout: str) -> np.ndarray:
    """The fixtures' deterministic value of parameter ``name`` (README of the fixtures):
    ``b = sin(0.1 i + crc32(name) mod 997)`` in float64, scaled by the parameter's role."""
    shape = tuple(shape)
    size = int(np.prod(shape, dtype=np.int64))
    phase = zlib.crc32(name.encode("utf-8")) % 997
    b = np.sin(0.1 * np.arange(size, dtype=np.float64) + phase).reshape(shape)
    leaf = name.replace("/", ".").rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    if leaf in ("running_var", "var"):
        value = 1.0 + 0.5 * np.abs(b)
    elif leaf in ("running_mean", "mean"):
        value = 0.1 * b
    elif "bias" in leaf or leaf == "beta":
        value = 0.05 * b
    elif leaf in ("gamma", "ls1", "ls2", "layer_scale") or "layer_scale" in name:
        value = 0.1 + 0.05 * b
    elif len(shape) <= 1:
        value = 1.0 + 0.1 * b
    else:
        fan_in = np.prod(shape[1:]) if layout == "torch" else np.prod(shape[:-1])
        value = b * np.sqrt(2.0 / fan_in)
    return value.astype(np.float32)


def stand_in_images(n: int = 2, size: int = 224) -> np.ndarray:
    """The fixtures' images ``0.5 sin(0.01 i)``, NCHW -> NHWC."""
    x = 0.5 * np.sin(0.01 * np.arange(n * 3 * size * size, dtype=np.float64))
    return x.reshape(n, 3, size, size).astype(np.float32).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def fixture_keys():
    return json.loads((FIXTURES / "keys.json").read_text())


@pytest.fixture(scope="module")
def reference_logits():
    with np.load(FIXTURES / "logits.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(stand_in_images())


def weights(fixture_keys, fixture):
    layout = CASES[fixture][2]
    return {name: stand_in(name, shape, layout) for name, shape, _ in fixture_keys[fixture]}


def write(arrays, path: Path) -> Path:
    """``arrays`` in the format that ``path``'s suffix names."""
    if path.suffix == ".safetensors":
        save_file(arrays, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        import torch
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    return path


def logits_of(model, variables, x):
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


def assert_close(logits, reference, what):
    tolerance = 1e-4 * float(np.abs(reference).max()) + 1e-5
    error = float(np.abs(logits - reference).max())
    assert error <= tolerance, f"{what}: max |logit error| {error:.3g} > {tolerance:.3g}"


# ----------------------------------------------------------------------------- the publishers' logits
@pytest.mark.parametrize("fixture", list(CASES))
def test_published_logits(fixture, fixture_keys, reference_logits, images, tmp_path):
    name, source, _, suffix = CASES[fixture]
    path = write(weights(fixture_keys, fixture), tmp_path / f"{fixture}{suffix}")
    model, variables, spec = models.from_checkpoint(path, name)  # source recognised from the keys
    assert spec == checkpoints.LAYOUTS[name][source].preprocessing
    assert_close(logits_of(model, variables, images), reference_logits[fixture], fixture)


def test_gelu_form_against_the_published_logits(fixture_keys, reference_logits, images):
    """How sharp the comparison is. The paper's sigmoid GELU misses the published logits; tanh vs
    exact GELU both pass the issue's tolerance (their difference is below 1e-4 relative on these
    weights), but the publisher's exact form is at float32 noise and the tanh form >5x off it.
    (The form per source is read from the publishers' code; see models.checkpoints.)"""
    fixture = "timm_mixer_b16_224"
    model, variables, _ = models.from_arrays(weights(fixture_keys, fixture), "mixer_b16", "timm")
    reference = reference_logits[fixture]
    errors = {form: float(np.abs(logits_of(model.clone(gelu_approximate=form), variables, images) - reference).max())
              for form in ("exact", "tanh", "sigmoid")}
    assert model.gelu_approximate == "exact"
    tolerance = 1e-4 * float(np.abs(reference).max()) + 1e-5
    assert errors["exact"] <= tolerance / 20 and errors["exact"] * 5 < errors["tanh"] <= tolerance, errors
    assert errors["sigmoid"] > 10 * tolerance, errors


def test_batch_norm_counters_are_optional(fixture_keys, reference_logits, images):
    """Old torchvision files have no ``num_batches_tracked``; they load the same."""
    arrays = {k: v for k, v in weights(fixture_keys, "torchvision_resnet18").items()
              if not k.endswith("num_batches_tracked")}
    model, variables, _ = models.from_arrays(arrays, "resnet18")
    assert_close(logits_of(model, variables, images), reference_logits["torchvision_resnet18"], "resnet18")


@pytest.mark.parametrize("fixture", list(CASES))
def test_expected_shapes_are_the_publishers(fixture, fixture_keys):
    name, source, _, _ = CASES[fixture]
    published = {k: tuple(shape) for k, shape, _ in fixture_keys[fixture] if not k.endswith("num_batches_tracked")}
    assert checkpoints.expected_shapes(name, source) == published


# ----------------------------------------------------------------------------- torch files
def test_torch_file_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "resnet18.pth"
    path.write_bytes(b"not read: torch is missing")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(models.CheckpointError) as error:
        models.from_checkpoint(path, "resnet18")
    message = str(error.value)
    assert "\n" not in message and "needs torch" in message and ".safetensors" in message


def test_torch_file_with_torch(fixture_keys, reference_logits, images, tmp_path):
    try:
        import torch  # noqa: F401
    except ImportError:
        reason = ("torch is not installed (optional extra 'torch'): the .pth branch of from_checkpoint is not "
                  "exercised here; its missing-torch error is (test_torch_file_without_torch_is_a_clear_error)")
        warnings.warn(reason)
        pytest.skip(reason)
    path = write(weights(fixture_keys, "torchvision_resnet18"), tmp_path / "resnet18.pth")
    model, variables, _ = models.from_checkpoint(path, "resnet18")
    assert_close(logits_of(model, variables, images), reference_logits["torchvision_resnet18"], "resnet18 .pth")


# ----------------------------------------------------------------------------- bad checkpoints
@pytest.fixture(scope="module")
def resnet18_arrays(fixture_keys):
    return weights(fixture_keys, "torchvision_resnet18")


def one_line_error(kind, path, name, source=None):
    with pytest.raises(kind) as error:
        models.from_checkpoint(path, name, source=source)
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_wrong_model(resnet18_arrays, tmp_path):
    path = write(resnet18_arrays, tmp_path / "resnet18.safetensors")
    message = one_line_error(models.CheckpointMismatch, path, "vgg16_bn")
    assert "not a vgg16_bn checkpoint" in message and "'features.0.weight'" in message
    # same family, deeper model: the first block resnet18 lacks is named
    message = one_line_error(models.CheckpointMismatch, path, "resnet34")
    assert "missing key 'layer1.2.conv1.weight'" in message
    # a forced source that the file is not in
    message = one_line_error(models.CheckpointMismatch, path, "convnext_small", source="timm")
    assert "missing key 'stem.0.weight'" in message
    # keys of two layouts at once: the source is not guessed
    with pytest.raises(models.CheckpointMismatch, match="several convnext_small layouts"):
        checkpoints.recognise({"stem.0.weight": 0, "features.0.0.weight": 0}, "convnext_small")


def test_missing_key(resnet18_arrays, tmp_path):
    arrays = dict(resnet18_arrays)
    del arrays["layer3.1.bn2.running_var"]
    message = one_line_error(models.CheckpointMismatch, write(arrays, tmp_path / "r.safetensors"), "resnet18")
    assert "missing key 'layer3.1.bn2.running_var'" in message and "(and" not in message


def test_extra_key(resnet18_arrays, tmp_path):
    arrays = dict(resnet18_arrays, **{"fc.scale": np.ones(1000, np.float32)})
    message = one_line_error(models.CheckpointMismatch, write(arrays, tmp_path / "r.safetensors"), "resnet18")
    assert "unexpected key 'fc.scale'" in message


def test_shape_mismatch(resnet18_arrays, tmp_path):
    arrays = dict(resnet18_arrays, **{"fc.weight": np.zeros((10, 512), np.float32), "fc.bias": np.zeros(10, np.float32)})
    message = one_line_error(models.CheckpointMismatch, write(arrays, tmp_path / "r.safetensors"), "resnet18")
    assert "key 'fc.weight' has shape (10, 512), expected (1000, 512)" in message


def test_flax_shape_mismatch():
    """A vision_transformer file of another Mixer (token-mixing width 256 instead of 384)."""
    arrays = {k: np.zeros(shape, np.float32) for k, shape in checkpoints.expected_shapes("mixer_b16", "vit_jax").items()}
    arrays["MixerBlock_3/token_mixing/Dense_0/kernel"] = np.zeros((196, 256), np.float32)
    with pytest.raises(models.CheckpointMismatch) as error:
        models.from_arrays(arrays, "mixer_b16")
    assert str(error.value) == ("checkpoint: mixer_b16 (vit_jax layout): key 'MixerBlock_3/token_mixing/Dense_0/kernel' "
                                "has shape (196, 256), expected (196, 384)")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_truncated_file(resnet18_arrays, tmp_path, suffix):
    arrays = {k: v for k, v in list(resnet18_arrays.items())[:12]}
    path = write(arrays, tmp_path / f"resnet18{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = one_line_error(models.CheckpointError, path, "resnet18")
    assert "unreadable" in message and str(path) in message


def test_unknown_format_and_model(tmp_path):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(b"")
    assert "unknown checkpoint format '.ckpt'" in one_line_error(models.CheckpointError, path, "resnet18")
    with pytest.raises(ValueError, match="no checkpoint importer for 'resnet_mini'"):
        models.from_arrays({}, "resnet_mini")
    with pytest.raises(ValueError, match="unknown source 'keras'"):
        models.from_arrays({}, "resnet18", "keras")


# ----------------------------------------------------------------------------- preprocessing
def test_preprocessing_geometry_and_normalisation():
    spec = preprocessing.Preprocessing(image_size=4, resize_size=6, interpolation="bilinear",
                                       mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 1.0))
    # already at the resize size: no resampling, a centred 4x4 crop of a 6x8 image, offset (1, 2)
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(1, 6, 8, 3)
    out = np.asarray(preprocessing.preprocess(image, spec))
    crop = image[:, 1:5, 2:6, :].astype(np.float32) / 255.0
    np.testing.assert_allclose(out, (crop - np.float32([0.5, 0.25, 0.0])) / np.float32([0.5, 0.5, 1.0]), atol=1e-6)
    # floats in [0, 1] are taken as they are
    np.testing.assert_allclose(preprocessing.preprocess(image.astype(np.float32) / 255.0, spec), out, atol=1e-6)
    # a constant image stays constant through resizing; shorter side 6, longer int(6 * 12 / 9) = 8
    assert preprocessing.resized_shape(9, 12, spec) == (6, 8)
    flat = np.full((2, 9, 12, 3), 0.75, np.float32)
    np.testing.assert_allclose(preprocessing.preprocess(flat, spec), np.broadcast_to(
        (0.75 - np.float32([0.5, 0.25, 0.0])) / np.float32([0.5, 0.5, 1.0]), (2, 4, 4, 3)), rtol=1e-5)


def test_source_conventions():
    vit = checkpoints.LAYOUTS["mixer_b16"]["vit_jax"].preprocessing
    # vision_transformer: the whole image to 224x224, pixels to [-1, 1]
    out = np.asarray(preprocessing.preprocess(np.array([0, 255], np.uint8).repeat(300 * 3).reshape(2, 1, 300, 3)
                                              .repeat(200, axis=1), vit))
    assert out.shape == (2, 224, 224, 3)
    np.testing.assert_allclose(out[0], -1.0, atol=1e-4)  # resampling weights sum to 1 within float error
    np.testing.assert_allclose(out[1], 1.0, atol=1e-4)
    tv = checkpoints.LAYOUTS["resnet18"]["torchvision"].preprocessing
    assert (tv.resize_size, tv.image_size, tv.mean, tv.std) == (256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert checkpoints.LAYOUTS["convnext_small"]["torchvision"].preprocessing.resize_size == 230
    assert checkpoints.LAYOUTS["convnext_small"]["timm"].preprocessing.interpolation == "bicubic"


# ----------------------------------------------------------------------------- conversion
def test_loaded_resnet18_converts_and_simulates(resnet18_arrays, images):
    """A loaded checkpoint goes through ``signgd_jax.convert`` in both modes: the converted
    network (BatchNorm folded, ReLUs rescaled) still computes the published logits, and a
    simulation of two steps runs at 224x224."""
    model, variables, _ = models.from_arrays(resnet18_arrays, "resnet18", "torchvision")
    x = images[:1]
    ann = logits_of(model, variables, x)
    for mode in ("paper", "improved"):
        snn = sg.convert(model, variables, [x], dynamics=mode)
        kinds = {site.kind for site in snn.sites.values()}
        # the stem max-pool: paper mode's binary max chain, improved mode's one max_pool vector neuron
        assert kinds == {"relu", "maximum" if mode == "paper" else "max_pool"}, kinds

        def rescaled(name, kind, options, inputs):
            scale = snn.sites[name].in_scale
            scale = 1.0 if scale is None else scale
            return snn_nn.ann_op(kind, options)(*[z * scale for z in inputs]) / scale

        tracked = np.asarray(interpret.evaluate(snn.apply_fn, snn.variables, x, rescaled))
        assert_close(tracked, ann, f"converted resnet18 ({mode})")
        out = np.asarray(sg.simulate(snn, x, timesteps=(1, 2)))
        assert out.shape == (2, 1, 1000) and np.isfinite(out).all()
        assert not np.array_equal(out[0], out[1])
