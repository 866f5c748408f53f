"""signgd-convert --model NAME --weights FILE: published ImageNet weights evaluated without a
training workdir (issue 11, item 3).

No real ImageNet and no real checkpoint here: imagenet2012 is TFDS' mock data (small random
images of random sizes, resized and cropped to 224 by the checkpoint's preprocessing) and the
checkpoint is a torchvision ResNet-18 state dict with deterministic weights, written as
.safetensors with exactly the keys and shapes torchvision's file has.
"""
import dataclasses
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "resnet18"
FAST = ["--limit", "4", "--batch-size", "2", "--calibration-batches", "2", "--calibration-batch-size", "2",
        "--timesteps", "1,3", "--no-progress"]


def deterministic_state_dict(name: str, source: str) -> dict:
    """Weights from the keys and shapes alone: a sine of the position, phase from the key's
    CRC; He-scaled weights, BatchNorm statistics near (0, 1), small biases."""
    from signgd_jax.models.checkpoints import expected_shapes

    arrays = {}
    for key, shape in expected_shapes(name, source).items():
        n = int(np.prod(shape))
        wave = np.sin(0.1 * np.arange(n) + zlib.crc32(key.encode()) % 997).reshape(shape)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "running_var":
            value = 1 + 0.5 * np.abs(wave)
        elif leaf in ("running_mean", "bias"):
            value = 0.05 * wave
        elif len(shape) <= 1:
            value = 1 + 0.1 * wave
        else:
            value = wave * np.sqrt(2.0 / np.prod(shape[1:]))
        arrays[key] = value.astype(np.float32)
    return arrays


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("pretrained")
    arrays = deterministic_state_dict(MODEL, "torchvision")
    good = root / "resnet18.safetensors"
    save_file(arrays, str(good))
    missing = dict(arrays)
    del missing["layer3.1.bn2.running_var"]
    save_file(missing, str(root / "missing_key.safetensors"))
    blob = good.read_bytes()
    (root / "truncated.safetensors").write_bytes(blob[:len(blob) // 2])
    return root


def _main(argv):
    from signgd_jax.commands.evaluate.cli import main

    return main(argv)


class ImageNetStandIn:
    """A dataset (every split) replaced by six small random RGB images of different sizes (drawn
    with ``seed``); labels settable, so a test can know how many the ANN gets right."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        sizes = [(40, 52), (33, 33), (64, 48), (20, 71), (45, 30), (37, 60)]
        self.images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
        self.labels = [0] * len(sizes)

    def __call__(self, *args, **kwargs):  # patched over DatasetBuilder.as_data_source (unbound)
        return [dict(image=im, label=int(lab)) for im, lab in zip(self.images, self.labels)]


def test_pretrained_outputs_match_the_ann_and_resume(weights, tmp_path, capsys, monkeypatch):
    import jax
    import jax.numpy as jnp

    import signgd_jax.commands.evaluate.core as core
    from signgd_jax import data, models
    from signgd_jax.commands.evaluate.progress import PROGRESS_DIR

    stand_in = ImageNetStandIn()
    work, cut = tmp_path / "run", tmp_path / "cut"
    argv = ["--model", MODEL, "--weights", str(weights / "resnet18.safetensors"), "--dataset", "imagenet2012",
            "--data-dir", str(tmp_path / "tfds"), *FAST, "--dynamics", "improved"]
    with tfds.testing.mock_data(as_data_source_fn=stand_in):
        # the ANN's classes, computed here from the checkpoint and the checkpoint's preprocessing
        model, variables, preprocessing = models.from_checkpoint(weights / "resnet18.safetensors", MODEL)
        test = data.load("imagenet2012", "test", str(tmp_path / "tfds"), preprocessing=preprocessing)
        images, _ = test.get(np.arange(4))
        predicted = np.asarray(jnp.argmax(model.apply(variables, jnp.asarray(images), train=False), -1))
        stand_in.labels = [predicted[0], (predicted[1] + 1) % 1000, predicted[2], predicted[3], 0, 0]
        assert _main([*argv, "--workdir", str(work)]) == 0
        out = capsys.readouterr().out

        # interrupted after one of the two test batches of the SNN, then resumed
        simulate, calls = core.signgd_jax.simulate, []

        def interrupted_at_call_2(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return simulate(*a, **k)

        monkeypatch.setattr(core.signgd_jax, "simulate", interrupted_at_call_2)
        assert _main([*argv, "--workdir", str(cut)]) == 130
        assert int(np.load(cut / PROGRESS_DIR / "improved.npz")["batches"]) == 1
        monkeypatch.setattr(core.signgd_jax, "simulate", simulate)
        assert _main([*argv, "--workdir", str(cut)]) == 0
    assert "accuracy (%) of resnet18 on imagenet2012, 4 test images" in out
    assert "ANN       75.00" in out
    results = json.loads((work / "results.json").read_text())
    assert results["model"] == MODEL and results["dataset"] == "imagenet2012"
    assert results["checkpoint_step"] is None
    assert results["pretrained"] == json.loads(json.dumps(dict(
        weights=str(weights / "resnet18.safetensors"), source="torchvision",
        preprocessing=dataclasses.asdict(models.preprocessing.TORCHVISION))))
    assert results["calibration"] == dict(split="train", batches=2, batch_size=2, images=4, seed=0)
    assert results["ann"] == dict(accuracy=0.75, correct=3)
    improved = results["dynamics"]["improved"]
    assert improved["supported"] and set(improved["correct"]) == {"1", "3"}
    assert (work / "accuracy_vs_timesteps.png").read_bytes()[:4] == b"\x89PNG"
    resumed = json.loads((cut / "results.json").read_text())
    assert resumed["dynamics"]["improved"]["correct"] == improved["correct"]
    assert resumed["dynamics"]["improved"]["timings"]["resumed_batches"] == 1
    assert resumed["ann"] == results["ann"]
    assert jax.device_count() == results["machine"]["device_count"]


def test_pretrained_defaults(tmp_path, monkeypatch):
    """Without --workdir the results go to ./convert_MODEL (made for the run, removed again if
    the run fails before writing anything); calibration defaults to the paper's 100 batches, of 32."""
    from signgd_jax.commands.evaluate import cli, core

    seen = {}

    def fake(settings, **kw):
        seen.update(settings=settings, existed=os.path.isdir(settings.workdir))
        raise core.ConvertError("stop here")

    monkeypatch.setattr(core, "evaluate", fake)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--model", MODEL, "--weights", "w.safetensors"]) == 2
    settings = seen["settings"]
    assert settings.workdir == f"convert_{MODEL}" and seen["existed"]
    assert (settings.model, settings.weights) == (MODEL, "w.safetensors")
    assert settings.calibration_batch_count == 100 and settings.calibration_batch_size == 32
    assert not (tmp_path / f"convert_{MODEL}").exists()
    assert cli.main(["--model", MODEL, "--weights", "w.safetensors", "--calibration-batches", "3"]) == 2
    assert seen["settings"].calibration_batch_count == 3 and seen["settings"].calibration_batch_size == 32


BAD = {
    "wrong model": (["--model", "resnet34", "--weights", "{w}/resnet18.safetensors"], "missing key"),
    "truncated file": (["--model", MODEL, "--weights", "{w}/truncated.safetensors"], "truncated or corrupt"),
    "missing key": (["--model", MODEL, "--weights", "{w}/missing_key.safetensors"], "layer3.1.bn2.running_var"),
    "no such file": (["--model", MODEL, "--weights", "{w}/nothing.safetensors"], "no such file"),
    "unknown model": (["--model", "resnet_mini", "--weights", "{w}/resnet18.safetensors"],
                      "no pretrained checkpoint layout"),
    "unknown source": (["--model", MODEL, "--weights", "{w}/resnet18.safetensors", "--source", "timm"],
                       "not a layout of resnet18"),
    "not imagenet": (["--model", MODEL, "--weights", "{w}/resnet18.safetensors", "--dataset", "cifar10"],
                     "evaluated on imagenet2012"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_are_one_line_errors(weights, tmp_path, case, capsys):
    extra, expected = BAD[case]
    workdir = tmp_path / "out"
    argv = [a.format(w=weights) for a in extra] + ["--workdir", str(workdir), *FAST]
    assert _main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert not workdir.exists()  # nothing written


def test_bad_checkpoint_exit_status_from_the_command_line(weights, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "convert", "--model", MODEL, "--weights",
                           str(weights / "truncated.safetensors"), "--workdir", str(tmp_path / "out")],
                          env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "truncated.safetensors" in proc.stderr


@pytest.mark.parametrize("argv,expected", [
    (["--model", MODEL], "--model and --weights go together"),
    (["--workdir", "x", "--source", "timm"], "--source goes with --weights"),
    ([], "--workdir"),
])
def test_argument_errors(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        _main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_two_devices_give_the_same_numbers(weights, tmp_path, capsys):
    """The pretrained evaluation split over two devices (a subprocess with two host devices)
    counts exactly what one device counts."""
    import jax.numpy as jnp

    from signgd_jax import data, models

    stand_in = ImageNetStandIn()
    argv = ["--model", MODEL, "--weights", str(weights / "resnet18.safetensors"), "--data-dir", str(tmp_path),
            *FAST, "--dynamics", "improved"]
    with tfds.testing.mock_data(as_data_source_fn=stand_in):
        model, variables, preprocessing = models.from_checkpoint(weights / "resnet18.safetensors", MODEL)
        images, _ = data.load("imagenet2012", "test", str(tmp_path), preprocessing=preprocessing).get(np.arange(4))
        predicted = np.asarray(jnp.argmax(model.apply(variables, jnp.asarray(images), train=False), -1))
        stand_in.labels = [int(predicted[0]), 0 if predicted[1] else 1, int(predicted[2]), 0 if predicted[3] else 1,
                           0, 0]
        assert _main([*argv, "--workdir", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    script = ("import json, sys\n"
              "import tensorflow_datasets as tfds\n"
              "from test_cli_pretrained import ImageNetStandIn\n"
              "from signgd_jax.commands.evaluate.cli import main\n"
              "stand_in = ImageNetStandIn()\n"
              "stand_in.labels = json.loads(sys.argv[1])\n"
              "with tfds.testing.mock_data(as_data_source_fn=stand_in):\n"
              "    sys.exit(main(sys.argv[2:]))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(stand_in.labels), *argv,
                           "--workdir", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert one["machine"]["device_count"] == 1 and two["machine"]["device_count"] == 2
    assert one["ann"] == two["ann"] == dict(accuracy=0.5, correct=2)
    assert two["dynamics"]["improved"]["correct"] == one["dynamics"]["improved"]["correct"]
    assert two["calibration"] == one["calibration"]
