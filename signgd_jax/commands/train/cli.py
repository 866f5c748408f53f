"""``signgd-train --model NAME --dataset NAME --workdir DIR [options]`` (``python -m train``).

Exit status: 0 done (or already done), 1 unusable checkpoint, 2 bad input (unknown model or
dataset, bad hyperparameter, dataset not prepared, workdir of a different run or in use),
130 Ctrl-C. Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import sys

from signgd_jax.commands.common import OneLineParser, dataset_names, exit_with, fail
from signgd_jax.commands.train.config import (ACTIVATIONS, MODEL_RECIPES, OPTIMIZER_DEFAULTS, PAPER_RECIPE,
                                              QCFS_LEVELS)

_SGD, _ADAMW, _RESMLP = OPTIMIZER_DEFAULTS["sgd"], OPTIMIZER_DEFAULTS["adamw"], MODEL_RECIPES["resmlp_mini"]


def _recipes_help() -> str:
    own = ", ".join(f"{name}: {r['optimizer']} lr {r['lr']:g} weight decay {r['weight_decay']:g}"
                    + (f" range penalty {r['range_penalty']:g} bound {r['range_bound']:g}"
                       if r.get("range_penalty") else "") + (" shifts" if r.get("augment") else "")
                    for name, r in MODEL_RECIPES.items())
    per_optimizer = ", ".join(f"{name} lr {d['lr']:g} weight decay {d['weight_decay']:g}"
                              for name, d in OPTIMIZER_DEFAULTS.items())
    return (f"Training recipes: options shown with 'default: recipe' take the model's recipe "
            f"({own}), else the paper's ({PAPER_RECIPE['optimizer']} lr {PAPER_RECIPE['lr']:g} "
            f"momentum 0.9 weight decay {PAPER_RECIPE['weight_decay']:g}, cosine decay). Options "
            f"given on the command line always win; an --optimizer other than the recipe's "
            f"brings its own lr and weight decay ({per_optimizer}).")


def _add_recipe_options(a) -> None:
    """The options a training recipe fills when they are left unset (see ``_recipes_help``), with
    momentum, Nesterov and the learning-rate schedule."""
    a("--optimizer", choices=("sgd", "adamw"), default=None,
      help="sgd (the paper's) or adamw (default: recipe: adamw for the LayerNorm/GELU minis,"
      " sgd otherwise; see below)")
    a("--lr", type=float, default=None, help=f"peak learning rate (default: recipe: {_SGD['lr']:g} for sgd,"
      f" {_ADAMW['lr']:g} for adamw)")
    a("--weight-decay", type=float, default=None, help=f"weight decay (default: recipe:"
      f" {_SGD['weight_decay']:g} for sgd, {_ADAMW['weight_decay']:g} for adamw)")
    a("--momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)")
    a("--nesterov", action="store_true", help="Nesterov momentum for SGD (default: off)")
    a("--schedule", choices=("cosine", "constant"), default="cosine",
      help="learning-rate schedule over all steps, cosine decays to 0 (default: %(default)s)")
    a("--range-penalty", type=float, default=None, metavar="LAMBDA",
      help="conversion-aware training: add LAMBDA * mean(relu(|target| - bound)^2) over the "
      "non-ReLU neurons (GELU, LayerNorm, max, ...) to the loss, so paper-mode neurons stay in "
      f"their reachable range; 0 is off (default: recipe: {_RESMLP['range_penalty']:g} for "
      f"resmlp_mini, else {PAPER_RECIPE['range_penalty']:g})")
    a("--range-bound", type=float, default=None, help="bound of --range-penalty; paper-mode "
      f"estimates reach at most 2.89 by T=64 (default: recipe: {_RESMLP['range_bound']:g} for "
      f"resmlp_mini, else {PAPER_RECIPE['range_bound']:g})")


def parser(prog: str = "signgd-train") -> argparse.ArgumentParser:
    """The command line; every option's help ends with its default, as ``(default: ...)``."""
    p = OneLineParser(prog=prog, description="Train a classifier into a resumable workdir "
                      "(rerun the same command to resume after an interruption).",
                      epilog=_recipes_help())
    a = p.add_argument
    a("--model", required=True, help="signgd_jax.models name (e.g. convnext_mini, resnet_mini)"
      " or package.module:factory (required)")
    a("--dataset", default="mnist5k", help=f"{dataset_names()}; all but mnist5k prepared beforehand as TFDS "
      "array_record files (default: %(default)s)")
    a("--workdir", required=True, help="output folder: config.json, metrics.jsonl, checkpoints/"
      " (required)")
    a("--epochs", type=int, default=10, help="training epochs (default: %(default)s)")
    a("--batch-size", type=int, default=128, help="training batch size (default: %(default)s)")
    _add_recipe_options(a)
    a("--activation", choices=ACTIVATIONS, default="relu",
      help="relu (the model as defined) or qcfs: train a ReLU model of the zoo (resnet_mini, "
      "vgg_mini, resnet18, resnet34, vgg16_bn) with QCFS activations (Bu et al., ICLR 2022: "
      "threshold * clip(floor(x / threshold * L + 1/2) / L, 0, 1), a trainable threshold per "
      "activation) and average pooling in place of max-pooling (default: %(default)s)")
    a("--qcfs-levels", type=int, default=None, metavar="L",
      help=f"quantisation steps L of --activation qcfs (default: {QCFS_LEVELS})")
    a("--augment", action=argparse.BooleanOptionalAction, default=None,
      help="random shifts (zero-pad, then crop) of the training images: up to 2 pixels for "
      "mnist5k and mnist, never mirrored; up to 2 pixels plus horizontal flips for fashion_mnist; "
      "up to 4 pixels plus horizontal flips for cifar10, cifar100, imagenet2012 and imagenette (imagenet_v2 is "
      "a test set, not trained on) (default: "
      "recipe: on for the LayerNorm/GELU minis, else on for cifar10 "
      "and cifar100 only)")
    a("--seed", type=int, default=0, help="initialisation, data order and augmentation seed"
      " (default: %(default)s)")
    a("--data-dir", default=None, help="TFDS data dir (default: $SIGNGD_DATA_DIR, else "
      "~/.cache/signgd_jax/tfds for mnist5k and the TFDS default for the others)")
    a("--checkpoint-every", type=int, default=100, metavar="STEPS",
      help="also checkpoint every STEPS steps within an epoch (default: %(default)s)")
    a("--keep-checkpoints", type=int, default=3, help="checkpoints kept in the workdir"
      " (default: %(default)s)")
    a("--eval-batch-size", type=int, default=500, help="batch size of the test-set evaluation"
      " after each epoch (default: %(default)s)")
    a("--limit-train", type=int, default=None, metavar="N", help="use the first N training"
      " examples only (default: all)")
    a("--limit-test", type=int, default=None, metavar="N", help="use the first N test"
      " examples only (default: all)")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars"
      " (default: bars on)")
    return p


def main(argv=None, prog: str = "signgd-train") -> int:
    args = vars(parser(prog).parse_args(argv))
    from signgd_jax.commands.train import ConfigError, RestoreError, TrainConfig, run
    from signgd_jax.data import DatasetNotPrepared

    if args["qcfs_levels"] is not None and args["activation"] != "qcfs":
        return fail(ConfigError("--qcfs-levels needs --activation qcfs"))

    try:
        run(TrainConfig(**args), log=lambda msg: print(msg, flush=True))
    except (ConfigError, DatasetNotPrepared) as e:
        return fail(e)
    except RestoreError as e:
        return fail(e, status=1)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    return 0


def entry(prog: str = "signgd-train") -> None:
    """The ``signgd-train`` console script."""
    exit_with(lambda: main(prog=prog))
