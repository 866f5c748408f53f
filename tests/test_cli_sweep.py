"""signgd-convert --sweep-eta0/--sweep-gamma (sweep.json, one heatmap per dynamics and T) and
--diagnose (layer errors in results.json, layer_errors.png) on a tiny CNN trained on mnist5k."""
import json
import os
import sys
import textwrap

import numpy as np
import pytest

MODULE = "tiny_sweep_nets"
MODEL_SOURCE = textwrap.dedent('''
    import flax.linen as fnn
    from signgd_jax import nn as snn


    class TinyCNN(fnn.Module):
        num_classes: int = 10

        @fnn.compact
        def __call__(self, x, train=False):
            x = snn.relu(fnn.Conv(4, (3, 3), strides=(2, 2))(x))
            x = snn.relu(fnn.Dense(16)(snn.max_pool(x, (2, 2)).reshape(x.shape[0], -1)))
            return fnn.Dense(self.num_classes)(x)


    def tiny(num_classes):
        return TinyCNN(num_classes)
''')
FAST = ["--limit", "40", "--batch-size", "20", "--calibration-batches", "2", "--no-progress"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mnist5k_dir):
    from signgd_jax.commands import train

    root = tmp_path_factory.mktemp("cli_sweep")
    (root / f"{MODULE}.py").write_text(MODEL_SOURCE)
    sys.path.insert(0, str(root))
    try:
        train.run(train.TrainConfig(model=f"{MODULE}:tiny", workdir=str(root / "cnn"), dataset="mnist5k", epochs=1,
                                    batch_size=64, limit_train=512, limit_test=64, data_dir=mnist5k_dir,
                                    progress=False), log=lambda msg: None)
        yield root / "cnn"
    finally:
        sys.path.remove(str(root))


def _main(argv):
    from signgd_jax.commands.evaluate.cli import main

    return main(argv)


def test_sweep_grid_equals_separate_runs(workdir, capsys):
    argv = ["--workdir", str(workdir), *FAST, "--timesteps", "2,6", "--dynamics", "paper,improved,if"]
    assert _main([*argv, "--sweep-eta0", "0.1:0.3:3", "--sweep-gamma", "0.9,0.97"]) == 0
    out = capsys.readouterr().out
    assert "3 eta0 x 2 gamma values" in out and "if: n/a" in out
    sweep = json.loads((workdir / "sweep.json").read_text())
    assert not (workdir / "results.json").exists()  # a sweep writes sweep.json instead
    grid = sweep["sweep"]
    assert grid["eta0"] == [0.1, 0.2, 0.3] and grid["gamma"] == [0.9, 0.97]
    assert grid["dynamics"]["if"]["supported"] is False and "no eta0 or gamma to sweep" in grid["dynamics"]["if"]["reason"]
    for name in ("paper", "improved"):
        accuracy = np.asarray(grid["dynamics"][name]["accuracy"])
        assert accuracy.shape == (3, 2, 2)
        best = grid["dynamics"][name]["best"]
        for k, t in enumerate((2, 6)):
            assert best[str(t)]["accuracy"] == accuracy[:, :, k].max()
            assert (workdir / f"sweep_{name}_T{t}.png").read_bytes()[:4] == b"\x89PNG"
    assert not [f for f in os.listdir(workdir) if f.startswith(".")]  # no temporary files left

    # two grid points, each evaluated as a separate ordinary run with that schedule
    for (i, j), (eta0, gamma) in {(2, 0): ("0.3", "0.9"), (0, 1): ("0.1", "0.97")}.items():
        assert _main([*argv, "--dynamics", "paper,improved", "--eta0", eta0, "--gamma", gamma]) == 0
        results = json.loads((workdir / "results.json").read_text())
        for name in ("paper", "improved"):
            separate = [results["dynamics"][name]["accuracy"][t] for t in ("2", "6")]
            np.testing.assert_allclose(np.asarray(grid["dynamics"][name]["accuracy"])[i, j], separate,
                                       atol=0, rtol=0, err_msg=f"{name} eta0={eta0} gamma={gamma}")
    capsys.readouterr()


