"""The Colab notebooks: committed without outputs, installing the package from the one
repository URL, and executable top to bottom against the installed package.

As a Colab user gets it: the package is built into a wheel (offline, setuptools' PEP 517 backend,
without a warning of ours), installed with pip into a fresh virtual environment, and each notebook
runs on a Jupyter kernel of that environment, in a temporary folder outside the repository, with
no ``PYTHONPATH``: ``signgd_jax`` is imported from the new environment, never from the checkout
(the notebook's install cell finds it importable and skips the GitHub install). The environment
reuses this one's other packages (jax, flax, ...) through a ``.pth`` file written after the install,
so nothing is downloaded. The session's offline mnist5k is the data directory. Each notebook must
finish without an error, produce at least one figure, and stay within the time budget the
notebooks promise (about two to three minutes on a 2-core CPU).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import pytest

from signgd_jax.__about__ import REPOSITORY_URL

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PRETRAINED = "pretrained_imagenet.ipynb"  # needs a Hub cache and mock data: its own test below
EXPECTED = {"quickstart.ipynb", "neuron_dynamics.ipynb", PRETRAINED}
CELL_TIMEOUT_S = 300
BUDGET_S = 300  # per notebook, on the 2-core CPU the notebooks are written for
PRETRAINED_BUDGET_S = 600  # a ConvNeXt-S on the CPU: written for a GPU, run here with 4 photos


def test_expected_notebooks_exist():
    assert EXPECTED <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} have outputs or execution counts; strip them "
                       f"(jupyter nbconvert --clear-output --inplace notebooks/{path.name})")


def _install_cell(nb) -> str:
    return next(cell.source for cell in nb.cells if cell.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_uses_the_one_repository_url(path):
    """The first code cell pip-installs ``git+REPOSITORY_URL``, only when the package is missing."""
    source = _install_cell(nbformat.read(path, as_version=4))
    assert re.findall(r'^REPOSITORY_URL = "([^"]+)"', source, re.M) == [REPOSITORY_URL]
    assert 'find_spec("signgd_jax") is None' in source
    assert '"pip", "install", "-q", f"git+{REPOSITORY_URL}"' in source
    assert "PLACEHOLDER" not in source


def test_pyproject_and_readme_badges_use_the_one_repository_url():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["urls"]["Repository"] == REPOSITORY_URL
    owner_name = REPOSITORY_URL.removeprefix("https://github.com/")
    badges = re.findall(r"colab\.research\.google\.com/github/([^)\s]+?)/blob/main/notebooks/([\w.]+)",
                        (REPO / "README.md").read_text())
    assert sorted(name for _, name in badges) == sorted(EXPECTED)
    assert {repo for repo, _ in badges} == {owner_name}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, site_packages)`` of a fresh virtual environment holding the package installed from
    a freshly built wheel; the other packages come from this environment (a ``.pth`` file)."""
    root = tmp_path_factory.mktemp("wheel_install")
    source = root / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO / "signgd_jax", source / "signgd_jax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    dist = root / "dist"
    dist.mkdir()
    build = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                            "print(b.build_wheel(sys.argv[1]))", str(dist)],
                           cwd=source, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    assert "Warning" not in build.stderr, build.stderr  # e.g. SetuptoolsDeprecationWarning
    wheel = dist / build.stdout.split()[-1]

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                              "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # After the install, so pip saw an empty environment; the path comes after the venv's own
    # site-packages, and the checkout's editable install (a .pth of its own) is not processed.
    (site / "reuse_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


def _outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    assert REPO not in cwd.resolve().parents
    return env, cwd


def test_installed_package_is_the_wheels(installed, tmp_path):
    python, site = installed
    env, cwd = _outside_the_checkout(tmp_path)
    probe = subprocess.run([str(python), "-c", "import signgd_jax, jax; print(signgd_jax.__file__)"],
                           cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).parent == site / "signgd_jax"
    script = subprocess.run([str(python.parent / "signgd-train"), "--help"], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and "(default: mnist5k)" in " ".join(script.stdout.split()), script.stderr


@pytest.fixture
def kernel_manager(tmp_path, installed):
    """A kernel manager whose only kernel is ipykernel on the fresh environment's interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "signgd-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(installed[0]), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "signgd-jax test kernel",
        "language": "python",
    }))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    km = KernelManager(kernel_name="signgd-test", kernel_spec_manager=specs)
    yield km
    if km.has_kernel:  # nbclient leaves a kernel it did not create running
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize("name", sorted(EXPECTED - {PRETRAINED}))
def test_notebook_executes(name, tmp_path, monkeypatch, mnist5k_dir, kernel_manager, installed):
    monkeypatch.setenv("SIGNGD_DATA_DIR", mnist5k_dir)
    _execute(nbformat.read(REPO / "notebooks" / name, as_version=4), name, tmp_path, monkeypatch, kernel_manager,
             installed)


# what the test changes in the pretrained notebook: its data are TFDS' mock data (random photos
# of random sizes, through the same array_record data source), its settings a few photos and T's
MOCK_DATA_CELL = """import tensorflow_datasets as tfds
_mock_data = tfds.testing.mock_data(num_examples=6)
_mock_data.__enter__()"""
SMALL_SETTINGS_CELL = """N_TEST, N_CALIBRATION, BATCH = 4, 4, 4
TIMESTEPS, SPIKE_LEVELS = (1, 2), (3,)
TUNING_ETA0, TUNING_DECAY = (0.15, 0.5), (0.35, 1.0)"""


def test_pretrained_notebook_executes(tmp_path, monkeypatch, kernel_manager, installed):
    """The pretrained-model notebook, top to bottom, as on Colab but offline: ``from_pretrained``
    finds timm's ConvNeXt-S (the zoo fixtures' stand-in weights) in a local Hub cache with the Hub
    switched off, ``prepare`` finds a ``tfds`` command that succeeds (TFDS' builders need the
    network), and the photos are TFDS' mock data."""
    from test_hub import put_in_cache, repo_files

    repo_id = "timm/convnext_small.fb_in1k"
    cache = tmp_path / "hub"
    put_in_cache(cache, repo_id, repo_files(repo_id))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tfds").write_text("#!/bin/sh\necho \"tfds $*\" >> \"$(dirname \"$0\")/calls\"\n")
    (bin_dir / "tfds").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    nb = nbformat.read(REPO / "notebooks" / PRETRAINED, as_version=4)
    assert f'REPO_ID = "{repo_id}"' in nb.cells[_settings(nb)].source
    nb.cells.insert(_settings(nb) + 1, nbformat.v4.new_code_cell(SMALL_SETTINGS_CELL))
    nb.cells.insert(_first_code(nb) + 1, nbformat.v4.new_code_cell(MOCK_DATA_CELL))
    _execute(nb, PRETRAINED, tmp_path, monkeypatch, kernel_manager, installed, budget_s=PRETRAINED_BUDGET_S)
    calls = (bin_dir / "calls").read_text().split("\n")
    assert calls[0].startswith("tfds build imagenette/320px-v2 --file_format array_record --data_dir "), calls
    printed = "".join(out.get("text", "") for cell in nb.cells for out in _outputs(cell))
    assert "classes scored: (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)" in printed, printed
    assert re.search(r"T=  2: SNN +\d+\.\d%", printed), printed


def _settings(nb) -> int:
    return next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and "REPO_ID = " in cell.source)


