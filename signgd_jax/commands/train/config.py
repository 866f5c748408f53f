"""Training configuration, its validation and its ``config.json`` record (the model is built by
:func:`signgd_jax.workdir.build_model`, which reads the record back)."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

# the workdir's layout, the model factory and the errors are the reading side's (re-exported here)
from signgd_jax.workdir import (ACTIVATIONS, CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE,  # noqa: F401
                                QCFS_LEVELS, ConfigError, TrainError, build_model, check_activation)

CONFIG_FORMAT = 1

# Fields that may change between an interrupted run and its resumption without changing the
# result; every other field of config.json must match for a resume.
_RESUME_FREE = frozenset({"data_dir", "checkpoint_every", "keep_checkpoints",
                          "eval_batch_size", "progress"})
# Settings added after config.json's format 1 was fixed: a workdir without them used these.
_LATER_DEFAULTS = {"range_penalty": 0.0, "range_bound": 2.5, "activation": "relu"}


# Training recipes. The paper's (SGD with momentum 0.9, lr 0.1, weight decay 5e-4, cosine decay)
# is the default; a model the paper's recipe does not train well has its own, measured one
# (README, "Five architectures on mnist5k": 25 epochs on mnist5k). A recipe fills only the
# settings left unset (None): ``--optimizer``, ``--lr`` ... given explicitly always win, and a
# different optimizer than the recipe's brings its own lr and weight decay, not the recipe's.
OPTIMIZER_DEFAULTS = {"sgd": {"lr": 0.1, "weight_decay": 5e-4},
                      "adamw": {"lr": 0.003, "weight_decay": 0.05}}
PAPER_RECIPE = {"optimizer": "sgd", **OPTIMIZER_DEFAULTS["sgd"], "range_penalty": 0.0,
                "range_bound": 2.5}
# The LayerNorm/GELU models: AdamW, shifted digits (``augment``). The ResMLP has no
# normalisation: the range penalty keeps its GELU targets within paper-mode neurons' reach.
_LAYERNORM_GELU = {"optimizer": "adamw", **OPTIMIZER_DEFAULTS["adamw"], "augment": True}
MODEL_RECIPES = {
    "convnext_mini": _LAYERNORM_GELU,
    "mixer_mini": _LAYERNORM_GELU,
    "resmlp_mini": {**_LAYERNORM_GELU, "range_penalty": 0.1, "range_bound": 2.0},
}
RECIPE_FIELDS = ("optimizer", "lr", "weight_decay", "augment", "range_penalty", "range_bound")


def augment_by_default(dataset: str) -> bool:
    """The dataset's own default when neither the user nor a recipe sets ``augment``."""
    return dataset in ("cifar10", "cifar100")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (see ``signgd-train --help``); frozen: a changed
    config is a new one (``dataclasses.replace``).

    ``model`` is a name known to ``signgd_jax.models.create`` or ``"package.module:factory"``,
    a callable returning a flax module when called as ``factory(num_classes=N)``.
    The fields of :data:`RECIPE_FIELDS` left ``None`` come from the model's recipe
    (:data:`MODEL_RECIPES`), else the paper's (:data:`PAPER_RECIPE`; ``augment``: on for CIFAR
    only); :meth:`resolved` fills them in.
    """

    model: str
    workdir: str
    dataset: str = "mnist5k"
    epochs: int = 10
    batch_size: int = 128
    lr: Optional[float] = None
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: Optional[float] = None
    schedule: str = "cosine"
    optimizer: Optional[str] = None
    seed: int = 0
    augment: Optional[bool] = None
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    data_dir: Optional[str] = None
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    eval_batch_size: int = 500
    progress: bool = True
    range_penalty: Optional[float] = None
    range_bound: Optional[float] = None
    # 'relu' (the model as defined) or 'qcfs': a zoo ReLU model (models.QCFS_MODELS) trained
    # with QCFS activations of qcfs_levels steps (default QCFS_LEVELS; ignored with 'relu') and
    # average pooling
    activation: str = "relu"
    qcfs_levels: Optional[int] = None

    def resolved(self) -> "TrainConfig":
        """This config with every unset recipe field filled in (idempotent)."""
        recipe = MODEL_RECIPES.get(self.model, PAPER_RECIPE)
        optimizer = self.optimizer if self.optimizer is not None else recipe["optimizer"]
        if optimizer != recipe["optimizer"]:  # its own lr and weight decay, the model's rest
            recipe = {**recipe, **OPTIMIZER_DEFAULTS.get(optimizer, {})}
        filled = {**PAPER_RECIPE, "augment": augment_by_default(self.dataset), **recipe,
                  "optimizer": optimizer}
        changes = {k: filled[k] for k in RECIPE_FIELDS if getattr(self, k) is None}
        if self.activation == "qcfs" and self.qcfs_levels is None:
            changes["qcfs_levels"] = QCFS_LEVELS
        elif self.activation != "qcfs" and self.qcfs_levels is not None:
            changes["qcfs_levels"] = None  # levels act only with qcfs (the command line refuses them)
        return dataclasses.replace(self, **changes)

    def recipe_text(self) -> str:
        """One line saying which recipe a run uses and where it came from."""
        c = self.resolved()
        given = [f"--{k.replace('_', '-')}" for k in RECIPE_FIELDS if getattr(self, k) is not None]
        source = f"{self.model}'s recipe" if self.model in MODEL_RECIPES else "the paper's recipe"
        text = (f"training with {c.optimizer} lr {c.lr:g}"
                + (f" momentum {c.momentum:g}" if c.optimizer == "sgd" else "")
                + f" weight decay {c.weight_decay:g}, {c.schedule} schedule, "
                f"augmentation {'on' if c.augment else 'off'}"
                + (f", range penalty {c.range_penalty:g} (bound {c.range_bound:g})"
                   if c.range_penalty else "")
                + (f", QCFS activations with {c.qcfs_levels} levels" if c.activation == "qcfs" else ""))
        return text + f" ({source}" + (f"; {', '.join(given)} given)" if given else ")")

    def validate(self) -> None:
        """Raise :class:`ConfigError` (one-line message) on an impossible setting (of the
        :meth:`resolved` config)."""
        from signgd_jax import data

        cfg = self.resolved()

        if cfg.dataset not in data.SUPPORTED:
            raise ConfigError(f"unknown dataset {cfg.dataset!r}; supported: "
                              f"{', '.join(data.SUPPORTED)}")
        if not cfg.model or not isinstance(cfg.model, str):
            raise ConfigError("a model name is required")
        positive = dict(epochs=cfg.epochs, batch_size=cfg.batch_size,
                        checkpoint_every=cfg.checkpoint_every,
                        keep_checkpoints=cfg.keep_checkpoints,
                        eval_batch_size=cfg.eval_batch_size)
        for key in ("limit_train", "limit_test"):
            if getattr(cfg, key) is not None:
                positive[key] = getattr(cfg, key)
        for key, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{key.replace('_', '-')} must be a positive integer, "
                                  f"got {value!r}")
        if not cfg.lr > 0:
            raise ConfigError(f"lr must be positive, got {cfg.lr!r}")
        if not 0 <= cfg.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {cfg.momentum!r}")
        if not cfg.range_penalty >= 0:
            raise ConfigError(f"range-penalty must be >= 0, got {cfg.range_penalty!r}")
        if not cfg.range_bound > 0:
            raise ConfigError(f"range-bound must be positive, got {cfg.range_bound!r}")
        if not cfg.weight_decay >= 0:
            raise ConfigError(f"weight-decay must be >= 0, got {cfg.weight_decay!r}")
        if cfg.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
        if cfg.schedule not in ("cosine", "constant"):
            raise ConfigError(f"schedule must be 'cosine' or 'constant', got {cfg.schedule!r}")
        if not isinstance(cfg.seed, int) or cfg.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}")
        if not cfg.workdir:
            raise ConfigError("a workdir is required")
        check_activation(cfg.model, cfg.activation, cfg.qcfs_levels)


def config_record(cfg: TrainConfig, **derived: Any) -> dict:
    """The JSON-able content of ``config.json``: the settings plus derived facts."""
    record = {"format": CONFIG_FORMAT, **dataclasses.asdict(cfg.resolved())}
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
    if old.get("activation") != "qcfs" and new.get("activation") != "qcfs":  # levels act only with qcfs
        old, new = ({k: v for k, v in d.items() if k != "qcfs_levels"} for d in (old, new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if k not in _RESUME_FREE and old.get(k) != new.get(k)]
    if diffs:
        raise ConfigError("workdir holds a run with different settings (" + "; ".join(diffs)
                          + "); use a new --workdir")
