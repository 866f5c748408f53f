"""``python -m train --model NAME --dataset NAME --workdir DIR [options]``.

Exit status: 0 done (or already done), 1 unusable checkpoint, 2 bad input (unknown model or
dataset, bad hyperparameter, dataset not prepared, workdir of a different run), 130 Ctrl-C.
Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m train", description="Train a classifier into a resumable "
                "workdir (rerun the same command to resume after an interruption).")
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


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _quiet_orbax_leftovers() -> None:
    """After orbax failed on damaged files, its orphaned tensorstore callbacks report
    "Event loop is closed" from other threads; keep stderr to our one line."""
    previous = sys.unraisablehook

    def hook(unraisable):
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)):
            previous(unraisable)

    sys.unraisablehook = hook


def main(argv=None) -> int:
    args = vars(_parser().parse_args(argv))
    from signgd_jax.data import DatasetNotPrepared
    from train import CheckpointError, ConfigError, TrainConfig, run

    try:
        run(TrainConfig(**args), log=lambda msg: print(msg, flush=True))
    except (ConfigError, DatasetNotPrepared) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        _quiet_orbax_leftovers()
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