def _execute(nb, name, tmp_path, monkeypatch, kernel_manager, installed, budget_s=BUDGET_S):
    """Runs ``nb`` on the fresh environment's kernel in a folder outside the checkout; checks it ran
    without an error, without pip, from the wheel's package, with a figure, within the budget."""
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the package comes from the wheel only
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    _, workdir = _outside_the_checkout(tmp_path)
    nb.cells.append(nbformat.v4.new_code_cell("import signgd_jax\nprint(signgd_jax.__file__)"))

    client = nbclient.NotebookClient(nb, km=kernel_manager, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(workdir)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - start
    print(f"{name}: executed in {seconds:.1f}s")
    nbformat.write(nb, tmp_path / f"executed_{name}")  # for a look after a failure

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    errors = [out for out in outputs if out.get("output_type") == "error"]
    assert not errors, errors
    assert not [out for out in _outputs(nb.cells[_first_code(nb)])], "the install cell ran pip"
    imported_from = Path("".join(out.get("text", "") for out in nb.cells[-1].outputs).strip())
    assert imported_from.parent == installed[1] / "signgd_jax", imported_from
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert figures, f"{name} produced no figure"
    assert seconds < budget_s, f"{name} took {seconds:.0f}s, over its {budget_s}s budget"


def _first_code(nb) -> int:
    return next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")


def _outputs(cell) -> list:
    return cell.get("outputs", [])
