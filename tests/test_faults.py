"""Faults the commands survive: SIGKILL while orbax writes a checkpoint, two conversions of one
workdir at once, NaN or Inf in the images, an output folder that is read-only or full.

Each ends either with the same numbers as an undisturbed run or with one line on stderr and exit
status 2, and never with a partial ``results.json``.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import numpy as np
import pytest

from signgd_jax import data
from signgd_jax.commands import train
from signgd_jax.commands.evaluate import cli as convert_cli
from signgd_jax.commands.evaluate import core as convert_core

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
MODEL = "test_faults:TinyCNN"  # importable in subprocesses through PYTHONPATH=tests
CONVERT = ["--limit", "64", "--timesteps", "1,4", "--batch-size", "32", "--calibration-batches", "2",
           "--dynamics", "paper,if", "--no-progress"]


class TinyCNN(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(6, (3, 3), strides=2)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(nn.Conv(8, (3, 3), strides=2)(nn.relu(x)))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _env(**extra):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]), JAX_PLATFORMS="cpu", **extra)


def _python(args, timeout=180):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------- SIGKILL


# ``signgd-train`` with an on_step callback that SIGKILLs the process right after the
# checkpoint of step KILL_AT was started (orbax writes it in the background).
KILLED_TRAIN = textwrap.dedent("""
    import os, signal, sys
    from signgd_jax.commands.train import TrainConfig, run
    from signgd_jax.commands.train.cli import parser

    kill_at = int(sys.argv[1])

    def kill_during_checkpoint_write(step, checkpointing):
        if step == kill_at:
            assert checkpointing, "the kill must come while a checkpoint is written"
            os.kill(os.getpid(), signal.SIGKILL)

    run(TrainConfig(**vars(parser().parse_args(sys.argv[2:]))), on_step=kill_during_checkpoint_write)
""")


def _lines(path):
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in f]


def test_sigkill_during_checkpoint_write_then_the_same_command_resumes_exactly(tmp_path, mnist5k_dir):
    args = ["--model", MODEL, "--dataset", "mnist5k", "--data-dir", mnist5k_dir, "--epochs", "2",
            "--batch-size", "32", "--limit-train", "320", "--limit-test", "200", "--checkpoint-every", "4",
            "--no-progress"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    done = _python(["-m", "train", *args, "--workdir", full])
    assert done.returncode == 0, done.stderr
    # 10 steps per epoch: checkpoints 4, 8, 10 (epoch end), 12, then 16, killed while written
    killed = _python(["-c", KILLED_TRAIN, "16", *args, "--workdir", cut])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = sorted(os.listdir(os.path.join(cut, "checkpoints")))
    assert "16" not in left and [n for n in left if n.startswith("16.") and "tmp" in n], left  # half-written
    resumed = _python(["-m", "train", *args, "--workdir", cut])  # the same command
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint 12: epoch 2/2, step 2/10" in resumed.stdout
    assert not [n for n in os.listdir(os.path.join(cut, "checkpoints")) if "tmp" in n]
    assert _lines(os.path.join(cut, "metrics.jsonl")) == _lines(os.path.join(full, "metrics.jsonl"))
    _, expected, _ = train.load_trained(full)
    _, got, _ = train.load_trained(cut)
    jax.tree.map(np.testing.assert_array_equal, got, expected)  # bit-identical final weights


# ----------------------------------------------------------------------------- convert


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist5k_dir):
    workdir = tmp_path_factory.mktemp("faults") / "trained"
    train.run(train.TrainConfig(model=MODEL, workdir=str(workdir), epochs=1, batch_size=64, limit_train=256,
                                limit_test=64, data_dir=mnist5k_dir, progress=False), log=lambda m: None)
    return workdir


@pytest.fixture
def workdir(trained, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(trained, copy)
    return copy


@pytest.fixture
def no_simulation(monkeypatch):
    """Fails the test if the command converts or simulates anything."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the command simulated although the fault was known before")

    monkeypatch.setattr(convert_core.signgd_jax, "convert", forbidden)
    monkeypatch.setattr(convert_core.signgd_jax, "simulate", forbidden)


