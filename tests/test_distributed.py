"""Multi-process evaluation (signgd_jax.commands.evaluate.distributed): the per-process data
split, the flags and environment, process-0-only writing, and two real processes on this
machine (CPU, gloo collectives, a localhost coordinator) whose results.json equals the
single-process run's, also when resuming a run interrupted in a single process; and processes
whose settings or inputs differ (one with --eta0 0.2, one with other weights) all stopping with
status 2 and the same one line naming the first difference.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from signgd_jax.data import padded_batches
from signgd_jax.commands.evaluate import distributed
from signgd_jax.commands.evaluate.core import ConvertError
from signgd_jax.commands.evaluate.progress import PROGRESS_DIR, ProgressStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "two_process_nets"
MODEL_SOURCE = textwrap.dedent('''
    import flax.linen as fnn
    from signgd_jax import nn as snn


    class SmallConvNet(fnn.Module):
        num_classes: int = 10

        @fnn.compact
        def __call__(self, x, train=False):
            x = fnn.Conv(4, (3, 3), strides=(2, 2))(x)
            x = snn.max_pool(snn.relu(x), (2, 2))
            return fnn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


    def small(num_classes):
        return SmallConvNet(num_classes)
''')
# 40 test images in batches of 16: the last batch holds 8 real rows, so with two devices the
# second one's share of it is all padding (its process still takes part in every batch).
# The stochastic codec draws its noise per batch row: equal results need equal batches.
# One dynamics keeps the test short: the others take the same path through the evaluation.
ARGS = ["--limit", "40", "--timesteps", "1,4", "--batch-size", "16", "--calibration-batches", "2",
        "--codec", "stochastic", "--dynamics", "improved", "--no-progress"]
RUN_TIMEOUT_S = 150


# ----------------------------------------------------------------------------- the data split


class _FakeDataset:
    """Enough of signgd_jax.data.Dataset for distributed._subset: indices and a cache."""

    name, image_shape = "fake", (2, 2, 1)

    def __init__(self, n):
        self._indices = np.arange(n) * 3  # a view that is not the identity
        self._cache = None
        self.reads = []

    def __len__(self):
        return len(self._indices)

    def get(self, positions):
        keys = self._indices[np.asarray(positions)]
        self.reads.extend(keys.tolist())
        return (np.broadcast_to(keys[:, None, None, None], (len(keys), 2, 2, 1)).astype(np.float32),
                (keys % 10).astype(np.int32))


@pytest.mark.parametrize("n, batch, devices_per_process", [(40, 16, [1, 1]), (40, 16, [2, 2]),
                                                           (50, 24, [2, 2, 2]), (7, 8, [2, 2, 2, 2])])
def test_process_shares_put_together_are_the_single_process_batches(n, batch, devices_per_process):
    ds = _FakeDataset(n)
    whole = list(padded_batches(ds, batch))
    starts = np.cumsum([0, *devices_per_process])[:-1]
    shares = []
    for p, (first, local) in enumerate(zip(starts, devices_per_process)):
        lo, hi = distributed.share_bounds(batch, sum(devices_per_process), first, local)
        ds.reads = []
        shares.append(list(distributed.local_batches(ds, batch, lo, hi)))
        mine = np.concatenate([pos for pos in distributed.share_positions(n, batch, lo, hi)]).astype(int)
        assert sorted(ds.reads) == sorted(ds._indices[mine].tolist())  # read its own rows only
    assert {len(s) for s in shares} == {len(whole)}  # every process takes part in every batch
    for i, (images, labels, k) in enumerate(whole):
        assert np.array_equal(np.concatenate([s[i][0] for s in shares]), images)
        assert np.array_equal(np.concatenate([s[i][1] for s in shares]), labels)
        assert [s[i][2] for s in shares] == [k] * len(shares)  # the global batch's real rows
    # each image is read by exactly one process
    per_process = [np.concatenate(distributed.share_positions(n, batch, *distributed.share_bounds(
        batch, sum(devices_per_process), f, l))) for f, l in zip(starts, devices_per_process)]
    assert np.array_equal(np.sort(np.concatenate(per_process)), np.arange(n))


def test_resumed_share_starts_at_the_same_batch():
    ds = _FakeDataset(40)
    full = list(distributed.local_batches(ds, 16, 8, 16))
    resumed = list(distributed.local_batches(ds, 16, 8, 16, first=1))
    assert len(resumed) == 2
    for (a, b, k), (c, d, m) in zip(full[1:], resumed):
        assert np.array_equal(a, c) and np.array_equal(b, d) and k == m
    assert np.all(full[2][1] == -1) and np.all(full[2][0] == 0)  # this share of the last batch: padding


def test_share_bounds_need_a_batch_the_devices_divide():
    assert distributed.share_bounds(12, 4, 2, 2) == (6, 12)
    with pytest.raises(ValueError, match="multiple"):
        distributed.share_bounds(10, 4, 0, 2)


# ----------------------------------------------------------------------------- flags and environment


def _args(**kw):
    return types.SimpleNamespace(**{k: kw.get(k) for k in ("coordinator_address", "num_processes", "process_id")})


def test_settings_from_flags_else_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed.settings(_args(), {}) is None  # single process: nothing initialised
    assert distributed.settings(_args(), env) == dict(coordinator_address="h0:1234", num_processes=4,
                                                      process_id=3)
    assert distributed.settings(_args(coordinator_address="h1:99", process_id="0"), env) == dict(
        coordinator_address="h1:99", num_processes=4, process_id=0)
    # only some given: the rest is left to JAX's cluster detection
    assert distributed.settings(_args(num_processes="2"), {}) == dict(coordinator_address=None, num_processes=2,
                                                                      process_id=None)


@pytest.mark.parametrize("kw, message", [
    (dict(num_processes="two"), "--num-processes .* must be an integer"),
    (dict(num_processes="2", process_id="2"), r"--process-id must be in 0\.\.1"),
    (dict(num_processes="0"), "at least 1"),
    (dict(coordinator_address="localhost"), "HOST:PORT"),
])
def test_bad_settings_are_one_line_errors(kw, message):
    with pytest.raises(ConvertError, match=message):
        distributed.settings(_args(**kw), {})


def test_bad_settings_end_the_command_with_one_line(tmp_path, capsys):
    from signgd_jax.commands.evaluate.cli import main

    assert main(["--workdir", str(tmp_path), "--num-processes", "2", "--process-id", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--process-id must be in 0..1" in err
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- process 0 writes


def test_only_process_zero_touches_the_progress_files(tmp_path):
    settings = dict(model="m", timesteps=[1, 4])
    other = ProgressStore(str(tmp_path), dict(settings, model="other"), save_every_s=0,
                          processes=distributed.Processes(0, 1))
    other.save("ann", 2, dict(correct=np.int64(7)), force=True)
    before = sorted(os.listdir(tmp_path / PROGRESS_DIR))
    logged = []
    second = ProgressStore(str(tmp_path), settings, save_every_s=0, log=logged.append,
                           processes=distributed.Processes(1, 1))  # not the writer
    assert not logged and sorted(os.listdir(tmp_path / PROGRESS_DIR)) == before  # nothing discarded
    second.save("paper", 3, dict(correct=np.arange(2)), force=True)
    assert sorted(os.listdir(tmp_path / PROGRESS_DIR)) == before  # nothing written
    assert second.load("paper") == (0, {})  # a non-writer reads nothing itself
    writer = ProgressStore(str(tmp_path), settings, save_every_s=0, log=logged.append,
                           processes=distributed.Processes(0, 1))
    assert logged and "other settings" in logged[0]
    writer.save("paper", 3, dict(correct=np.arange(2)), force=True)
    batches, sums = writer.load("paper")
    assert batches == 3 and np.array_equal(sums["correct"], [0, 1])


# ----------------------------------------------------------------------------- two real processes


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mnist5k_dir):
    """A trained tiny workdir; its model module importable here and in the subprocesses."""
    from signgd_jax.commands import train

    root = tmp_path_factory.mktemp("distributed")
    (root / f"{MODULE}.py").write_text(MODEL_SOURCE)
    sys.path.insert(0, str(root))
    try:
        train.run(train.TrainConfig(model=f"{MODULE}:small", workdir=str(root / "trained"), dataset="mnist5k",
                                    epochs=1, batch_size=64, limit_train=256, limit_test=64,
                                    data_dir=mnist5k_dir, progress=False),
                  log=lambda msg: None)
        yield root / "trained"
    finally:
        sys.path.remove(str(root))


def _copy(trained, name):
    target = trained.parent / name
    shutil.copytree(trained, target, ignore=shutil.ignore_patterns("results.json", "*.png"))
    return target


def _env(trained, devices, **extra):
    path = os.pathsep.join([REPO, str(trained.parent), os.environ.get("PYTHONPATH", "")])
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    return dict(env, PYTHONPATH=path, JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(commands, envs):
    procs = [subprocess.Popen(c, env=e, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c, e in zip(commands, envs)]
    try:
        outs = [p.communicate(timeout=RUN_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [f"process {i}: exit {p.returncode}\n{out}\n{err[-2000:]}"
              for i, (p, (out, err)) in enumerate(zip(procs, outs)) if p.returncode != 0]
    assert not failed, "\n".join(failed)
    return outs


def _comparable(results):
    """results.json without what depends on where and how long it ran."""
    r = json.loads(json.dumps(results))
    r["command"] = r["command"].replace(r.pop("workdir"), "WORKDIR")
    r.pop("machine"), r.pop("timings")
    for d in r["dynamics"].values():
        d.pop("timings")
    return r


def _two_process_run(trained, workdirs, devices, by_flags):
    address = f"127.0.0.1:{_free_port()}"
    commands, envs = [], []
    for pid, wd in enumerate(workdirs):
        command = [sys.executable, "-m", "convert", "--workdir", str(wd), *ARGS]
        env = _env(trained, devices, JAX_COORDINATOR_BIND_ADDRESS=address)  # IPv4 loopback only
        if by_flags:
            commands.append([*command, "--coordinator-address", address, "--num-processes", "2",
                             "--process-id", str(pid)])
            envs.append(env)
        else:
            commands.append(command)
            envs.append(dict(env, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid)))
    return _run_processes(commands, envs)


# each process restores the trained checkpoint onto its own first device
# (train.checkpoint.abstract_like uses jax.local_devices()[0]; jax.devices()[0] is process 0's)
def test_two_processes_write_the_single_process_results(workdir, capsys, monkeypatch):
    import signgd_jax.commands.evaluate.core as core
    from signgd_jax.commands.evaluate.cli import main

    single, two, two_p1 = _copy(workdir, "single"), _copy(workdir, "two"), _copy(workdir, "two_p1")
    resumed, resumed_p1 = _copy(workdir, "resumed"), _copy(workdir, "resumed_p1")
    p1_listing = sorted(os.listdir(two_p1))

    # the reference: this (single) process
    assert main(["--workdir", str(single), *ARGS], prog="python -m convert") == 0
    reference = json.loads((single / "results.json").read_text())
    assert reference["machine"]["process_count"] == 1 and reference["settings"]["eval_batch_size"] == 16

    # an evaluation interrupted in this process, to be resumed by two processes below
    simulate, calls = core.signgd_jax.simulate, []

    def interrupted_at_call_2(*a, **k):  # the ANN done, then one batch of the SNN
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return simulate(*a, **k)

    monkeypatch.setattr(core.signgd_jax, "simulate", interrupted_at_call_2)
    assert main(["--workdir", str(resumed), *ARGS]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert sorted(os.listdir(resumed / PROGRESS_DIR)) == ["ann.npz", "improved.npz", "settings.json"]

    # two processes with one device each, set up by environment variables, each with its own
    # copy of the workdir as on two hosts without a shared file system: process 1 writes nothing
    out0, out1 = _two_process_run(workdir, [two, two_p1], 1, by_flags=False)
    assert "wrote" in out0[0] and "wrote" not in out1[0]
    assert sorted(os.listdir(two_p1)) == p1_listing
    result = json.loads((two / "results.json").read_text())
    assert result["machine"]["process_count"] == 2 and result["machine"]["device_count"] == 2
    assert not (two / PROGRESS_DIR).exists()
    assert _comparable(result) == _comparable(reference)

    # two processes with two devices each, set up by flags, resume the interrupted evaluation:
    # process 0 sends its saved tallies to process 1, whose copy of the workdir holds none.
    # (4 devices of 4 rows: the last batch's 8 real images are all process 0's.)
    _two_process_run(workdir, [resumed, resumed_p1], 2, by_flags=True)
    result = json.loads((resumed / "results.json").read_text())
    assert result["machine"]["device_count"] == 4
    assert result["dynamics"]["improved"]["timings"]["resumed_batches"] == 1
    assert sorted(os.listdir(resumed_p1)) == p1_listing
    comparable = _comparable(result)
    assert comparable.pop("command").endswith("--process-id 0")
    expected = _comparable(reference)
    expected.pop("command")
    assert comparable == expected


# ----------------------------------------------------------------------------- processes agree or stop


def _verdict(*item_lists):
    """What every process of a run with these settings (one list per process) concludes."""
    encodings = np.stack([distributed.encode_settings(items) for items in item_lists])
    return distributed.disagreement(encodings, [name for name, _ in item_lists[0]], "command options")


def test_equal_settings_agree_and_the_first_difference_is_named():
    base = [("--timesteps", "1,4"), ("--dynamics", "improved"), ("--eta0", 0.15), ("--gamma", 0.95)]
    assert _verdict(base, list(base), list(base)) is None
    other = [*base[:2], ("--eta0", 0.2), ("--gamma", 0.9)]
    message = _verdict(base, other)
    assert message == ("the processes disagree on --eta0 (process 0: 0.15; process 1: 0.2): start every "
                       "process with the same command options")
    # more processes: grouped by value
    assert "(processes 0, 2: 0.15; process 1: 0.2)" in _verdict(base, other, base)
    # a value that differs only in type or beyond the text shown is still a difference
    assert "on --eta0" in _verdict(base, [*base[:2], ("--eta0", "0.15"), base[3]])
    long_a, long_b = "x" * 100 + "a", "x" * 100 + "b"
    message = _verdict([("--model", long_a)], [("--model", long_b)])
    assert message.startswith("the processes disagree on --model (process 0: xxx") and "..." in message
    # other lists of names (another version on one host): said so, not a wrong name
    assert "different lists of command options" in _verdict(base, base[:3])


def test_one_process_compares_nothing():
    calls = []
    distributed.agree([("--eta0", 0.15)], distributed.Processes(0, 1), gather=calls.append)
    assert calls == []


def test_a_disagreement_is_the_same_one_line_error_on_every_process():
    mine, theirs = [("--eta0", 0.15), ("--gamma", 0.95)], [("--eta0", 0.2), ("--gamma", 0.95)]
    everyone = np.stack([distributed.encode_settings(mine), distributed.encode_settings(theirs)])
    messages = []
    for index, items in enumerate((mine, theirs)):
        with pytest.raises(ConvertError) as e:
            distributed.agree(items, distributed.Processes(index, 2), gather=lambda encoding: everyone)
        messages.append(str(e.value))
    assert messages[0] == messages[1] and "\n" not in messages[0] and "--eta0" in messages[0]
    distributed.agree(mine, distributed.Processes(0, 2), gather=lambda e: np.stack([e, e]))  # agree: no error


def test_the_encoding_has_one_size():
    assert distributed.encode_settings([]).shape == distributed.encode_settings(
        [(f"s{i}", "v" * 500) for i in range(distributed.SETTING_ROWS - 1)]).shape
    with pytest.raises(ValueError, match="at most"):
        distributed.encode_settings([(f"s{i}", i) for i in range(distributed.SETTING_ROWS)])


def test_command_settings_cover_the_options_that_decide_the_numbers():
    from signgd_jax.commands.evaluate.cli import parser

    p = parser()
    common = ["--timesteps", "1,4", "--coordinator-address", "h:1", "--num-processes", "2"]
    a = p.parse_args(["--workdir", "/host_a/w", *common, "--process-id", "0", "--data-dir", "/a"])
    b = p.parse_args(["--workdir", "/host_b/w", *common, "--process-id", "1", "--no-progress"])
    settings_a, settings_b = distributed.command_settings(p, a), distributed.command_settings(p, b)
    names = [name for name, _ in settings_a]
    assert {"--timesteps", "--dynamics", "--eta0", "--gamma", "--schedule", "--codec", "--dataset", "--model",
            "--limit", "--batch-size", "--dtype", "--spread", "the jax version", "the signgd_jax code"} <= set(names)
    assert not {"--workdir", "--data-dir", "--weights", "--no-progress", "--process-id"} & set(names)
    assert settings_a == settings_b  # only per-host options differ: they agree
    c = p.parse_args(["--workdir", "w", *common, "--process-id", "1", "--eta0", "0.2"])
    assert dict(distributed.command_settings(p, c))["--eta0"] == 0.2


def test_input_settings_compare_weight_and_image_contents_not_paths():
    class Split:
        name = "mnist5k"

        def __len__(self):
            return 40

    weights = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    changed = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3) + np.float32(1e-6)}}
    calib = [np.zeros((2, 4, 4, 1), np.float32)]
    here = dict(model="m", weights=dict(path="/a/w.safetensors", bytes=10, mtime_ns=1), source="timm")
    there = dict(here, weights=dict(path="/b/w.safetensors", bytes=10, mtime_ns=2))
    same = distributed.input_settings(here, weights, Split(), calib)
    assert same == distributed.input_settings(there, weights, Split(), [c.copy() for c in calib])
    assert "the weights" in _verdict(same, distributed.input_settings(here, changed, Split(), calib))
    assert "calibration images" in _verdict(same, distributed.input_settings(here, weights, Split(),
                                                                             [calib[0] + 1]))


def _run_both(commands, env):
    """``(exit statuses, (stdout, stderr) per process)`` of processes that may fail."""
    procs = [subprocess.Popen(c, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    try:
        outs = [p.communicate(timeout=RUN_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], outs


def test_two_processes_with_different_settings_both_stop_with_one_line(workdir):
    """One process with --eta0 0.2, the other with the default (each with its copy of the trained
    workdir): both exit 2 at start, before anything is loaded, with the same one line naming
    --eta0. (Before, both ran to the end and exited 0.)"""
    address = f"127.0.0.1:{_free_port()}"
    copies = [_copy(workdir, f"eta0_p{pid}") for pid in (0, 1)]
    commands = [[sys.executable, "-m", "convert", "--workdir", str(wd), *ARGS, "--coordinator-address", address,
                 "--num-processes", "2", "--process-id", str(pid), *(["--eta0", "0.2"] if pid == 1 else [])]
                for pid, wd in enumerate(copies)]
    statuses, outs = _run_both(commands, _env(workdir, 1, JAX_COORDINATOR_BIND_ADDRESS=address))
    expected = ("error: the processes disagree on --eta0 (process 0: 0.15; process 1: 0.2): start every "
                "process with the same command options\n")
    for status, (out, err) in zip(statuses, outs):
        assert (status, err) == (2, expected), (status, out, err)
    for wd in copies:  # nothing was evaluated or written
        assert not (wd / "results.json").exists() and not (wd / PROGRESS_DIR).exists()


def test_two_processes_with_different_weights_both_stop_with_one_line(workdir, mnist5k_dir):
    """The same command on both, but process 1's copy of the workdir holds other weights (another
    seed, the same model and step): both exit 2 once the inputs are loaded, naming the weights."""
    from signgd_jax.commands import train

    other = workdir.parent / "other_seed"
    train.run(train.TrainConfig(model=f"{MODULE}:small", workdir=str(other), dataset="mnist5k", epochs=1,
                                batch_size=64, limit_train=256, limit_test=64, data_dir=mnist5k_dir, progress=False,
                                seed=1), log=lambda msg: None)
    address = f"127.0.0.1:{_free_port()}"
    commands = [[sys.executable, "-m", "convert", "--workdir", str(wd), *ARGS, "--coordinator-address", address,
                 "--num-processes", "2", "--process-id", str(pid)]
                for pid, wd in enumerate([_copy(workdir, "seed0"), other])]
    env = _env(workdir, 1, JAX_COORDINATOR_BIND_ADDRESS=address)
    statuses, outs = _run_both(commands, env)
    errors = [err for _, err in outs]
    assert statuses == [2, 2], outs
    assert errors[0] == errors[1] and errors[0].count("\n") == 1, errors
    assert errors[0].startswith("error: the processes disagree on the weights (digest of their values) (process 0: ")
    assert not (workdir.parent / "seed0" / "results.json").exists() and not (other / "results.json").exists()
