"""Orbax checkpoints of a training workdir, and :func:`load_trained` for the tools that use them.

Each checkpoint step (the global training step) under ``WORKDIR/checkpoints/<step>/`` holds

* ``variables`` -- the flax variables: ``params`` and, for models with BatchNorm, ``batch_stats``;
* ``train`` -- optimizer state, step counter and the running train-loss / accuracy sums of the
  current epoch (so a mid-epoch resume reports the same epoch metrics);
* ``meta`` (JSON) -- epoch, step within the epoch, epochs done, the per-epoch metrics history
  and the seconds already spent in the current epoch.

Orbax writes every step into a temporary folder and renames it when complete, so a killed
process leaves either a whole checkpoint or none.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from signgd_jax.commands.common import one_line, read_json
from signgd_jax.commands.train.config import CHECKPOINT_DIR, CONFIG_FILE, TrainError, build_model
from signgd_jax.models.checkpoints import CheckpointError, CheckpointMismatch


class RestoreError(TrainError, CheckpointError):
    """A training workdir's checkpoint cannot be restored: a :class:`TrainError` of the training
    tools and a :class:`signgd_jax.models.CheckpointError`, the one family of checkpoint errors
    (whose other members are the errors of importing published weights)."""


class CheckpointNotFound(RestoreError, FileNotFoundError):
    """No workdir, no config.json, or no checkpoint in it."""


class CorruptCheckpoint(RestoreError):
    """A checkpoint (or config.json) exists but cannot be read."""


class RestoreMismatch(RestoreError, CheckpointMismatch):
    """The checkpoint's parameter tree or shapes differ from the model in config.json."""


def manager(workdir: str, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    """The workdir's checkpoint manager (``read_only``: only reads; creates, deletes nothing)."""
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        cleanup_tmp_directories=not read_only)
    handlers = {"variables": ocp.StandardCheckpointHandler(),
                "train": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(mgr: ocp.CheckpointManager, step: int, variables, train_state, meta: dict) -> None:
    """Start writing checkpoint ``step`` (asynchronously; orbax finalises it atomically)."""
    mgr.save(step, force=True, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        train=ocp.args.StandardSave(train_state),
        meta=ocp.args.JsonSave(meta)))


def abstract_like(tree):
    """ShapeDtypeStructs placed on the default device, as restore targets."""
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def abstract_variables(model, image_shape) -> Any:
    """The shapes of ``model.init`` variables for one image of ``image_shape`` (HWC)."""
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32), train=False))
    return abstract_like(shapes)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _shapes(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict))[0]
    return {_path_str(p): tuple(x.shape) for p, x in leaves}


def check_shapes(mgr: ocp.CheckpointManager, step: int, abstract) -> None:
    """Raise :class:`RestoreMismatch` if the stored variables differ from ``abstract``."""
    try:
        metadata = mgr.item_metadata(step)["variables"]
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds on damaged metadata
        raise CorruptCheckpoint(f"checkpoint {step} in {mgr.directory} has unreadable "
                                f"metadata: {_one_line(e)}") from e
    stored = _shapes(getattr(metadata, "tree", metadata))
    wanted = _shapes(abstract)
    problems = [f"{k} missing" for k in sorted(set(wanted) - set(stored))]
    problems += [f"unexpected {k}" for k in sorted(set(stored) - set(wanted))]
    problems += [f"{k} {stored[k]} vs model {wanted[k]}" for k in sorted(set(stored) & set(wanted))
                 if stored[k] != wanted[k]]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise RestoreMismatch(
            f"checkpoint {step} in {mgr.directory} does not match the model: "
            + "; ".join(problems[:3]) + more)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {one_line(e)}"[:300]


def restore(mgr: ocp.CheckpointManager, step: int, *, variables=None, train=None,
            meta: bool = False) -> dict:
    """Restore the requested items of checkpoint ``step`` (targets are abstract trees)."""
    items = {}
    if variables is not None:
        items["variables"] = ocp.args.StandardRestore(variables)
    if train is not None:
        items["train"] = ocp.args.StandardRestore(train)
    if meta:
        items["meta"] = ocp.args.JsonRestore()
    try:
        restored = mgr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds on damaged files
        raise CorruptCheckpoint(f"checkpoint {step} in {mgr.directory} cannot be restored: "
                                f"{_one_line(e)}") from e
    return {k: restored[k] for k in items}


def load_trained(workdir: str, model=None, step: Optional[int] = None):
    """Rebuild the model of a training workdir and restore its latest (or ``step``) variables.

    Returns ``(model, variables, config)``: the flax module (from ``config.json``, its
    ``activation`` and ``qcfs_levels`` included, unless ``model`` is given),
    ``{"params": ..., ["batch_stats": ...]}`` on the default device, and
    the ``config.json`` dict plus ``checkpoint_step`` and ``epochs_done``.

    Raises :class:`CheckpointNotFound` (no workdir / config.json / checkpoint),
    :class:`CorruptCheckpoint` (unreadable config.json or checkpoint) or
    :class:`RestoreMismatch` (stored parameter tree or shapes differ from the model), all of
    them :class:`RestoreError`.
    """
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        raise CheckpointNotFound(f"workdir {workdir} does not exist")
    cfg_path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise CheckpointNotFound(f"{cfg_path} not found (not a training workdir?)")
    try:
        config = read_json(cfg_path)
        model_name, num_classes = config["model"], int(config["num_classes"])
        image_shape = tuple(int(d) for d in config["image_shape"])
        # a QCFS-trained zoo model (signgd-train --activation qcfs); older workdirs: ReLU
        activation = str(config.get("activation") or "relu")
        levels = config.get("qcfs_levels")
        qcfs_levels = None if levels is None else int(levels)
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"{cfg_path} is unreadable: {_one_line(e)}") from e
    if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
        raise CheckpointNotFound(f"no checkpoints in {workdir}")
    mgr = manager(workdir, read_only=True)
    try:
        steps = mgr.all_steps()
        if not steps:
            raise CheckpointNotFound(f"no checkpoints in {workdir}")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise CheckpointNotFound(f"no checkpoint {step} in {workdir} (have {sorted(steps)})")
        if model is None:
            model = build_model(model_name, num_classes, activation, qcfs_levels)
        target = abstract_variables(model, image_shape)
        check_shapes(mgr, step, target)
        got = restore(mgr, step, variables=target, meta=True)
    finally:
        mgr.close()
    info = dict(config, checkpoint_step=int(step),
                epochs_done=int(got["meta"].get("epochs_done", 0)))
    return model, got["variables"], info


__all__ = ["RestoreError", "CheckpointNotFound", "CorruptCheckpoint", "RestoreMismatch", "CheckpointError",
           "CheckpointMismatch", "load_trained"]
