"""Evaluation progress kept on disk, so that an interrupted ``signgd-convert`` resumes.

``DIR/convert_progress/`` holds ``settings.json`` (everything that decides the numbers: the
checkpoint, the test images, the time-steps, the dynamics' settings, the batch size and the
calibration) and one tally per evaluation (``ann.npz``, ``paper.npz``, ...): how many batches
are done and their running sums (correct answers per time-step, spike counts per site).
Batches come in a fixed order and the stochastic codec's key depends on the batch index only,
so a rerun with the same settings continues after the last saved batch and ends with the same
numbers as a run that was never interrupted. With other settings the old progress is discarded.

In a multi-process run (:mod:`~signgd_jax.commands.evaluate.distributed`) process 0 alone reads,
discards and writes these files; it sends what it loaded to the other processes, whose tallies
are the same global sums as its own, so a resumed multi-process run continues exactly like a
single-process one (and a run may resume with another number of processes: the batches and
their order depend on the evaluation batch size only, which the settings hold). The other processes need no access to the folder.
:func:`~signgd_jax.commands.evaluate.report.write_results` removes the folder once
``results.json`` holds everything.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import time
from typing import Callable, Optional

import numpy as np

from signgd_jax.commands.common import atomic_write, writing
from signgd_jax.commands.evaluate import distributed

PROGRESS_DIR = "convert_progress"
SETTINGS_FILE = "settings.json"


class ProgressStore:
    """The tallies of one workdir's evaluation; saved at most every ``save_every_s`` seconds
    (always when ``force``, e.g. at the end of an evaluation or on Ctrl-C). ``processes``
    (default: JAX's runtime) decides who touches the files: process 0 only."""

    def __init__(self, workdir: str, settings: dict, save_every_s: float = 30.0,
                 log: Callable[[str], None] = print, processes: Optional[distributed.Processes] = None):
        self.dir = os.path.join(workdir, PROGRESS_DIR)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from JSON
        self.save_every_s = save_every_s
        self.processes = distributed.current() if processes is None else processes
        self._saved_at: dict[str, float] = {}
        settings_path = os.path.join(self.dir, SETTINGS_FILE)
        if self.processes.is_writer and os.path.isdir(self.dir):
            try:
                with open(settings_path) as f:
                    same = json.load(f) == self.settings
            except (OSError, ValueError):
                same = False
            if not same:
                log(f"discarding the progress in {self.dir}: it was made with other settings")
                shutil.rmtree(self.dir)

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.npz")

    def load(self, name: str) -> tuple[int, dict[str, np.ndarray]]:
        """``(batches done, running sums)`` of evaluation ``name``; ``(0, {})`` if none saved."""
        self._saved_at[name] = time.monotonic()
        saved = None
        if self.processes.is_writer and os.path.exists(self._path(name)):
            with open(self._path(name), "rb") as f:
                saved = f.read()
        if self.processes.multi:  # process 0's bytes (b"" when it has none) on every process
            saved = distributed.broadcast_bytes(saved or b"", self.processes) or None
        if not saved:
            return 0, {}
        with np.load(io.BytesIO(saved)) as tallies:
            return int(tallies["batches"]), {k: tallies[k] for k in tallies.files if k != "batches"}

    def save(self, name: str, batches: int, sums: dict[str, np.ndarray], force: bool = False) -> None:
        now = time.monotonic()
        if not self.processes.is_writer or (not force and now - self._saved_at.get(name, now) < self.save_every_s):
            return
        with writing(f"the evaluation progress into {self.dir}"):
            os.makedirs(self.dir, exist_ok=True)
            settings_path = os.path.join(self.dir, SETTINGS_FILE)
            if not os.path.exists(settings_path):
                atomic_write(settings_path, lambda f: f.write(json.dumps(self.settings, indent=1)))
            atomic_write(self._path(name), lambda f: np.savez(f, batches=np.asarray(batches), **sums),
                         binary=True)
        self._saved_at[name] = now


def clear_progress(workdir: str) -> None:
    shutil.rmtree(os.path.join(workdir, PROGRESS_DIR), ignore_errors=True)
