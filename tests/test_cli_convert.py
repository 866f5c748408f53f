"""signgd-convert (``python -m convert``): outputs, multi-device equality, one-line errors on bad input.

A tiny CNN (conv + BatchNorm + ReLU + max-pool + dense) and a tiny GELU/LayerNorm MLP are
trained for a few steps on mnist5k into module-scoped workdirs; everything else reuses them.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "tiny_convert_nets"
MODEL_SOURCE = textwrap.dedent('''
    import flax.linen as fnn
    from signgd_jax import nn as snn


    class TinyCNN(fnn.Module):
        num_classes: int = 10
        width: int = 4

        @fnn.compact
        def __call__(self, x, train=False):
            x = fnn.Conv(self.width, (3, 3), strides=(2, 2), use_bias=False)(x)
            x = fnn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = snn.max_pool(snn.relu(x), (2, 2))
            x = snn.relu(fnn.Dense(16)(x.reshape(x.shape[0], -1)))
            return fnn.Dense(self.num_classes)(x)


    class TinyGeluMLP(fnn.Module):
        num_classes: int = 10

        @fnn.compact
        def __call__(self, x, train=False):
            x = fnn.Dense(16)(x[:, ::4, ::4].reshape(x.shape[0], -1))
            x = snn.gelu(snn.LayerNorm()(x))
            return fnn.Dense(self.num_classes)(x)


    def tiny(num_classes):
        return TinyCNN(num_classes)


    def wide(num_classes):  # same structure, other shapes: for the mismatch test
        return TinyCNN(num_classes, width=6)


    def gelu_mlp(num_classes):
        return TinyGeluMLP(num_classes)
''')
FAST = ["--limit", "64", "--timesteps", "1,4", "--batch-size", "48", "--calibration-batches", "2",
        "--no-progress"]


def _train(workdir, model, data_dir):
    from signgd_jax.commands import train

    train.run(train.TrainConfig(model=f"{MODULE}:{model}", workdir=str(workdir), dataset="mnist5k",
                                epochs=1, batch_size=64, limit_train=256, limit_test=64, data_dir=data_dir,
                                progress=False),
              log=lambda msg: None)


@pytest.fixture(scope="module")
def env(tmp_path_factory, mnist5k_dir):
    """Trained workdirs plus broken copies; the model module importable here and in subprocesses."""
    root = tmp_path_factory.mktemp("cli_convert")
    (root / f"{MODULE}.py").write_text(MODEL_SOURCE)
    sys.path.insert(0, str(root))
    try:
        _train(root / "cnn", "tiny", mnist5k_dir)  # config.json keeps data_dir: convert finds it there
        _train(root / "gelu", "gelu_mlp", mnist5k_dir)
        bad = root / "bad"
        bad.mkdir()
        (bad / "empty_data").mkdir()
        (bad / "no_checkpoint").mkdir()
        shutil.copy(root / "cnn" / "config.json", bad / "no_checkpoint" / "config.json")
        shutil.copytree(root / "cnn", bad / "mismatch")
        config = json.loads((bad / "mismatch" / "config.json").read_text())
        config["model"] = f"{MODULE}:wide"
        (bad / "mismatch" / "config.json").write_text(json.dumps(config))
        shutil.copytree(root / "cnn", bad / "corrupt")
        for folder, _, files in os.walk(bad / "corrupt" / "checkpoints"):
            if os.path.basename(folder) == "d" and "variables" in folder:
                for name in files:
                    with open(os.path.join(folder, name), "wb") as f:
                        f.write(b"not a checkpoint")
        shutil.copytree(root / "cnn", bad / "bad_config")
        (bad / "bad_config" / "config.json").write_text("{ not json")
        yield root
    finally:
        sys.path.remove(str(root))


def _subprocess_env(root, **extra):
    path = os.pathsep.join([REPO, str(root), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu", **extra)


def _main(argv):
    from signgd_jax.commands.evaluate.cli import main

    return main(argv)


def _listing(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else None


def test_outputs(env, capsys):
    workdir = env / "cnn"
    assert _main(["--workdir", str(workdir), *FAST]) == 0
    out = capsys.readouterr().out
    table = out[out.index("accuracy (%)"):].splitlines()
    assert table[1].split() == ["T=1", "T=4"]
    assert [line.split()[0] for line in table[2:6]] == ["ANN", "paper", "improved", "if"]
    assert all(len(line.split()) == 3 for line in table[2:6])
    results = json.loads((workdir / "results.json").read_text())
    assert results["model"] == f"{MODULE}:tiny" and results["dataset"] == "mnist5k"
    assert results["num_test_images"] == 64 and results["timesteps"] == [1, 4]
    assert results["command"].startswith("signgd-convert --workdir")
    assert 0 <= results["ann"]["accuracy"] <= 1
    assert results["settings"]["data_dir"] == json.loads((workdir / "config.json").read_text())["data_dir"]
    assert results["calibration"] == dict(split="train", batches=2, batch_size=48, images=96, seed=0)
    for name in ("paper", "improved", "if"):
        r = results["dynamics"][name]
        assert r["supported"] and set(r["accuracy"]) == {"1", "4"}
        assert all(r["accuracy"][t] == r["correct"][t] / 64 for t in ("1", "4"))
        stats = r["spike_statistics"]
        assert stats["num_steps"] == 4 and stats["num_images"] == 64
        assert stats["layers"] and all(0 <= v["firing_rate"] <= 1 for v in stats["layers"].values())
        assert stats["sops_per_image_step"] > 0 and stats["ann_macs_per_image"] > 0
        assert set(r["timings"]) >= {"convert_s", "simulate_s"}
    assert {"platform", "cpu_count", "usable_cpus", "devices"} <= set(results["machine"])
    assert 1 <= results["machine"]["usable_cpus"] <= results["machine"]["cpu_count"]
    assert (workdir / "accuracy_vs_timesteps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [f for f in os.listdir(workdir) if f.endswith(".tmp")]


def test_if_is_na_for_gelu_networks(env, capsys):
    workdir = env / "gelu"
    assert _main(["--workdir", str(workdir), *FAST, "--dynamics", "if,paper"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (["if"], ["paper"])}
    assert rows["if"] == ["n/a", "n/a"] and rows["paper"] != ["n/a", "n/a"]
    assert "n/a: if:" in out and "gelu" in out
    results = json.loads((workdir / "results.json").read_text())
    assert results["dynamics"]["if"]["supported"] is False and results["dynamics"]["if"]["accuracy"] is None
    assert list(results["dynamics"]) == ["if", "paper"]


def test_four_devices_give_the_same_table(env, capsys):
    one = env / "cnn_one_device"
    four = env / "cnn_four_devices"
    for d in (one, four):
        shutil.copytree(env / "cnn", d, ignore=shutil.ignore_patterns("results.json", "*.png"))
    argv = ["--workdir", str(one), *FAST, "--batch-size", "40"]  # 64 = 40 + 24: a padded last batch
    assert _main(argv) == 0
    capsys.readouterr()
    proc = subprocess.run([sys.executable, "-m", "convert", "--workdir", str(four), *argv[2:]],
                          env=_subprocess_env(env, XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r1 = json.loads((one / "results.json").read_text())
    r4 = json.loads((four / "results.json").read_text())
    assert r1["machine"]["device_count"] == 1 and r4["machine"]["device_count"] == 4
    assert r4["settings"]["eval_batch_size"] == 40
    # Exact equality: the per-image computation does not depend on how the batch is split.
    assert r4["ann"] == r1["ann"]
    for name in ("paper", "improved", "if"):
        assert r4["dynamics"][name]["correct"] == r1["dynamics"][name]["correct"], name
        s1, s4 = r1["dynamics"][name]["spike_statistics"], r4["dynamics"][name]["spike_statistics"]
        assert s4["sops_per_image_step"] == pytest.approx(s1["sops_per_image_step"], rel=1e-6)


def test_interrupted_evaluation_resumes_with_the_same_numbers(env, capsys, monkeypatch):
    import signgd_jax.commands.evaluate.core as core
    from signgd_jax.commands.evaluate.progress import PROGRESS_DIR

    whole, cut = env / "cnn_whole", env / "cnn_cut"
    for d in (whole, cut):
        shutil.copytree(env / "cnn", d, ignore=shutil.ignore_patterns("results.json", "*.png"))
    # 5 batches of 24 (the last padded); the stochastic codec's key depends on the batch index
    args = ["--limit", "100", "--timesteps", "1,4", "--batch-size", "24", "--calibration-batches", "2",
            "--codec", "stochastic", "--no-progress"]
    assert _main(["--workdir", str(whole), *args]) == 0
    simulate, calls = core.signgd_jax.simulate, []

    def interrupted_at_call_9(*a, **k):  # paper: 5 batches + the zero batch; improved: 2 batches done
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return simulate(*a, **k)

    monkeypatch.setattr(core.signgd_jax, "simulate", interrupted_at_call_9)
    assert _main(["--workdir", str(cut), *args]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert not (cut / "results.json").exists()
    saved = {f: int(np.load(cut / PROGRESS_DIR / f)["batches"]) for f in ("ann.npz", "paper.npz", "improved.npz")}
    assert saved == {"ann.npz": 5, "paper.npz": 5, "improved.npz": 2}

    calls.clear()
    monkeypatch.setattr(core.signgd_jax, "simulate", lambda *a, **k: (calls.append(1), simulate(*a, **k))[1])
    assert _main(["--workdir", str(cut), *args]) == 0
    assert len(calls) == 1 + (3 + 1) + (5 + 1)  # paper's zero batch; improved's last 3 batches, if's 5 (+ zero)
    assert not (cut / PROGRESS_DIR).exists()
    r_whole = json.loads((whole / "results.json").read_text())
    r_cut = json.loads((cut / "results.json").read_text())
    assert r_cut["ann"] == r_whole["ann"]
    for name in ("paper", "improved", "if"):
        assert r_cut["dynamics"][name]["correct"] == r_whole["dynamics"][name]["correct"], name
        assert r_cut["dynamics"][name]["spike_statistics"] == r_whole["dynamics"][name]["spike_statistics"], name
    assert [r_cut["dynamics"][n]["timings"]["resumed_batches"] for n in ("paper", "improved", "if")] == [5, 2, 0]


def test_progress_of_other_settings_is_discarded(tmp_path):
    from signgd_jax.commands.evaluate.progress import PROGRESS_DIR, ProgressStore

    logs = []
    store = ProgressStore(str(tmp_path), dict(timesteps=(1, 4)), save_every_s=3600, log=logs.append)
    assert store.load("paper") == (0, {})
    store.save("paper", 1, dict(correct=np.array([3, 4])))  # too soon after the load: not saved
    assert not (tmp_path / PROGRESS_DIR).exists()
    store.save("paper", 2, dict(correct=np.array([5, 6])), force=True)
    done, sums = ProgressStore(str(tmp_path), dict(timesteps=[1, 4]), log=logs.append).load("paper")
    assert done == 2 and sums["correct"].tolist() == [5, 6] and not logs
    assert ProgressStore(str(tmp_path), dict(timesteps=[1, 8]), log=logs.append).load("paper") == (0, {})
    assert len(logs) == 1 and "other settings" in logs[0]


BAD_INPUTS = {
    "unknown dataset": (["--dataset", "nonexistent_set"], "unknown dataset 'nonexistent_set'"),
    "missing workdir": (["--workdir", "{root}/does_not_exist"], "does not exist"),
    "missing checkpoint": (["--workdir", "{root}/bad/no_checkpoint"], "no checkpoints"),
    "corrupt checkpoint": (["--workdir", "{root}/bad/corrupt"], "corrupt checkpoint"),
    "corrupt config": (["--workdir", "{root}/bad/bad_config"], "corrupt checkpoint"),
    "other model": (["--workdir", "{root}/bad/mismatch"], "does not match the model"),
    "zero timestep": (["--timesteps", "0,4"], "timesteps must be positive integers"),
    "letters timestep": (["--timesteps", "a,b"], "timesteps must be positive integers"),
    "fractional timestep": (["--timesteps", "1.5"], "timesteps must be positive integers"),
    "unknown dynamics": (["--dynamics", "paper,lif"], "unknown dynamics 'lif'"),
    "unknown dtype": (["--dtype", "float16"], "unknown dtype 'float16'"),
    "not prepared": (["--dataset", "mnist", "--data-dir", "{root}/bad/empty_data"], "tfds build mnist"),
    "incompatible dataset": (["--dataset", "cifar10"], "does not fit the model"),
    "bad batch size": (["--batch-size", "0"], "batch-size must be a positive integer"),
}


def _bad_argv(env, extra):
    argv = ["--workdir", str(env / "cnn_untouched"), *FAST]
    return argv + [a.format(root=env) for a in extra]


@pytest.fixture(scope="module")
def untouched(env):
    shutil.copytree(env / "cnn", env / "cnn_untouched", ignore=shutil.ignore_patterns("results.json", "*.png"))
    return env / "cnn_untouched"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax after a failed restore
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_in_process(env, untouched, case, capsys):
    extra, expected = BAD_INPUTS[case]
    argv = _bad_argv(env, extra)
    workdir = argv[max(i for i, a in enumerate(argv) if a == "--workdir") + 1]  # argparse: the last wins
    before = _listing(workdir)
    assert _main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err
    assert _listing(workdir) == before  # nothing written, no temporary files left


@pytest.mark.parametrize("case", ["corrupt checkpoint", "fractional timestep", "not prepared"])
def test_bad_input_subprocess(env, untouched, case):
    extra, expected = BAD_INPUTS[case]
    argv = _bad_argv(env, extra)
    proc = subprocess.run([sys.executable, "-m", "convert", *argv], env=_subprocess_env(env),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_argparse_errors_are_one_line(env):
    proc = subprocess.run([sys.executable, "-m", "convert", "--workdir", str(env / "cnn"), "--limit", "x"],
                          env=_subprocess_env(env), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--limit" in proc.stderr
