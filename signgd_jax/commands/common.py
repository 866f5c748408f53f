"""What both commands share: one-line errors, an argument parser that exits with status 2,
atomic writes, the per-workdir lock, progress bars, and the process
entry point.

Every failure a user can cause ends as one line on stderr and exit status 2; files are written
to a temporary name in the same folder and renamed over the target only when complete, so an
interrupted or failed write (Ctrl-C, SIGKILL, a full or read-only disk) never leaves a partial
file; one process at a time works in a workdir.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import tempfile
from typing import Any, Callable, Iterator, Sequence

USAGE_ERROR = 2  # exit status of every input, data or output-folder error


def dataset_names() -> str:
    """The names ``--dataset`` takes, for both commands' ``--help``: ``"mnist5k (embedded), ..."``."""
    from signgd_jax.data import SUPPORTED

    names = [f"{n} (embedded)" if n == "mnist5k" else n for n in SUPPORTED]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def one_line(text: Any) -> str:
    """``text`` (or an exception) with all whitespace runs, newlines included, made one space."""
    return " ".join(str(text).split())


def fail(error: Any, status: int = USAGE_ERROR) -> int:
    """Print ``error: <one line>`` on stderr and return ``status`` (for ``main`` to return)."""
    print(f"error: {one_line(error)}", file=sys.stderr)
    return status


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {one_line(message)} (see --help)\n")


# ----------------------------------------------------------------------------- writing


def _file_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str]) -> Iterator[list]:
    """Yields temporary paths (in the targets' folders) for ``paths``; when the block ends
    without error they are flushed to disk and renamed over their targets; on any error
    (or Ctrl-C) all are deleted and the targets stay untouched."""
    tmps = []
    try:
        for path in paths:
            folder, base = os.path.split(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".tmp")
            os.close(fd)
            tmps.append(tmp)
            os.chmod(tmp, _file_mode())  # mkstemp makes 0600; give the usual file mode
        yield list(tmps)
        for tmp in tmps:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def atomic_write(path: str, write: Callable, binary: bool = False) -> None:
    """``write(file)`` into ``path`` atomically (see :func:`atomic_outputs`)."""
    with atomic_outputs([path]) as (tmp,):
        with open(tmp, "wb" if binary else "w") as f:
            write(f)


def write_text(path: str, text: str) -> None:
    """Plain (non-atomic) text write, e.g. into a path :func:`atomic_outputs` yielded."""
    with open(path, "w") as f:
        f.write(text)


def json_text(obj: Any, sort_keys: bool = False) -> str:
    return json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n"


def write_json(path: str, obj: Any, sort_keys: bool = False) -> None:
    """Plain JSON write (indent 2), e.g. into a path :func:`atomic_outputs` yielded."""
    write_text(path, json_text(obj, sort_keys))


def write_json_atomic(path: str, obj: Any, sort_keys: bool = False) -> None:
    atomic_write(path, lambda f: f.write(json_text(obj, sort_keys)))


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


class OutputNotWritable(RuntimeError):
    """An output cannot be written (read-only folder, disk full, no permission)."""


@contextlib.contextmanager
def writing(what: str, error_type: type[Exception] = OutputNotWritable):
    """Turn an ``OSError`` raised in the block (read-only folder, disk full, no permission)
    into ``error_type("cannot write WHAT: <reason>")``."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or one_line(e)
        raise error_type(f"cannot write {what}: {reason}"
                         + (f" ({e.filename})" if getattr(e, "filename", None) else "")) from None


def check_writable(folder: str, error_type: type[Exception] = OutputNotWritable) -> None:
    """Raise ``error_type`` at once when no file can be created in ``folder`` (so a long
    computation does not end in a write error)."""
    with writing(f"into {folder}", error_type):
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write_probe.")
        os.close(fd)
        os.remove(probe)


# ----------------------------------------------------------------------------- the workdir lock


@contextlib.contextmanager
def workdir_lock(workdir: str, error_type: type[Exception]):
    """Hold an exclusive lock on the folder ``workdir`` while the block runs.

    The lock is ``flock`` on the folder itself: no file is written, and the operating system
    releases it when the process ends, however it ends. A second ``signgd-train`` or
    ``signgd-convert`` on the same workdir raises ``error_type`` at once.
    """
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error_type(f"workdir {workdir} is in use by another signgd-train or signgd-convert "
                             "process; wait for it to finish or use another --workdir") from None
        yield
    finally:
        os.close(fd)  # releases the lock


# ----------------------------------------------------------------------------- progress bars


@contextlib.contextmanager
def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar on stderr, cleared when the block ends, that never looks stalled: it redraws
    on any update at most twice a second (no adaptive skipping of updates, which left a short
    loop's bar at its last redraw, e.g. 21/31 = 68%), and draws its final count (``total/total``,
    100%, after a complete loop) before it is cleared, also in a log file."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, disable=not enabled,
               file=sys.stderr, dynamic_ncols=True, mininterval=0.5, miniters=1)
    try:
        yield bar
    finally:
        bar.refresh()
        bar.close()


# ----------------------------------------------------------------------------- process entry


def _drop_closed_loop_reports(default_hook):
    """After orbax failed on damaged files, its orphaned tensorstore callbacks report "Event
    loop is closed" from other threads; drop those so stderr keeps to the one error line."""

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
            return
        default_hook(unraisable)

    return hook


def exit_with(main: Callable[[], int]) -> None:
    """Run ``main()`` as the process (console scripts and ``python -m``) and exit with its
    status; after a failure leave without the interpreter's shutdown, where orbax's orphaned
    threads may print more."""
    sys.unraisablehook = _drop_closed_loop_reports(sys.unraisablehook)
    status = main()
    if status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
