"""signgd-train: a tiny run learns, resumes where it stopped, bad input, load_trained errors.

(SIGKILL during a checkpoint write and the exact resume after it: tests/test_faults.py.)
"""
import gc
import json
import os
import shutil
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

from signgd_jax import data
from signgd_jax.commands import train
from signgd_jax.commands.train import TrainConfig
from signgd_jax.commands.train.cli import main

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
MODEL = "test_train:TinyCNN"  # importable in subprocesses through PYTHONPATH=tests


class TinyCNN(nn.Module):
    """Conv-BN-ReLU, conv-ReLU, dense: small, with batch_stats, learns MNIST in seconds."""

    num_classes: int = 10
    width: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), strides=2)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=2)(x))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _cli(args, env_extra=None, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _without_time(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist5k_dir):
    workdir = str(tmp_path_factory.mktemp("run") / "w")
    cfg = TrainConfig(model=MODEL, workdir=workdir, epochs=3, batch_size=32, limit_train=1024,
                      limit_test=500, data_dir=mnist5k_dir, checkpoint_every=10,
                      progress=False)
    final = train.run(cfg, log=lambda m: None)
    return workdir, final, mnist5k_dir


def test_tiny_run_learns(trained):
    workdir, final, data_dir = trained
    assert final["epoch"] == 3 and final["test_acc"] > 0.6, final
    lines = _lines(os.path.join(workdir, "metrics.jsonl"))
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert lines[-1] == final and lines[0]["train_loss"] > lines[-1]["train_loss"]
    assert set(lines[0]) == {"epoch", "train_loss", "train_acc", "test_acc", "seconds", "step",
                             "lr"}
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["model"] == MODEL and config["dataset"] == "mnist5k"
    assert config["num_classes"] == 10 and config["image_shape"] == [28, 28, 1]
    assert (config["lr"], config["momentum"], config["weight_decay"]) == (0.1, 0.9, 5e-4)
    assert config["steps_per_epoch"] == 32 and config["total_steps"] == 96

    model, variables, info = train.load_trained(workdir)
    assert isinstance(model, TinyCNN) and set(variables) == {"params", "batch_stats"}
    assert info["checkpoint_step"] == 96 and info["epochs_done"] == 3
    x, y = data.load("mnist5k", "test", data_dir).take(500).arrays()
    logits = model.apply(variables, x, train=False)
    assert np.mean(np.argmax(logits, -1) == y) == pytest.approx(final["test_acc"])


def test_finished_run_is_not_repeated(trained, capsys):
    workdir, final, data_dir = trained
    cfg = TrainConfig(model=MODEL, workdir=workdir, epochs=3, batch_size=32, limit_train=1024,
                      limit_test=500, data_dir=data_dir, checkpoint_every=10, progress=False)
    assert train.run(cfg) == final
    assert "already finished" in capsys.readouterr().out
    # a workdir written before the range-penalty settings existed is still this run
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        record = json.load(f)
    with open(path, "w") as f:
        json.dump({k: v for k, v in record.items() if not k.startswith("range_")}, f)
    assert train.run(cfg) == final
    assert len(_lines(os.path.join(workdir, "metrics.jsonl"))) == 3
    # without a penalty the bound changes nothing, so it does not make another run
    assert train.run(TrainConfig(**{**cfg.__dict__, "range_bound": 2.0})) == final
    with pytest.raises(train.ConfigError, match="different settings.*lr"):
        train.run(TrainConfig(**{**cfg.__dict__, "lr": 0.05}))
    with pytest.raises(train.ConfigError, match="different settings.*range_penalty"):
        train.run(TrainConfig(**{**cfg.__dict__, "range_penalty": 0.1}))


def test_workdir_in_use(tmp_path, mnist5k_dir):
    import fcntl

    os.makedirs(tmp_path / "w")
    fd = os.open(tmp_path / "w", os.O_RDONLY)  # another process's lock: flock on the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(train.ConfigError, match="in use by another signgd-train or signgd-convert"):
            train.run(TrainConfig(model=MODEL, workdir=str(tmp_path / "w"), epochs=1,
                                  limit_train=64, limit_test=64, batch_size=32,
                                  data_dir=mnist5k_dir, progress=False))
    finally:
        os.close(fd)
    assert os.listdir(tmp_path / "w") == []  # nothing written


def test_stopped_run_resumes_where_it_stopped(tmp_path, mnist5k_dir):
    """A run stopped from ``on_step`` (here by an exception after step 7, once checkpoint 6
    is on disk) continues from step 6 and ends with the same weights as an uninterrupted run."""
    cfg = dict(model=MODEL, dataset="mnist5k", data_dir=mnist5k_dir, epochs=2, batch_size=32,
               limit_train=160, limit_test=64, checkpoint_every=3, progress=False)
    final = train.run(TrainConfig(workdir=str(tmp_path / "full"), **cfg), log=lambda m: None)
    seen = []

    def stop_after_7(step, checkpointing):
        seen.append((step, checkpointing))
        if step == 7:
            raise KeyboardInterrupt

    stopped = str(tmp_path / "stopped")
    with pytest.raises(KeyboardInterrupt):
        train.run(TrainConfig(workdir=stopped, **cfg), log=lambda m: None, on_step=stop_after_7)
    # 5 steps per epoch: checkpoints at 3, 5 (epoch end), 6; the callback sees every step
    assert seen == [(1, False), (2, False), (3, True), (4, False), (5, True), (6, True), (7, False)]
    logs = []
    resumed = train.run(TrainConfig(workdir=stopped, **cfg), log=logs.append)
    assert _without_time([resumed]) == _without_time([final])
    assert _without_time(_lines(os.path.join(stopped, "metrics.jsonl"))) == \
        _without_time(_lines(str(tmp_path / "full" / "metrics.jsonl")))
    assert logs[1] == "resuming from checkpoint 6: epoch 2/2, step 1/5"
    _, va, _ = train.load_trained(str(tmp_path / "full"))
    _, vb, _ = train.load_trained(stopped)
    jax.tree.map(np.testing.assert_array_equal, va, vb)


@pytest.mark.parametrize("extra,needle", [
    (["--model", "no_such_model_xyz"], "no_such_model_xyz"),
    (["--model", "no_such_module_xyz:Net"], "no_such_module_xyz"),
    (["--dataset", "svhn"], "unknown dataset 'svhn'"),
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--epochs", "-3"], "epochs must be a positive integer"),
    (["--batch-size", "0"], "batch-size"),
    (["--dataset", "cifar10"], "tfds build cifar10"),
    (["--epochs", "ten"], "invalid int value"),
    (["--range-penalty", "-1"], "range-penalty must be >= 0"),
    (["--range-bound", "0"], "range-bound must be positive"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, needle):
    base = {"--model": MODEL, "--workdir": str(tmp_path / "w"), "--data-dir": str(tmp_path),
            "--epochs": "1"}
    for flag, value in zip(extra[::2], extra[1::2]):
        base[flag] = value
    argv = [s for kv in base.items() for s in kv]
    if "ten" in extra:
        with pytest.raises(SystemExit) as e:
            main(argv)
        code = e.value.code
    else:
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and needle in err, err


def test_bad_input_subprocess(tmp_path):
    r = _cli(["--model", MODEL, "--dataset", "cifar10", "--data-dir", str(tmp_path),
              "--workdir", str(tmp_path / "w")])
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: dataset 'cifar10' is not prepared")


# orbax leaves a tensorstore callback behind when it fails on damaged files; it reports
# "Event loop is closed" when collected, which is harmless
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_load_trained_errors(trained, tmp_path):
    workdir = trained[0]
    with pytest.raises(train.CheckpointNotFound, match="does not exist"):
        train.load_trained(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(train.CheckpointNotFound, match="config.json"):
        train.load_trained(str(tmp_path / "empty"))
    shutil.copy(os.path.join(workdir, "config.json"), tmp_path / "empty")
    with pytest.raises(train.CheckpointNotFound, match="no checkpoints"):
        train.load_trained(str(tmp_path / "empty"))
    with pytest.raises(train.CheckpointMismatch, match="does not match the model") as mismatch:
        train.load_trained(workdir, model=TinyCNN(width=16))
    # one family of checkpoint errors: a restore error is a TrainError and the models' CheckpointError
    from signgd_jax import models

    assert type(mismatch.value) is train.RestoreMismatch and train.CheckpointMismatch is models.CheckpointMismatch
    assert all(isinstance(mismatch.value, kind) for kind in (train.RestoreError, train.TrainError, models.CheckpointError))
    assert issubclass(train.CheckpointNotFound, FileNotFoundError) and train.CheckpointError is models.CheckpointError
    assert not issubclass(models.CheckpointError, train.TrainError)  # importing published weights is not training
    # a config.json naming another model is caught the same way
    wide = str(tmp_path / "wide")
    shutil.copytree(workdir, wide)
    cfg = json.load(open(os.path.join(wide, "config.json")))
    cfg["num_classes"] = 7
    json.dump(cfg, open(os.path.join(wide, "config.json"), "w"))
    with pytest.raises(train.CheckpointMismatch, match="Dense_0"):
        train.load_trained(wide)
    # damaged array data
    bad = str(tmp_path / "bad")
    shutil.copytree(workdir, bad)
    step_dir = os.path.join(bad, "checkpoints", "96", "variables")
    for dirpath, _, files in os.walk(step_dir):
        for name in files:
            if "ocdbt" in dirpath or dirpath.endswith("/d"):
                with open(os.path.join(dirpath, name), "wb") as f:
                    f.write(b"garbage")
    with pytest.raises(train.CorruptCheckpoint):
        train.load_trained(bad)
    time.sleep(0.5)  # let orbax's orphaned callbacks fire inside this test (see above)
    gc.collect()
    open(os.path.join(bad, "config.json"), "w").write("{not json")
    with pytest.raises(train.CorruptCheckpoint, match="config.json"):
        train.load_trained(bad)


# ----------------------------------------------------------------------------- recipes


QUICKSTART_FLAGS = ["--optimizer", "adamw", "--lr", "0.003", "--weight-decay", "0.05", "--augment"]


def _resolved_record(argv):
    from signgd_jax.commands.train.cli import parser
    from signgd_jax.commands.train.config import config_record

    return config_record(TrainConfig(**vars(parser().parse_args(argv))))


@pytest.mark.parametrize("model", ["convnext_mini", "mixer_mini"])
def test_layernorm_gelu_minis_default_to_the_measured_recipe(model):
    """The recipe equals the flags the quick start and the five-architecture table passed, so
    their config.json (and training) is unchanged without the flags."""
    base = ["--model", model, "--workdir", "w"]
    assert _resolved_record(base) == _resolved_record(base + QUICKSTART_FLAGS)
    c = TrainConfig(model=model, workdir="w").resolved()
    assert (c.optimizer, c.lr, c.weight_decay, c.augment, c.range_penalty) == ("adamw", 0.003, 0.05, True, 0.0)


def test_resmlp_recipe_has_the_range_penalty():
    c = TrainConfig(model="resmlp_mini", workdir="w").resolved()
    assert (c.optimizer, c.range_penalty, c.range_bound) == ("adamw", 0.1, 2.0)


def test_other_models_keep_the_papers_recipe():
    c = TrainConfig(model="resnet_mini", workdir="w").resolved()
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.augment) == ("sgd", 0.1, 0.9, 5e-4, False)
    assert TrainConfig(model="resnet_mini", workdir="w", dataset="cifar10").resolved().augment is True


@pytest.mark.parametrize("argv,expected", [
    (["--optimizer", "sgd"], ("sgd", 0.1, 5e-4, True)),          # sgd's own lr/decay, not adamw's
    (["--optimizer", "sgd", "--lr", "0.05"], ("sgd", 0.05, 5e-4, True)),
    (["--lr", "0.01"], ("adamw", 0.01, 0.05, True)),
    (["--weight-decay", "0"], ("adamw", 0.003, 0.0, True)),
    (["--no-augment"], ("adamw", 0.003, 0.05, False)),
])
def test_command_line_overrides_the_recipe(argv, expected):
    r = _resolved_record(["--model", "convnext_mini", "--workdir", "w", *argv])
    assert (r["optimizer"], r["lr"], r["weight_decay"], r["augment"]) == expected


def test_resolution_is_idempotent_and_config_json_holds_resolved_values():
    c = TrainConfig(model="convnext_mini", workdir="w", optimizer="sgd")
    assert c.resolved() == c.resolved().resolved()
    record = _resolved_record(["--model", "resmlp_mini", "--workdir", "w"])
    assert None not in [record[k] for k in ("optimizer", "lr", "weight_decay", "augment",
                                             "range_penalty", "range_bound")]


def test_recipe_is_logged_and_progress_bars_end_at_100_percent(tmp_path, mnist5k_dir, capsys):
    """The epoch bar's last drawing is its full count (was: its last redraw, e.g. 21/31 = 68%,
    drawn while the epoch's last steps were still being dispatched)."""
    logs = []
    train.run(TrainConfig(model=MODEL, workdir=str(tmp_path / "w"), epochs=2, batch_size=16,
                          limit_train=320, limit_test=64, data_dir=mnist5k_dir), log=logs.append)
    assert logs[0] == ("training with sgd lr 0.1 momentum 0.9 weight decay 0.0005, cosine schedule, "
                       "augmentation off (the paper's recipe)")
    drawn = [s for s in capsys.readouterr().err.split("\r") if "step" in s]
    for epoch in (1, 2):
        last = [s for s in drawn if s.startswith(f"epoch {epoch}/2")][-1]
        assert "100%" in last and "20/20" in last, last
