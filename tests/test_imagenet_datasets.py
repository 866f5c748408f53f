"""ImageNet-V2 and Imagenette (issue 25, item 2): the dataset table, Imagenette's labels as
ImageNet indices, accuracy over a subset of a model's classes, preparing a public dataset with
TFDS' own builder in a subprocess, and signgd-convert on Imagenette with a 1000-way model.

Nothing is downloaded: the datasets are ``tfds.testing.mock_data`` (random photos of random
sizes, read through the same array_record data source as real data, without TensorFlow) and
``tfds build`` is a fake ``tfds`` script on PATH.
"""
import io
import json
import os
import stat
import sys

import flax.linen as fnn
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import signgd_jax as sg
from signgd_jax import data
from signgd_jax.class_subset import check_classes, predict

# tench, English springer, cassette player, chain saw, church, French horn, garbage truck,
# gas pump, golf ball, parachute: their positions among ImageNet's 1000 classes
IMAGENETTE_IN_IMAGENET = (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def test_both_datasets_are_in_the_table_and_the_command_line():
    from signgd_jax.commands.evaluate.cli import parser

    assert data.SUPPORTED[-2:] == ("imagenet_v2", "imagenette")
    assert data.dataset_info("imagenet_v2") == ((224, 224, 3), 1000, None, "test")
    assert data.dataset_info("imagenette") == ((224, 224, 3), 10, "train", "validation")
    assert data.tfds_name("imagenet_v2") == "imagenet_v2/matched-frequency"
    assert data.tfds_name("imagenette") == "imagenette/320px-v2"
    assert data.tfds_name("cifar10") == "cifar10"
    # ImageNet-V2 is a test set: calibration reads ImageNet's training split, never its own test photos
    assert data.calibration_split("imagenet_v2") == ("imagenet2012", "train")
    assert data.calibration_split("imagenette") == ("imagenette", "train")
    help_text = " ".join(parser().format_help().split())
    assert "imagenet2012, imagenet_v2 or imagenette" in help_text
    with pytest.raises(data.NoTrainingSplit, match="imagenet_v2 is a test set without a training split; "
                                                  "calibrate and train on imagenet2012:train instead"):
        data.load("imagenet_v2", "train")


def test_training_on_imagenet_v2_is_one_line(tmp_path, capsys):
    from signgd_jax.commands.train.cli import main

    assert main(["--model", "resnet_mini", "--dataset", "imagenet_v2", "--workdir", str(tmp_path / "run"),
                 "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("error: imagenet_v2 is a test set without a training split; calibrate and "
                                       "train on imagenet2012:train instead\n")
    assert not (tmp_path / "run").exists()


def test_imagenette_labels_are_their_imagenet_classes():
    assert data.class_indices("imagenette") == IMAGENETTE_IN_IMAGENET
    # the WordNet ids of TFDS' own label files, read here directly
    imagenet = tfds.core.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()
    imagenette = tfds.core.tfds_path("image_classification/imagenette_labels.txt").read_text().split()
    assert len(imagenet) == 1000 and len(imagenette) == 10
    assert [imagenet[i] for i in IMAGENETTE_IN_IMAGENET] == imagenette
    assert imagenette[0] == "n01440764"  # tench, ImageNet's class 0
    assert data.class_indices("imagenet_v2") is None  # ImageNet's classes in ImageNet's order
    assert data.class_indices("cifar10") is None


def test_which_outputs_a_model_is_scored_on():
    assert data.output_classes("imagenette", 1000) == IMAGENETTE_IN_IMAGENET  # an ImageNet model
    assert data.output_classes("imagenette", 10) is None  # a model trained on Imagenette
    assert data.output_classes("imagenet_v2", 1000) is None
    assert data.output_classes("cifar10", 10) is None
    with pytest.raises(ValueError, match=r"^a model with 100 outputs does not fit imagenette: it needs 10 outputs, "
                                         r"or 1000 \(imagenet2012's, scored over its 10\)$"):
        data.output_classes("imagenette", 100)
    with pytest.raises(ValueError, match=r"^a model with 1000 outputs does not fit cifar10: it needs 10 outputs$"):
        data.output_classes("cifar10", 1000)
    assert data.accuracy_rule("imagenette", IMAGENETTE_IN_IMAGENET) == (
        "the 10 imagenette classes (argmax over their imagenet2012 logits; labels 0..9)")
    assert data.accuracy_rule("cifar10", None) is None


def _stored_size(image) -> tuple:
    """``(height, width)`` of a stored photo: its JPEG bytes or a decoded array."""
    if isinstance(image, bytes):
        from PIL import Image

        width, height = Image.open(io.BytesIO(image)).size
        return height, width
    return np.shape(image)[:2]


@pytest.mark.parametrize("name, split, classes", [("imagenet_v2", "test", 1000), ("imagenette", "test", 10),
                                                  ("imagenette", "train", 10)])
def test_mocked_photos_come_out_224_normalised(name, split, classes, tmp_path):
    with tfds.testing.mock_data(num_examples=5):
        ds = data.load(name, split, str(tmp_path))
        original = [_stored_size(ds.source[i]["image"]) for i in range(5)]
        images, labels = ds.raw(np.arange(5))
        normalised, same_labels = ds.get(np.arange(5))
    assert ds.split == data.dataset_info(name)[3 if split == "test" else 2]
    assert any(size != (224, 224) for size in original)  # photos of other sizes, resized and cropped
    assert images.shape == (5, 224, 224, 3) and images.dtype == np.uint8
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised, (images / 255 - IMAGENET_MEAN) / IMAGENET_STD, atol=1e-5)
    assert (labels == same_labels).all() and labels.min() >= 0 and labels.max() < classes
    assert ds.class_indices == (IMAGENETTE_IN_IMAGENET if name == "imagenette" else None)
    assert ds.take(2).class_indices == ds.class_indices


def test_pretrained_preprocessing_applies_to_every_photo_dataset(tmp_path):
    from signgd_jax.models.preprocessing import TORCHVISION

    with tfds.testing.mock_data(num_examples=2):
        for name in ("imagenet_v2", "imagenette"):
            images, _ = data.load(name, "test", str(tmp_path), preprocessing=TORCHVISION).raw(np.arange(2))
            assert images.shape == (2, 224, 224, 3)
        with pytest.raises(ValueError, match="applies to the photo datasets imagenette, imagenet_v2, imagenet2012 "
                                             "only, not 'cifar10'"):
            data.load("cifar10", "test", str(tmp_path), preprocessing=TORCHVISION)


def test_not_prepared_names_the_tfds_config_and_the_prepare_option(tmp_path):
    with pytest.raises(data.DatasetNotPrepared) as caught:
        data.load("imagenette", "test", str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message
    assert f"tfds build imagenette/320px-v2 --data_dir {tmp_path} --file_format array_record" in message
    assert "signgd-convert --dataset imagenette --prepare" in message


# ----------------------------------------------------------------------------- accuracy over a subset


def test_predict_is_the_argmax_over_the_subset():
    logits = np.zeros((3, 1000), np.float32)
    logits[0, [5, 217, 0]] = [9.0, 3.0, 2.0]  # the largest logit is no Imagenette class: class 217 wins
    logits[1, [701, 482]] = [4.0, 1.0]
    logits[2] = -1.0
    logits[2, [574, 999]] = [-0.5, 10.0]
    assert np.asarray(predict(logits, IMAGENETTE_IN_IMAGENET)).tolist() == [1, 9, 8]
    assert np.asarray(predict(logits)).tolist() == [5, 701, 999]
    assert np.asarray(predict(np.stack([logits, -logits]), IMAGENETTE_IN_IMAGENET)).shape == (2, 3)
    with pytest.raises(ValueError, match="classes name output 701, but the model has 10 outputs"):
        predict(logits[:, :10], IMAGENETTE_IN_IMAGENET)
    for bad in ([1, 1], [-1, 2], [], [0.5]):
        with pytest.raises(ValueError, match="classes must be"):
            check_classes(bad)


class Net(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return fnn.Dense(12)(sg.nn.relu(fnn.Dense(16)(x)))


def test_evaluate_and_sweep_score_over_the_subset():
    classes = (2, 5, 11)
    model = Net()
    x = jax.random.normal(jax.random.key(0), (40, 6))
    variables = model.init(jax.random.key(1), x)
    ann = np.asarray(model.apply(variables, x))
    labels = ann[:, classes].argmax(-1)
    labels[::5] = (labels[::5] + 1) % 3  # the ANN is right on 80% of them over the 3 classes
    assert np.mean(ann.argmax(-1) == labels) < 0.5  # the plain argmax would score something else
    snn = sg.convert(model, variables, x, dynamics="improved")
    report = sg.evaluate(snn, (x, labels), timesteps=(2, 8), classes=classes)
    logits = np.asarray(sg.simulate(snn, x, (2, 8)))
    by_hand = [float(np.mean(logits[k][:, list(classes)].argmax(-1) == labels)) for k in range(2)]
    assert report.ann_accuracy == pytest.approx(0.8)
    assert report.accuracy == pytest.approx({2: by_hand[0], 8: by_hand[1]})
    grid = sg.sweep(snn, (x, labels), timesteps=(2, 8), classes=classes)
    assert np.asarray(grid)[0, 0].tolist() == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="classes name output 12, but the model has 12 outputs"):
        sg.evaluate(snn, (x, labels), timesteps=(2,), classes=(0, 12, 3))


# ----------------------------------------------------------------------------- preparing


def _fake_tfds(tmp_path, monkeypatch, body: str):
    """A ``tfds`` script first on PATH that writes its arguments to ``calls.txt``, then runs ``body``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "tfds"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path / "calls.txt"}"\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return tmp_path / "calls.txt"


def test_prepare_runs_tfds_build_in_a_subprocess(tmp_path, monkeypatch):
    from signgd_jax import prepare

    calls = _fake_tfds(tmp_path, monkeypatch, "exit 0")
    logs = []
    target = str(tmp_path / "tfds")
    assert prepare.prepare("imagenette", target, log=logs.append) == target
    assert prepare.prepare("imagenet_v2", target, log=logs.append) == target
    assert calls.read_text().splitlines() == [
        f"build imagenette/320px-v2 --file_format array_record --data_dir {target}",
        f"build imagenet_v2/matched-frequency --file_format array_record --data_dir {target}"]
    assert logs[0] == f"preparing imagenette: tfds build imagenette/320px-v2 --file_format array_record " \
                      f"--data_dir {target}"
    assert logs[-1] == "imagenet_v2 has no training split: signgd-convert calibrates on imagenet2012's train split"
    assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("stderr, advice", [
    ("ModuleNotFoundError: No module named 'tensorflow'", "pip install tensorflow (Colab has it)"),
    ("requests.exceptions.ConnectionError: HTTPSConnectionPool(host='x'): Max retries exceeded",
     "downloading imagenette needs network access"),
    ("ValueError: something else", "see its output above"),
])
def test_a_failed_build_is_one_line(stderr, advice, tmp_path, monkeypatch, capfd):
    from signgd_jax import prepare

    _fake_tfds(tmp_path, monkeypatch, f'echo "Traceback (most recent call last):" >&2\necho "{stderr}" >&2\nexit 1')
    with pytest.raises(prepare.PrepareFailed) as caught:
        prepare.prepare("imagenette", str(tmp_path / "tfds"), log=lambda m: None)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"`tfds build imagenette/320px-v2 --file_format array_record --data_dir "
                              f"{tmp_path / 'tfds'}` failed (exit 1): ")
    assert stderr.split(": ")[0] in message and advice in message
    assert stderr in capfd.readouterr().err  # the builder's own output is shown as it comes


def test_imagenet2012_and_a_missing_tfds_are_refused_without_running_anything(tmp_path, monkeypatch):
    from signgd_jax import prepare

    calls = _fake_tfds(tmp_path, monkeypatch, "exit 0")
    with pytest.raises(prepare.PrepareFailed, match=r"imagenet2012 cannot be downloaded by TFDS: .* --manual_dir "
                                                    r"TARS` on a machine with TensorFlow$"):
        prepare.prepare("imagenet2012", str(tmp_path / "tfds"))
    monkeypatch.setattr(prepare, "_tfds_executable", lambda: None)
    with pytest.raises(prepare.PrepareFailed, match="the tfds command of tensorflow-datasets is not on PATH"):
        prepare.prepare("cifar10", str(tmp_path / "tfds"))
    assert not calls.exists()


# ----------------------------------------------------------------------------- signgd-convert


TINY_MODULE = "tiny_imagenet_nets"
TINY_SOURCE = '''
import flax.linen as fnn
from signgd_jax import nn as snn


class TinyPhotoNet(fnn.Module):
    num_classes: int = 1000

    @fnn.compact
    def __call__(self, x, train=False):
        x = snn.relu(fnn.Conv(4, (16, 16), strides=(16, 16))(x))
        return fnn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def tiny(num_classes):
    return TinyPhotoNet(num_classes)
'''


def photo_stand_in():
    """test_cli_pretrained's stand-in photos (every dataset and split), drawn with seed 1."""
    from test_cli_pretrained import ImageNetStandIn

    return ImageNetStandIn(seed=1)


@pytest.fixture(scope="module")
def imagenet_workdir(tmp_path_factory):
    """A tiny 1000-way model trained for one step on (stand-in) imagenet2012 photos of class 999,
    which is none of Imagenette's: its largest logit is then no Imagenette class."""
    from signgd_jax.commands import train

    root = tmp_path_factory.mktemp("imagenet_datasets")
    (root / f"{TINY_MODULE}.py").write_text(TINY_SOURCE)
    sys.path.insert(0, str(root))
    try:
        class_999 = photo_stand_in()
        class_999.labels = [999] * len(class_999.labels)
        with tfds.testing.mock_data(as_data_source_fn=class_999):
            train.run(train.TrainConfig(model=f"{TINY_MODULE}:tiny", workdir=str(root / "run"), dataset="imagenet2012",
                                        epochs=1, batch_size=2, limit_train=2, limit_test=2,
                                        data_dir=str(root / "tfds"), progress=False), log=lambda m: None)
        yield root
    finally:
        sys.path.remove(str(root))


def test_convert_on_imagenette_scores_an_imagenet_model_over_its_10_classes(imagenet_workdir, capsys, monkeypatch):
    import signgd_jax.commands.evaluate.core as core
    from signgd_jax.commands import train
    from signgd_jax.commands.evaluate.cli import main

    stand_in = photo_stand_in()
    data_dir, workdir = str(imagenet_workdir / "tfds"), imagenet_workdir / "run"
    model, variables, config = train.load_trained(str(workdir))
    assert config["num_classes"] == 1000
    simulate, recorded = core.signgd_jax.simulate, []

    def recording(*args, **kwargs):
        out = simulate(*args, **kwargs)
        recorded.append(np.asarray(out[0]))
        return out

    monkeypatch.setattr(core.signgd_jax, "simulate", recording)
    with tfds.testing.mock_data(as_data_source_fn=stand_in):
        images, _ = data.load("imagenette", "test", data_dir).get(np.arange(6))
        logits = np.asarray(model.apply(variables, images, train=False))
        subset = logits[:, list(IMAGENETTE_IN_IMAGENET)].argmax(-1)
        labels = subset.copy()
        labels[[1, 4]] = (labels[[1, 4]] + 1) % 10  # the ANN is right on 4 of the 6 over the 10 classes
        stand_in.labels = list(labels)
        status = main(["--workdir", str(workdir), "--dataset", "imagenette", "--data-dir", data_dir, "--limit", "6",
                       "--batch-size", "6", "--calibration-batches", "1", "--calibration-batch-size", "2",
                       "--timesteps", "1,4", "--dynamics", "improved", "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0
    rule = "the 10 imagenette classes (argmax over their imagenet2012 logits; labels 0..9)"
    assert f"accuracy over {rule}" in out
    results = json.loads((workdir / "results.json").read_text())
    assert results["accuracy_over"] == rule and results["class_indices"] == list(IMAGENETTE_IN_IMAGENET)
    assert results["ann"] == dict(accuracy=4 / 6, correct=4)
    assert np.sum(logits.argmax(-1) == labels) < 4  # the argmax over all 1000 outputs scores otherwise
    snn_logits = recorded[0][:, :6]  # [T, images, 1000]
    by_hand = {str(t): int(np.sum(snn_logits[k][:, list(IMAGENETTE_IN_IMAGENET)].argmax(-1) == labels))
               for k, t in enumerate((1, 4))}
    assert results["dynamics"]["improved"]["correct"] == by_hand


def test_convert_on_imagenet_v2_calibrates_on_imagenet_training_images(imagenet_workdir, capsys, monkeypatch):
    from signgd_jax.commands.evaluate.cli import main

    opened = []
    load = data.load
    monkeypatch.setattr(data, "load", lambda name, split, *a, **k: opened.append((name, split)) or
                        load(name, split, *a, **k))
    with tfds.testing.mock_data(as_data_source_fn=photo_stand_in()):
        assert main(["--workdir", str(imagenet_workdir / "run"), "--dataset", "imagenet_v2", "--data-dir",
                     str(imagenet_workdir / "tfds"), "--limit", "2", "--calibration-batches", "1",
                     "--calibration-batch-size", "2", "--timesteps", "1", "--dynamics", "improved",
                     "--no-progress"]) == 0
    assert opened == [("imagenet2012", "train"), ("imagenet_v2", "test")]
    results = json.loads((imagenet_workdir / "run" / "results.json").read_text())
    assert results["dataset"] == "imagenet_v2" and results["calibration"]["dataset"] == "imagenet2012"
    assert "accuracy_over" not in results and "accuracy over" not in capsys.readouterr().out


def test_convert_refuses_a_model_whose_outputs_do_not_fit(imagenet_workdir, capsys):
    from signgd_jax.commands.evaluate.cli import main

    workdir = str(imagenet_workdir / "run")
    assert main(["--workdir", workdir, "--dataset", "cifar10", "--no-progress"]) == 2
    assert capsys.readouterr().err == ("error: dataset 'cifar10' (32x32x3 images, 10 classes) does not fit the "
                                       "model trained on 'imagenet2012' (224x224x3 images, 1000 classes)\n")


def test_convert_prepare_runs_tfds_build_and_reports_failure_in_one_line(tmp_path, monkeypatch, capsys):
    from signgd_jax.commands.evaluate.cli import main

    calls = _fake_tfds(tmp_path, monkeypatch, 'echo "ModuleNotFoundError: No module named \'tensorflow\'" >&2\n'
                                              'exit 1')
    target = str(tmp_path / "tfds")
    assert main(["--dataset", "imagenet_v2", "--prepare", "--data-dir", target]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: `tfds build imagenet_v2/matched-frequency --file_format array_record --data_dir "
                          f"{target}` failed (exit 1): ModuleNotFoundError: No module named 'tensorflow'; ")
    assert calls.read_text() == f"build imagenet_v2/matched-frequency --file_format array_record --data_dir {target}\n"
    assert main(["--dataset", "imagenet2012", "--prepare"]) == 2
    assert "--manual_dir TARS" in capsys.readouterr().err
