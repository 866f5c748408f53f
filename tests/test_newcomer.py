"""What a new user meets in the first hours: the README's commands run as written after the quick
start, one Python version rule, the CI running the README's test command, skip reasons shown,
messages printed once, the notebook agreeing with the README, and the documented
``--model package.module:factory`` working as the README writes it."""
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end >= 0 else None]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def _test_command() -> str:
    """The README's test command: the quick start's block that runs pytest."""
    (command,) = [b.strip() for b in _blocks(_section("Quick start"), "bash") if "pytest" in b]
    return command


# ----------------------------------------------------------------------------- set-up


def test_one_python_version_rule():
    """Python 3.11 or newer, found as ``python3``: pyproject, the README, the quick start and CI."""
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"] == ">=3.11"
    assert "Python 3.11 or newer as `python3`" in _section("Quick start")
    assert _test_command().startswith("python3 -m venv .venv ")
    for path in ("scripts/quickstart.sh", ".ci/run"):
        script = (REPO / path).read_text()
        assert "sys.version_info < (3, 11)" in script, path  # says so, clearly, on an older python3
        assert "python3 -m venv .venv" in script, path
    for path in ("README.md", "scripts/quickstart.sh", ".ci/run"):
        text = (REPO / path).read_text()
        assert "python3.11" not in text and "python3.10" not in text, f"{path} hard-codes another interpreter"


def test_ci_runs_exactly_the_readme_test_command():
    lines = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()]
    assert _test_command() in lines


def test_pytest_shows_skip_reasons():
    addopts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert re.search(r"(^|\s)-r\w*s", addopts), addopts


def test_readme_commands_run_in_the_venv():
    """After the quick start the README says to activate the venv before any bare ``python`` or
    ``signgd-*`` command, and the command-line section starts by activating it."""
    activate = README.index("\nsource .venv/bin/activate\n")
    assert activate < README.index("\n## ", README.index("\n## Quick start\n") + 1)  # in the quick start
    for block in _blocks(README[:activate], "bash"):
        for line in block.splitlines():
            if re.match(r"\s*(python|signgd-)", line) and not line.lstrip().startswith("python3 -m venv"):
                pytest.fail(f"before the README says to activate the venv: {line!r}")
    command_line = _blocks(_section("Command line"), "bash")[0]
    assert command_line.splitlines()[0].startswith("source .venv/bin/activate")
    quickstart = (REPO / "scripts/quickstart.sh").read_text()
    assert "pip install -q -e '.[data]'" in quickstart  # mnist5k needs the data extra


# ----------------------------------------------------------------------------- documentation


