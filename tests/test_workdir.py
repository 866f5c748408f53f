"""signgd_jax.workdir, the reading side of a training workdir: the round trip of saved variables,
the checkpoint a step names, the data a model was trained on, calibration batches, and the
one-line refusals of a missing, corrupt or mismatched workdir."""
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from signgd_jax import data, models, workdir
from signgd_jax.commands import train
from signgd_jax.commands.train import checkpoint

MODEL = "test_workdir:Tiny"  # importable: pytest puts tests/ on sys.path


class Tiny(nn.Module):
    """Dense, BatchNorm, ReLU, dense: params and batch_stats."""

    num_classes: int = 3
    width: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(self.width)(x.reshape(len(x), -1))
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(self.num_classes)(nn.relu(x))


def _variables(seed: int) -> dict:
    variables = Tiny().init(jax.random.key(seed), np.zeros((1, 2, 2, 1), np.float32))
    stats = jax.tree.map(lambda x: x + seed, variables["batch_stats"])  # not the initial statistics
    return {"params": variables["params"], "batch_stats": stats}


def _write(path, steps: dict) -> str:
    """A workdir as signgd-train leaves it: config.json and one checkpoint per ``steps`` entry
    (step -> variables), written with the training command's own save."""
    path = str(path)
    os.makedirs(path)
    with open(os.path.join(path, workdir.CONFIG_FILE), "w") as f:
        json.dump(dict(model=MODEL, dataset="mnist5k", data_dir="/data/tfds", num_classes=3,
                       image_shape=[2, 2, 1]), f)
    mgr = checkpoint.manager(path)
    for step, variables in steps.items():
        checkpoint.save(mgr, step, variables, {"step": np.int32(step)}, {"epochs_done": step // 10})
    mgr.wait_until_finished()
    mgr.close()
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    steps = {10: _variables(1), 20: _variables(2)}
    return _write(tmp_path_factory.mktemp("w") / "run", steps), steps


def _equal(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_load_gives_back_the_saved_variables_of_the_latest_or_a_named_step(saved):
    path, steps = saved
    model, variables, config = workdir.load(path)
    assert isinstance(model, Tiny) and _equal(variables, steps[20])
    assert (config["checkpoint_step"], config["epochs_done"], config["model"]) == (20, 2, MODEL)
    _, earlier, config = workdir.load(path, step=10)
    assert _equal(earlier, steps[10]) and config["checkpoint_step"] == 10
    assert not _equal(earlier, variables)
    # the training command's names are the same function and the same classes
    assert _equal(train.load_trained(path, step=10)[1], earlier)
    assert train.RestoreError is workdir.RestoreError and train.TrainError is workdir.TrainError
    assert train.build_model is workdir.build_model and train.ConfigError is workdir.ConfigError


def _refusal(kind, *args, **kwargs) -> str:
    with pytest.raises(kind) as refused:
        workdir.load(*args, **kwargs)
    message = str(refused.value)
    assert "\n" not in message and isinstance(refused.value, (workdir.TrainError, models.CheckpointError))
    return message


def test_a_missing_empty_or_stepless_workdir_is_refused_in_one_line(saved, tmp_path):
    path, _ = saved
    assert _refusal(workdir.CheckpointNotFound, tmp_path / "nowhere") == f"workdir {tmp_path / 'nowhere'} does not exist"
    assert "not a training workdir" in _refusal(workdir.CheckpointNotFound, tmp_path)
    assert _refusal(workdir.CheckpointNotFound, path, step=15).endswith("(have [10, 20])")
    assert issubclass(workdir.CheckpointNotFound, FileNotFoundError)


def test_a_corrupt_or_mismatched_workdir_is_refused_in_one_line(saved, tmp_path):
    path, steps = saved
    bad = _write(tmp_path / "bad", {})
    with open(os.path.join(bad, workdir.CONFIG_FILE), "w") as f:
        f.write("{not json")
    assert "config.json is unreadable: JSONDecodeError" in _refusal(workdir.CorruptCheckpoint, bad)
    with open(os.path.join(bad, workdir.CONFIG_FILE), "w") as f:
        json.dump(dict(model=MODEL, num_classes=3), f)  # no image_shape
    assert "KeyError" in _refusal(workdir.CorruptCheckpoint, bad)
    message = _refusal(workdir.RestoreMismatch, path, model=Tiny(width=5))
    assert "does not match the model" in message and "(4,) vs model (5,)" in message
    assert isinstance(workdir.RestoreMismatch("x"), models.CheckpointMismatch)
    unknown = _write(tmp_path / "unknown", {1: steps[10]})
    with open(os.path.join(unknown, workdir.CONFIG_FILE)) as f:
        config = json.load(f)
    with open(os.path.join(unknown, workdir.CONFIG_FILE), "w") as f:
        json.dump(dict(config, model="no_such_model"), f)
    assert "unknown model 'no_such_model'" in _refusal(workdir.ConfigError, unknown)


def test_trained_on_names_the_training_data_unless_told_otherwise():
    config = dict(dataset="mnist5k", data_dir="/data/tfds")
    assert workdir.trained_on(config) == ("mnist5k", "/data/tfds")
    assert workdir.trained_on(config, data_dir="/elsewhere") == ("mnist5k", "/elsewhere")
    assert workdir.trained_on(config, dataset="cifar10") == ("cifar10", None)  # training's dir held mnist5k
    assert workdir.trained_on({}) == ("mnist5k", None)


def test_splits_and_calibration_batches(mnist5k_dir):
    calibration_ds, test_ds = workdir.splits("mnist5k", mnist5k_dir)
    assert (calibration_ds.split, len(calibration_ds), test_ds.split, len(test_ds)) == ("train", 4000, "test", 1000)
    batches = workdir.calibration_batches(calibration_ds, 50, 3, seed=5)
    assert [b.shape for b in batches] == [(50, 28, 28, 1)] * 3
    # the first batches of the seed's shuffled pass over the training split, the same every call
    order = data.epoch_order(len(calibration_ds), 5, 0)
    assert np.array_equal(np.concatenate(batches), calibration_ds.get(order[:150])[0])
    assert all(np.array_equal(a, b) for a, b in zip(batches, workdir.calibration_batches(calibration_ds, 50, 3, 5)))
    assert not np.array_equal(batches[0], workdir.calibration_batches(calibration_ds, 50, 1, seed=6)[0])
    small = calibration_ds.take(30)  # smaller than a batch: one short batch
    assert [len(b) for b in workdir.calibration_batches(small, 50, 2)] == [30]
    with pytest.raises(ValueError, match="empty"):
        workdir.calibration_batches(calibration_ds.take(0), 50, 2)


def test_splits_of_a_dataset_not_prepared_name_the_missing_one(tmp_path):
    with pytest.raises(data.DatasetNotPrepared, match="imagenet2012"):  # imagenet_v2 calibrates on its train split
        workdir.splits("imagenet_v2", str(tmp_path))