def _convert(workdir, capsys, *extra):
    code = convert_cli.main(["--workdir", str(workdir), *CONVERT, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err, *needles):
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_a_second_convert_on_a_busy_workdir_stops_and_the_first_is_unharmed(workdir, tmp_path, capsys):
    reference = tmp_path / "reference"
    shutil.copytree(workdir, reference)
    first = subprocess.Popen([sys.executable, "-m", "convert", "--workdir", str(workdir), *CONVERT], cwd=ROOT,
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = first.stdout.readline()  # printed once the first holds the workdir and has loaded it
        assert "test images" in line, (line, first.stderr.read() if first.poll() is not None else "")
        before = sorted(os.listdir(workdir))
        code, _, err = _convert(workdir, capsys)
        assert code == 2
        _one_error_line(err, f"workdir {workdir} is in use by another signgd-train or signgd-convert process")
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert "wrote" in out and sorted(os.listdir(workdir)) != before  # the first finished its work
    assert _convert(reference, capsys)[0] == 0
    got, want = (json.loads((d / "results.json").read_text()) for d in (workdir, reference))
    assert got["ann"] == want["ann"]
    for name in ("paper", "if"):
        assert got["dynamics"][name]["correct"] == want["dynamics"][name]["correct"]
        assert got["dynamics"][name]["spike_statistics"] == want["dynamics"][name]["spike_statistics"]


@pytest.mark.parametrize("split,value", [("test", np.nan), ("train", np.inf), ("test", -np.inf)])
def test_nan_or_inf_images_stop_the_command_before_any_simulation(workdir, capsys, monkeypatch, no_simulation,
                                                                   split, value):
    normalize = data.Dataset.normalize

    def poisoned(self, images):  # one pixel of image 3 of every batch of ``split``
        out = normalize(self, images)
        if self.split == split and len(out) > 3:
            out = out.copy()
            out[3, 5, 7, 0] = value
        return out

    monkeypatch.setattr(data.Dataset, "normalize", poisoned)
    code, _, err = _convert(workdir, capsys)
    assert code == 2
    where = "test batch 0" if split == "test" else "calibration batch 0 of the mnist5k training split"
    _one_error_line(err, where, "image(s) 3 hold NaN or Inf values; nothing was simulated")
    assert not (workdir / "results.json").exists()


def test_read_only_workdir_is_found_before_any_simulation(workdir, capsys, monkeypatch, no_simulation):
    import tempfile

    def read_only(*args, **kwargs):  # what every file creation in the folder gets on a read-only mount
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    before = sorted(os.listdir(workdir))
    code, _, err = _convert(workdir, capsys)
    assert code == 2
    _one_error_line(err, f"cannot write into {workdir}: Read-only file system")
    assert sorted(os.listdir(workdir)) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder without write permission; the "
                    "injected read-only error above covers this case there")
def test_workdir_without_write_permission(workdir, capsys, no_simulation):
    os.chmod(workdir, 0o555)
    try:
        code, _, err = _convert(workdir, capsys)
    finally:
        os.chmod(workdir, 0o755)
    assert code == 2
    _one_error_line(err, f"cannot write into {workdir}: Permission denied")
    assert not (workdir / "results.json").exists()


def test_disk_full_while_writing_results_keeps_the_old_results(workdir, capsys, monkeypatch):
    old = '{"an earlier complete results file": true}\n'
    (workdir / "results.json").write_text(old)
    fsync = os.fsync

    def full_at_results(fd):  # the delayed ENOSPC a full disk reports when the data is flushed
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".results.json."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", full_at_results)
    code, _, err = _convert(workdir, capsys)
    assert code == 2
    _one_error_line(err, f"cannot write the results into {workdir}: No space left on device")
    assert (workdir / "results.json").read_text() == old
    assert not [f for f in os.listdir(workdir) if f.endswith(".tmp")]
    assert (workdir / "convert_progress").is_dir()  # the evaluation is kept: a rerun only writes


# ``python -m convert ARGS`` in a process where no file may grow (RLIMIT_FSIZE 0); with SIGXFSZ
# ignored every write then fails with EFBIG ("File too large"), as on a full disk
NO_FILE_MAY_GROW = textwrap.dedent("""
    import resource, runpy, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    sys.argv = ["convert", *sys.argv[1:]]
    runpy.run_module("convert", run_name="__main__", alter_sys=True)
""")


def test_no_room_for_any_byte_real_os_error(workdir):
    """The operating system refuses every byte: one line, exit 2, no results."""
    proc = _python(["-c", NO_FILE_MAY_GROW, "--workdir", str(workdir), *CONVERT])
    assert proc.returncode == 2, proc.stderr
    assert "the evaluation progress" in proc.stderr  # the first write: after the ANN pass
    _one_error_line(proc.stderr, "cannot write", "File too large")
    assert not (workdir / "results.json").exists()
    assert not [f for f in os.listdir(workdir) if f.endswith(".tmp")]
