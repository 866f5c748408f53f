"""``signgd-train --model NAME --dataset NAME --workdir DIR [options]`` (``python -m train``).

Exit status: 0 done (or already done), 1 unusable checkpoint, 2 bad input (unknown model or
dataset, bad hyperparameter, dataset not prepared, workdir of a different run or in use),
130 Ctrl-C. Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import sys

from signgd_jax.commands.common import OneLineParser, exit_with, fail


def parser(prog: str = "signgd-train") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description="Train a classifier into a resumable workdir "
                      "(rerun the same command to resume after an interruption).")
    a = p.add_argument
    a("--model", required=True, help="signgd_jax.models name (e.g. convnext_mini, resnet_mini)"
      " or package.module:factory")
    a("--dataset", default="mnist5k", help="mnist5k (default), mnist, fashion_mnist, cifar10,"
      " cifar100, imagenet2012")
    a("--workdir", required=True, help="output folder: config.json, metrics.jsonl, checkpoints/")
    a("--epochs", type=int, default=10)
    a("--batch-size", type=int, default=128)
    a("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    a("--momentum", type=float, default=0.9)
    a("--nesterov", action="store_true")
    a("--weight-decay", type=float, default=5e-4)
    a("--schedule", choices=("cosine", "constant"), default="cosine",
      help="learning-rate schedule over all steps (default cosine decay to 0)")
    a("--optimizer", choices=("sgd", "adamw"), default="sgd",
      help="sgd: the paper's recipe (default); adamw: faster for LayerNorm/GELU models "
      "(use e.g. --lr 0.002 --weight-decay 0.05)")
    a("--range-penalty", type=float, default=0.0, metavar="LAMBDA",
      help="conversion-aware training: add LAMBDA * mean(relu(|target| - bound)^2) over the "
      "non-ReLU neurons (GELU, LayerNorm, max, ...) to the loss, so paper-mode neurons stay in "
      "their reachable range (default 0: off)")
    a("--range-bound", type=float, default=2.5, help="bound of --range-penalty (default 2.5; "
      "paper-mode estimates reach at most 2.89 by T=64)")
    a("--seed", type=int, default=0, help="initialisation, data order and augmentation seed")
    a("--augment", action=argparse.BooleanOptionalAction, default=None,
      help="random crop (pad 4) + horizontal flip; default: on for CIFAR only")
    a("--data-dir", default=None, help="TFDS data dir (default: $SIGNGD_DATA_DIR, else "
      "~/.cache/signgd_jax/tfds for mnist5k and the TFDS default for the others)")
    a("--checkpoint-every", type=int, default=100, metavar="STEPS",
      help="also checkpoint every STEPS steps within an epoch (default 100)")
    a("--keep-checkpoints", type=int, default=3)
    a("--eval-batch-size", type=int, default=500)
    a("--limit-train", type=int, default=None, metavar="N", help="use the first N training"
      " examples only")
    a("--limit-test", type=int, default=None, metavar="N", help="use the first N test"
      " examples only")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def main(argv=None, prog: str = "signgd-train") -> int:
    args = vars(parser(prog).parse_args(argv))
    from signgd_jax.commands.train import CheckpointError, ConfigError, TrainConfig, run
    from signgd_jax.data import DatasetNotPrepared

    try:
        run(TrainConfig(**args), log=lambda msg: print(msg, flush=True))
    except (ConfigError, DatasetNotPrepared) as e:
        return fail(e)
    except CheckpointError as e:
        return fail(e, status=1)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    return 0


def entry(prog: str = "signgd-train") -> None:
    """The ``signgd-train`` console script."""
    exit_with(lambda: main(prog=prog))
