"""Train classifiers for ANN-to-SNN conversion: ``python -m train`` or :func:`run`.

Library API::

    from train import TrainConfig, run, load_trained
    metrics = run(TrainConfig(model="resnet_mini", dataset="cifar10", workdir="runs/r"))
    model, variables, config = load_trained("runs/r")

A workdir holds ``config.json`` (model, dataset, num_classes, image_shape, hyperparameters:
enough to rebuild the model), ``metrics.jsonl`` (one JSON line per finished epoch) and
``checkpoints/<global step>/`` (orbax; see :mod:`train.checkpoint`). Rerunning an interrupted
run with the same settings resumes it from its last checkpoint.
"""
from train.checkpoint import (CheckpointError, CheckpointMismatch, CheckpointNotFound,
                              CorruptCheckpoint, load_trained)
from train.config import ConfigError, TrainConfig, TrainError, build_model
from train.loop import make_optimizer, run

__all__ = ["TrainConfig", "run", "load_trained", "build_model", "make_optimizer",
           "TrainError", "ConfigError", "CheckpointError", "CheckpointNotFound",
           "CorruptCheckpoint", "CheckpointMismatch"]