def _notebook_text(name: str) -> str:
    nb = json.loads((REPO / "notebooks" / name).read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def test_notebook_agrees_with_the_readme_that_plain_flax_converts():
    assert "plain `flax.linen`, `flax.nnx` or `jax.nn` converts without importing" in README
    text = " ".join(_notebook_text("quickstart.ipynb").split())
    assert "converts once it uses" not in text
    assert "Your own model does not need them: a model written with plain Flax or JAX" in text


def test_readme_and_run_md_say_what_reproduces():
    """The quick start's numbers: RUN.md says what reproduces and what does not, with another
    machine's table whose differences from results.json are the ones it and the README state."""
    quick = " ".join(_section("Quick start").split())
    run_md = (REPO / "results/quickstart/RUN.md").read_text()
    assert "## What reproduces" in run_md and "results/quickstart/RUN.md" in quick
    assert "**The same machine**" in run_md and "**Another machine**" in run_md
    committed = json.loads((REPO / "results/quickstart/results.json").read_text())
    ts = committed["timesteps"]
    table = _blocks(run_md[run_md.index("## What reproduces"):], r"\s*")[0]
    rows = {}
    for line in table.splitlines():
        cells = line.split()
        if cells and cells[0] in ("paper", "improved"):
            rows.setdefault(cells[0], []).append([float(c) for c in cells[1:]])
    largest = {}
    for name, (other, diff) in rows.items():
        ours = [100 * committed["dynamics"][name]["accuracy"][str(t)] for t in ts]
        assert [round(o - c, 2) for o, c in zip(other, ours)] == diff, name
        largest[name] = max(abs(d) for d in diff)
    stated = re.search(r"differed from the table above by up to ([\d.]+) points \(paper up to ([\d.]+), "
                       r"improved up to ([\d.]+);", quick)
    assert stated, quick
    assert [float(g) for g in stated.groups()] == [max(largest.values()), largest["paper"], largest["improved"]]
    assert "reproduces its own numbers exactly" in quick


# ----------------------------------------------------------------------------- --model package.module:factory

def test_own_model_example_runs_as_written(tmp_path, mnist5k_dir):
    """The README's ``mynets.py`` and its two commands (fewer images and epochs), from another folder."""
    section = _section("Command line")
    example = section[section.index("Your own model"):]
    (source,) = _blocks(example, "python")[:1]
    commands = [line for line in _blocks(example, "bash")[0].splitlines() if line.strip()]
    assert [c.split()[1] for c in commands] == ["signgd-train", "signgd-convert"]
    (tmp_path / "mynets.py").write_text(source)
    shorter = {"signgd-train": f" --epochs 1 --limit-train 256 --limit-test 64 --data-dir {mnist5k_dir} --no-progress",
               "signgd-convert": " --limit 32 --timesteps 1,4 --dynamics improved --calibration-batches 1 "
                                 "--no-progress"}
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", JAX_PLATFORMS="cpu")
    for command in commands:
        line = command.split("#")[0].strip()
        # the checkout under test ahead of the installed package
        line = line.replace("PYTHONPATH=.", f"PYTHONPATH=.{os.pathsep}{REPO}", 1) + shorter[line.split()[1]]
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, (line, proc.stdout[-2000:], proc.stderr[-2000:])
    results = json.loads((tmp_path / "runs/mine/results.json").read_text())
    assert results["model"] == "mynets:small" and results["num_test_images"] == 32


# ----------------------------------------------------------------------------- messages printed once

MODULE = "newcomer_nets"
MODEL_SOURCE = textwrap.dedent('''
    import flax.linen as nn


    class GeluMLP(nn.Module):
        num_classes: int = 10

        @nn.compact
        def __call__(self, x, train=False):
            x = nn.gelu(nn.Dense(16)(x[:, ::4, ::4].reshape(x.shape[0], -1)))
            return nn.Dense(self.num_classes)(x)


    def gelu_mlp(num_classes):
        return GeluMLP(num_classes)
''')


@pytest.fixture(scope="module")
def gelu_workdir(tmp_path_factory, mnist5k_dir):
    from signgd_jax.commands import train

    root = tmp_path_factory.mktemp("newcomer")
    (root / f"{MODULE}.py").write_text(MODEL_SOURCE)
    sys.path.insert(0, str(root))
    try:
        train.run(train.TrainConfig(model=f"{MODULE}:gelu_mlp", workdir=str(root / "gelu"), dataset="mnist5k",
                                    epochs=1, batch_size=64, limit_train=256, limit_test=64, data_dir=mnist5k_dir,
                                    progress=False), log=lambda msg: None)
        yield root / "gelu"
    finally:
        sys.path.remove(str(root))


@pytest.mark.parametrize("extra", [[], ["--sweep-eta0", "0.1,0.2"]], ids=["table", "sweep"])
def test_the_reason_for_na_is_printed_once(gelu_workdir, capsys, extra):
    """'if' cannot convert a GELU network: its reason appears once in everything the command prints."""
    from signgd_jax.commands.evaluate.cli import main

    status = main(["--workdir", str(gelu_workdir), "--limit", "32", "--timesteps", "1,4", "--batch-size", "32",
                   "--calibration-batches", "1", "--dynamics", "if,improved", "--no-progress", *extra])
    out, err = capsys.readouterr()
    assert status == 0, err
    if extra:
        reason = json.loads((gelu_workdir / "sweep.json").read_text())["sweep"]["dynamics"]["if"]["reason"]
    else:
        reason = json.loads((gelu_workdir / "results.json").read_text())["dynamics"]["if"]["reason"]
    assert reason and (out + err).count(reason) == 1, out + err
    assert len(re.findall(r"^(if: n/a|n/a: if:)", out + err, re.M)) == 1, out + err
