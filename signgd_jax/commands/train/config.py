"""Training configuration, its validation, and model construction by name."""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any, Optional

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
CONFIG_FORMAT = 1

# Fields that may change between an interrupted run and its resumption without changing the
# result; every other field of config.json must match for a resume.
_RESUME_FREE = frozenset({"data_dir", "checkpoint_every", "keep_checkpoints",
                          "eval_batch_size", "progress"})
# Settings added after config.json's format 1 was fixed: a workdir without them used these.
_LATER_DEFAULTS = {"range_penalty": 0.0, "range_bound": 2.5}


class TrainError(Exception):
    """Base class of the errors raised by :mod:`signgd_jax.commands.train`."""


class ConfigError(TrainError, ValueError):
    """Bad training input: unknown model or dataset, bad hyperparameter, mismatched workdir."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (see ``signgd-train --help``).

    ``model`` is a name known to ``signgd_jax.models.create`` or ``"package.module:factory"``,
    a callable returning a flax module when called as ``factory(num_classes=N)``.
    ``augment=None`` means the dataset's default (random crop + flip for CIFAR only).
    """

    model: str
    workdir: str
    dataset: str = "mnist5k"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    optimizer: str = "sgd"
    seed: int = 0
    augment: Optional[bool] = None
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    data_dir: Optional[str] = None
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    eval_batch_size: int = 500
    progress: bool = True
    range_penalty: float = 0.0
    range_bound: float = 2.5

    def validate(self) -> None:
        """Raise :class:`ConfigError` (one-line message) on an impossible setting."""
        from signgd_jax import data

        if self.dataset not in data.SUPPORTED:
            raise ConfigError(f"unknown dataset {self.dataset!r}; supported: "
                              f"{', '.join(data.SUPPORTED)}")
        if not self.model or not isinstance(self.model, str):
            raise ConfigError("a model name is required")
        positive = dict(epochs=self.epochs, batch_size=self.batch_size,
                        checkpoint_every=self.checkpoint_every,
                        keep_checkpoints=self.keep_checkpoints,
                        eval_batch_size=self.eval_batch_size)
        for key in ("limit_train", "limit_test"):
            if getattr(self, key) is not None:
                positive[key] = getattr(self, key)
        for key, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{key.replace('_', '-')} must be a positive integer, "
                                  f"got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.range_penalty >= 0:
            raise ConfigError(f"range-penalty must be >= 0, got {self.range_penalty!r}")
        if not self.range_bound > 0:
            raise ConfigError(f"range-bound must be positive, got {self.range_bound!r}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight-decay must be >= 0, got {self.weight_decay!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not self.workdir:
            raise ConfigError("a workdir is required")

    def resolved_augment(self) -> bool:
        return self.dataset in ("cifar10", "cifar100") if self.augment is None else self.augment


def build_model(name: str, num_classes: int):
    """A flax module for ``name``: ``signgd_jax.models.create`` or ``module:factory``."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"cannot import model factory {name!r}: {e}") from None
        return factory(num_classes=num_classes)
    try:
        from signgd_jax import models
        create = models.create
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model {name!r}: signgd_jax.models.create is not available ({e})") \
            from None
    available = getattr(models, "available", None)
    if available is not None and name not in available():
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(available())}, "
                          "or package.module:factory")
    try:
        return create(name, num_classes=num_classes)
    except (LookupError, ValueError) as e:
        msg = " ".join(str(e).split())
        raise ConfigError(msg if name in msg else f"model {name!r}: {msg}") from None


def config_record(cfg: TrainConfig, **derived: Any) -> dict:
    """The JSON-able content of ``config.json``: the settings plus derived facts."""
    record = {"format": CONFIG_FORMAT, **dataclasses.asdict(cfg)}
    record["augment"] = cfg.resolved_augment()
    if cfg.data_dir:  # absolute, so tools run from elsewhere find the data
        record["data_dir"] = os.path.abspath(os.path.expanduser(cfg.data_dir))
    record.pop("workdir")
    record.update(derived)
    return record


def check_resumable(old: dict, new: dict) -> None:
    """Raise :class:`ConfigError` when a workdir's config.json differs in a result-changing way."""
    new = json.loads(json.dumps(new))
    old = {**old, **{k: v for k, v in _LATER_DEFAULTS.items() if old.get(k) is None}}
    if not old.get("range_penalty") and not new.get("range_penalty"):  # the bound acts only with a penalty
        old, new = ({k: v for k, v in d.items() if k != "range_bound"} for d in (old, new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if k not in _RESUME_FREE and old.get(k) != new.get(k)]
    if diffs:
        raise ConfigError("workdir holds a run with different settings (" + "; ".join(diffs)
                          + "); use a new --workdir")
