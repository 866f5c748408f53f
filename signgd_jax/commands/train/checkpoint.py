"""The writing side of a training workdir's orbax checkpoints: :func:`save`.

The layout, the manager, restoring and the errors belong to the reading side,
:mod:`signgd_jax.workdir` (re-exported here for the training loop): each checkpoint step (the
global training step) under ``WORKDIR/checkpoints/<step>/`` holds ``variables``, ``train`` and
``meta``. Orbax writes every step into a temporary folder and renames it when complete, so a
killed process leaves either a whole checkpoint or none.
"""
from __future__ import annotations

import orbax.checkpoint as ocp

from signgd_jax.models.checkpoints import CheckpointError, CheckpointMismatch
from signgd_jax.workdir import (CheckpointNotFound, CorruptCheckpoint, RestoreError, RestoreMismatch,
                                abstract_like, check_shapes, manager, restore)
from signgd_jax.workdir import load as _load


def save(mgr: ocp.CheckpointManager, step: int, variables, train_state, meta: dict) -> None:
    """Start writing checkpoint ``step`` (asynchronously; orbax finalises it atomically)."""
    mgr.save(step, force=True, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        train=ocp.args.StandardSave(train_state),
        meta=ocp.args.JsonSave(meta)))


def load_trained(workdir: str, model=None, step=None):
    """:func:`signgd_jax.workdir.load` under the training tools' older name and argument order."""
    return _load(workdir, step, model=model)


__all__ = ["RestoreError", "CheckpointNotFound", "CorruptCheckpoint", "RestoreMismatch", "CheckpointError",
           "CheckpointMismatch", "load_trained", "save", "manager", "restore", "check_shapes", "abstract_like"]
