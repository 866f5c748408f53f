"""A training workdir, read back: the trained model, the data it was trained on, calibration batches.

``signgd-train`` (:mod:`signgd_jax.commands.train`) writes a workdir; this module reads it, for
the commands, the scripts and your own code::

    from signgd_jax import workdir

    model, variables, config = workdir.load("runs/r")             # the latest checkpoint
    calibration_ds, test_ds = workdir.splits(*workdir.trained_on(config))
    calibration = workdir.calibration_batches(calibration_ds, 250, 12)

A workdir holds ``config.json`` (model, dataset, num_classes, image_shape and the training
settings: enough to rebuild the model), ``metrics.jsonl`` (one JSON line per finished epoch) and
``checkpoints/<global step>/`` (orbax), each step with the items

* ``variables`` -- the flax variables: ``params`` and, for models with BatchNorm, ``batch_stats``;
* ``train`` -- optimizer state, step counter and the running sums of the current epoch;
* ``meta`` (JSON) -- epoch, step within the epoch, epochs done and the per-epoch history.

The errors of training workdirs are one family: :class:`TrainError` (with :class:`ConfigError`
for bad training input, e.g. an unknown model in ``config.json``) and :class:`RestoreError`, a
checkpoint that cannot be restored (:class:`CheckpointNotFound`, :class:`CorruptCheckpoint`,
:class:`RestoreMismatch`), which is also a :class:`signgd_jax.models.CheckpointError`, the
family of the errors of importing published weights.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from signgd_jax import data
from signgd_jax.models.checkpoints import CheckpointError, CheckpointMismatch

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
ACTIVATIONS = ("relu", "qcfs")
QCFS_LEVELS = 8  # the levels of a QCFS model whose config leaves them unset (the QCFS code's default L)


class TrainError(Exception):
    """Base class of the errors of training runs and their workdirs."""


class ConfigError(TrainError, ValueError):
    """Bad training input: unknown model or dataset, bad hyperparameter, mismatched workdir."""


class RestoreError(TrainError, CheckpointError):
    """A training workdir's checkpoint cannot be restored: a :class:`TrainError` and a
    :class:`signgd_jax.models.CheckpointError`, the one family of checkpoint errors (whose other
    members are the errors of importing published weights)."""


class CheckpointNotFound(RestoreError, FileNotFoundError):
    """No workdir, no config.json, or no checkpoint in it."""


class CorruptCheckpoint(RestoreError):
    """A checkpoint (or config.json) exists but cannot be read."""


class RestoreMismatch(RestoreError, CheckpointMismatch):
    """The checkpoint's parameter tree or shapes differ from the model in config.json."""


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


# ----------------------------------------------------------------------------- the model


