"""Evaluation progress kept on disk, so that an interrupted ``signgd-convert`` resumes.

``DIR/convert_progress/`` holds ``settings.json`` (everything that decides the numbers: the
checkpoint, the test images, the time-steps, the dynamics' settings, the batch size and the
calibration) and one tally per evaluation (``ann.npz``, ``paper.npz``, ...): how many batches
are done and their running sums (correct answers per time-step, spike counts per site).
Batches come in a fixed order and the stochastic codec's key depends on the batch index only,
so a rerun with the same settings continues after the last saved batch and ends with the same
numbers as a run that was never interrupted. With other settings the old progress is discarded.
:func:`~signgd_jax.commands.evaluate.report.write_results` removes the folder once
``results.json`` holds everything.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable

import numpy as np

from signgd_jax.commands.common import atomic_write, writing

PROGRESS_DIR = "convert_progress"
SETTINGS_FILE = "settings.json"


class ProgressStore:
    """The tallies of one workdir's evaluation; saved at most every ``save_every_s`` seconds
    (always when ``force``, e.g. at the end of an evaluation or on Ctrl-C)."""

    def __init__(self, workdir: str, settings: dict, save_every_s: float = 30.0,
                 log: Callable[[str], None] = print):
        self.dir = os.path.join(workdir, PROGRESS_DIR)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from JSON
        self.save_every_s = save_every_s
        self._saved_at: dict[str, float] = {}
        settings_path = os.path.join(self.dir, SETTINGS_FILE)
        if os.path.isdir(self.dir):
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
        if not os.path.exists(self._path(name)):
            return 0, {}
        with np.load(self._path(name)) as saved:
            return int(saved["batches"]), {k: saved[k] for k in saved.files if k != "batches"}

    def save(self, name: str, batches: int, sums: dict[str, np.ndarray], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._saved_at.get(name, now) < self.save_every_s:
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
