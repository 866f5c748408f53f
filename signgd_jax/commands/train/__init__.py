"""Train classifiers for ANN-to-SNN conversion: ``signgd-train`` (``python -m train`` from the
repository root) or :func:`run`.

Library API::

    from signgd_jax.commands.train import TrainConfig, run
    from signgd_jax import workdir
    metrics = run(TrainConfig(model="resnet_mini", dataset="cifar10", workdir="runs/r"))
    model, variables, config = workdir.load("runs/r")

A workdir holds ``config.json`` (model, dataset, num_classes, image_shape, hyperparameters:
enough to rebuild the model), ``metrics.jsonl`` (one JSON line per finished epoch) and
``checkpoints/<global step>/`` (orbax); :mod:`signgd_jax.workdir` reads it back (``load_trained``
here is its ``load``). Rerunning an interrupted run with the same settings resumes it from its
last checkpoint.

A checkpoint that cannot be restored raises :class:`RestoreError` (:class:`CheckpointNotFound`,
:class:`CorruptCheckpoint`, :class:`RestoreMismatch`), a :class:`TrainError` and a
:class:`CheckpointError`: ``CheckpointError`` and ``CheckpointMismatch`` are
:mod:`signgd_jax.models`' own, the one family with the errors of importing published weights.
The errors and :func:`build_model` are :mod:`signgd_jax.workdir`'s, re-exported here.
"""
from signgd_jax.commands.train.checkpoint import (CheckpointError, CheckpointMismatch,
                                                  CheckpointNotFound, CorruptCheckpoint,
                                                  RestoreError, RestoreMismatch, load_trained)
from signgd_jax.commands.train.config import ConfigError, TrainConfig, TrainError, build_model
from signgd_jax.commands.train.loop import StepCallback, run
from signgd_jax.commands.train.state import TrainState, make_optimizer, make_train_step

__all__ = ["TrainConfig", "run", "load_trained", "build_model", "make_optimizer",
           "make_train_step", "TrainState", "StepCallback", "TrainError", "ConfigError",
           "RestoreError", "CheckpointNotFound", "CorruptCheckpoint", "RestoreMismatch",
           "CheckpointError", "CheckpointMismatch"]