def check_activation(model: str, activation: str, qcfs_levels) -> None:
    """ConfigError (one line) unless ``activation`` (and ``qcfs_levels``) fit ``model``."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; supported: {', '.join(ACTIVATIONS)}")
    if activation != "qcfs":
        return
    if isinstance(qcfs_levels, bool) or not isinstance(qcfs_levels, int) or qcfs_levels <= 0:
        raise ConfigError(f"qcfs-levels must be a positive integer, got {qcfs_levels!r}")
    from signgd_jax import models

    if model not in models.QCFS_MODELS:
        raise ConfigError(f"--activation qcfs replaces the ReLUs of a zoo ReLU model "
                          f"({', '.join(models.QCFS_MODELS)}); {model!r} is not one")


def build_model(name: str, num_classes: int, activation: str = "relu", qcfs_levels: Optional[int] = None):
    """A flax module for ``name``: ``signgd_jax.models.create`` or ``module:factory`` (a callable
    returning a flax module when called as ``factory(num_classes=N)``); ``activation='qcfs'``
    builds a zoo ReLU model with QCFS activations of ``qcfs_levels`` steps (default
    :data:`QCFS_LEVELS`). ConfigError (one line) for an unknown name."""
    from signgd_jax import models

    if activation != "relu":
        qcfs_levels = QCFS_LEVELS if qcfs_levels is None and activation == "qcfs" else qcfs_levels
        check_activation(name, activation, qcfs_levels)
        return models.create(name, num_classes=num_classes, activation=activation, qcfs_levels=qcfs_levels)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"cannot import model factory {name!r}: {e}") from None
        return factory(num_classes=num_classes)
    if name not in models.available():
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(models.available())}, "
                          "or package.module:factory")
    try:
        return models.create(name, num_classes=num_classes)
    except (LookupError, ValueError) as e:
        msg = " ".join(str(e).split())
        raise ConfigError(msg if name in msg else f"model {name!r}: {msg}") from None


# ----------------------------------------------------------------------------- checkpoints


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


def abstract_like(tree):
    """ShapeDtypeStructs placed on the default device, as restore targets."""
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _shapes(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict))[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p): tuple(x.shape) for p, x in leaves}


def check_shapes(mgr: ocp.CheckpointManager, step: int, abstract) -> None:
    """Raise :class:`RestoreMismatch` if the stored variables differ from ``abstract``."""
    try:
        metadata = mgr.item_metadata(step)["variables"]
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds on damaged metadata
        raise CorruptCheckpoint(f"checkpoint {step} in {mgr.directory} has unreadable metadata: {_reason(e)}") from e
    stored, wanted = _shapes(getattr(metadata, "tree", metadata)), _shapes(abstract)
    problems = [f"{k} missing" for k in sorted(set(wanted) - set(stored))]
    problems += [f"unexpected {k}" for k in sorted(set(stored) - set(wanted))]
    problems += [f"{k} {stored[k]} vs model {wanted[k]}" for k in sorted(set(stored) & set(wanted))
                 if stored[k] != wanted[k]]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise RestoreMismatch(f"checkpoint {step} in {mgr.directory} does not match the model: "
                              + "; ".join(problems[:3]) + more)


def restore(mgr: ocp.CheckpointManager, step: int, *, variables=None, train=None, meta: bool = False) -> dict:
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
        raise CorruptCheckpoint(f"checkpoint {step} in {mgr.directory} cannot be restored: {_reason(e)}") from e
    return {k: restored[k] for k in items}


def _read_config(workdir: str) -> tuple[dict, tuple]:
    """``(config.json, (model name, num_classes, image_shape, activation, qcfs_levels))``."""
    if not os.path.isdir(workdir):
        raise CheckpointNotFound(f"workdir {workdir} does not exist")
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointNotFound(f"{path} not found (not a training workdir?)")
    try:
        with open(path) as f:
            config = json.load(f)
        levels = config.get("qcfs_levels")
        # a QCFS-trained zoo model (signgd-train --activation qcfs); older workdirs: ReLU
        return config, (config["model"], int(config["num_classes"]), tuple(int(d) for d in config["image_shape"]),
                        str(config.get("activation") or "relu"), None if levels is None else int(levels))
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"{path} is unreadable: {_reason(e)}") from e


def load(workdir: str, step: Optional[int] = None, *, model=None) -> tuple[Any, dict, dict]:
    """Rebuild the model of a training workdir and restore its latest (or ``step``) variables.

    Returns ``(model, variables, config)``: the flax module (from ``config.json``, its
    ``activation`` and ``qcfs_levels`` included, unless ``model`` is given),
    ``{"params": ..., ["batch_stats": ...]}`` on the default device, and the ``config.json``
    dict plus ``checkpoint_step`` and ``epochs_done``.

    Raises :class:`CheckpointNotFound` (no workdir / config.json / checkpoint),
    :class:`CorruptCheckpoint` (unreadable config.json or checkpoint) or :class:`RestoreMismatch`
    (stored parameter tree or shapes differ from the model), all of them :class:`RestoreError`;
    :class:`ConfigError` when ``config.json`` names a model that cannot be built.
    """
    workdir = os.fspath(workdir)
    config, (name, num_classes, image_shape, activation, qcfs_levels) = _read_config(workdir)
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
            model = build_model(name, num_classes, activation, qcfs_levels)
        target = abstract_like(jax.eval_shape(lambda: model.init(
            jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32), train=False)))
        check_shapes(mgr, step, target)
        got = restore(mgr, step, variables=target, meta=True)
    finally:
        mgr.close()
    info = dict(config, checkpoint_step=int(step), epochs_done=int(got["meta"].get("epochs_done", 0)))
    return model, got["variables"], info


# ----------------------------------------------------------------------------- data


def trained_on(config: dict, dataset: Optional[str] = None, data_dir: Optional[str] = None
               ) -> tuple[str, Optional[str]]:
    """``(dataset, data_dir)`` for a workdir's ``config``: ``dataset`` (default: the one it was
    trained on) and ``data_dir`` (default: where training found it, for that same dataset)."""
    dataset = dataset or config.get("dataset") or "mnist5k"
    if data_dir is None and dataset == config.get("dataset"):
        data_dir = config.get("data_dir")
    return dataset, data_dir


def splits(name: str, data_dir: Optional[str] = None, preprocessing=None) -> tuple[data.Dataset, data.Dataset]:
    """``(calibration, test)`` :class:`signgd_jax.data.Dataset` views of dataset ``name``: the
    calibration images are :func:`signgd_jax.data.calibration_split`'s (the training split;
    imagenet2012's for imagenet_v2). Raises :class:`signgd_jax.data.DatasetNotPrepared`."""
    calibration_name, calibration_split = data.calibration_split(name)
    return (data.load(calibration_name, calibration_split, data_dir, preprocessing=preprocessing),
            data.load(name, "test", data_dir, preprocessing=preprocessing))


def calibration_batches(train_ds, batch_size: int, count: int, seed: int = 0) -> list:
    """The first ``count`` image batches of a ``seed``-shuffled pass over ``train_ds`` (whole
    batches, unless the split is smaller than one); ValueError for an empty split."""
    drop = len(train_ds) >= batch_size
    out = []
    for images, _ in data.batches(train_ds, batch_size, shuffle=True, seed=seed, epoch=0, drop_remainder=drop,
                                  workers=data.default_workers(train_ds, count)):
        out.append(images)
        if len(out) == count:
            break
    if not out:
        raise ValueError("the training split is empty: no calibration data")
    return out