def test_diagnose_writes_the_layer_errors(workdir, capsys):
    from signgd_jax import convert, diagnose
    from signgd_jax.commands.evaluate import core

    out_dir = workdir.parent / "diagnosed"
    import shutil

    shutil.copytree(workdir, out_dir, ignore=shutil.ignore_patterns("*.json.tmp", "sweep*", "results.json", "*.png"))
    argv = ["--workdir", str(out_dir), *FAST, "--timesteps", "1,4,16", "--dynamics", "paper,improved", "--diagnose"]
    assert _main(argv) == 0
    capsys.readouterr()
    results = json.loads((out_dir / "results.json").read_text())
    assert (out_dir / "layer_errors.png").read_bytes()[:4] == b"\x89PNG"
    # the same numbers from the library directly, on the same SNN and the first test images
    model, variables, config = core.load_workdir(str(out_dir))
    train_ds, test_ds = core.load_splits("mnist5k", config["data_dir"])
    calib = core.calibration_batches(train_ds, 20, 2)
    images, _ = test_ds.get(np.arange(40))
    for name in ("paper", "improved"):
        got = results["layer_errors"][name]
        assert got["images"] == 40 and got["timesteps"] == [1, 4, 16]
        expect = diagnose.layer_errors(convert(model, variables, calib, dynamics=name), images, (1, 4, 16))
        assert got["sites"] == list(expect.normalised)
        for site in got["sites"]:
            np.testing.assert_allclose(got["absolute"][site], expect.absolute[site], rtol=1e-6, atol=1e-7)
        assert got["normalised"]["logits"][2] < got["normalised"]["logits"][0]  # the estimate converges


@pytest.mark.parametrize("extra,expected", [
    (["--sweep-eta0", "0.1:0.3"], "--sweep-eta0 must be start:stop:count"),
    (["--sweep-gamma", "0.9:0.99:0"], "--sweep-gamma must be start:stop:count"),
    (["--sweep-gamma", "0.9:1.2:3"], "0 < gamma <= 1"),
    (["--sweep-eta0", "a,b"], "--sweep-eta0 must be"),
])
def test_bad_sweep_arguments(workdir, extra, expected, capsys):
    before = sorted(os.listdir(workdir))
    assert _main(["--workdir", str(workdir), *FAST, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert sorted(os.listdir(workdir)) == before


def test_diagnose_and_sweep_do_not_go_together(workdir, capsys):
    with pytest.raises(SystemExit) as e:
        _main(["--workdir", str(workdir), "--sweep-eta0", "0.1,0.2", "--diagnose"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--diagnose goes with an ordinary evaluation" in err and err.count("\n") == 1


def test_schedule_auto_evaluates_each_budget_with_the_schedule_tuned_on_calibration_images(workdir, capsys):
    import shutil

    import signgd_jax as sg
    from signgd_jax.commands.evaluate import core

    out_dir = workdir.parent / "auto"
    shutil.copytree(workdir, out_dir, ignore=shutil.ignore_patterns("*.json.tmp", "sweep*", "results.json", "*.png"))
    argv = ["--workdir", str(out_dir), *FAST, "--timesteps", "3,8", "--dynamics", "improved,if", "--schedule", "auto"]
    assert _main(argv) == 0
    out = capsys.readouterr().out
    assert "improved: schedule per T (eta0, gamma): T=3" in out
    results = json.loads((out_dir / "results.json").read_text())
    assert results["settings"]["schedule"] == "auto"
    assert "schedule_per_t" not in results["dynamics"]["if"]  # fixed step sizes, evaluated as usual
    chosen = results["dynamics"]["improved"]["schedule_per_t"]
    # the same choice from the library on the same calibration images, and the same accuracy per T
    model, variables, config = core.load_workdir(str(out_dir))
    train_ds, test_ds = core.load_splits("mnist5k", config["data_dir"])
    calib = core.calibration_batches(train_ds, 20, 2)
    snn = sg.convert(model, variables, calib, dynamics="improved")
    choice = sg.tune_schedule(snn, calib, (3, 8))
    images, labels = test_ds.get(np.arange(40))
    logits = np.asarray(sg.simulate_tuned(snn, choice, images))
    for k, t in enumerate((3, 8)):
        assert (chosen[str(t)]["eta0"], chosen[str(t)]["gamma"]) == choice.point(t)
        assert results["dynamics"]["improved"]["correct"][str(t)] == int(np.sum(logits[k].argmax(-1) == labels))
    with pytest.raises(SystemExit) as e:
        _main([*argv, "--sweep-eta0", "0.1,0.2"])
    assert e.value.code == 2 and "--schedule auto chooses the step sizes itself" in capsys.readouterr().err
