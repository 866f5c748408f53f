"""``python -m convert --workdir DIR [options]``: convert a trained model, evaluate, report.

Exit status: 0 done; 2 bad input (unknown dataset / dynamics / codec, bad time-steps, missing,
corrupt or mismatched checkpoint, dataset not prepared), with one line on stderr and no
output files touched; 130 Ctrl-C (results.json not written; the progress so far is kept, and
the same command resumes: see convert/progress.py).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

_DEFAULT_TS = "1,2,4,8,16,32,64,128"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m convert", description="Convert the model of a training workdir into "
                "spiking networks (one per dynamics), evaluate them on the test split at several "
                "time-steps, and write DIR/results.json and DIR/accuracy_vs_timesteps.png.")
    a = p.add_argument
    a("--workdir", required=True, help="a `python -m train` workdir (config.json + checkpoints/)")
    a("--dataset", default=None, help="dataset to evaluate on (default: the one in config.json)")
    a("--data-dir", default=None, help="TFDS data dir (default: the training run's, else the "
      "signgd_jax.data default)")
    a("--timesteps", default=_DEFAULT_TS, help=f"comma-separated positive integers (default {_DEFAULT_TS})")
    a("--dynamics", default="paper,improved,if", help="comma-separated subset of paper, improved, if "
      "(default: all three)")
    a("--batch-size", type=_int, default=250, help="evaluation and calibration batch size "
      "(default 250; rounded up to a multiple of the device count for evaluation)")
    a("--calibration-batches", type=_int, default=12, help="training batches used for calibration "
      "(default 12, fixed-seed shuffle)")
    a("--limit", type=_int, default=None, metavar="N", help="evaluate the first N test images only")
    a("--codec", default="float", help="input codec of the signGD modes: float (default), spike, stochastic")
    a("--eta0", type=float, default=0.15, help="initial step size of the exponential schedule (default 0.15)")
    a("--gamma", type=float, default=0.95, help="step-size decay per time-step (default 0.95)")
    a("--dtype", default="float32", help="simulation precision: float32 (default) or bfloat16")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    from convert.core import ConvertError, evaluate_workdir
    from convert.progress import PROGRESS_DIR
    from convert.report import accuracy_table, write_results

    try:
        results = evaluate_workdir(args.workdir, dataset=args.dataset, data_dir=args.data_dir,
                                   timesteps=args.timesteps, dynamics=args.dynamics, batch_size=args.batch_size,
                                   calibration_batch_count=args.calibration_batches, limit=args.limit,
                                   codec=args.codec, eta0=args.eta0, gamma=args.gamma, dtype=args.dtype,
                                   progress=args.progress, log=lambda m: print(m, flush=True))
        results["command"] = "python -m convert " + shlex.join(argv)
        print(accuracy_table(results), flush=True)
        json_path, png_path = write_results(results, args.workdir)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; progress kept in {os.path.join(args.workdir, PROGRESS_DIR)}: "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    print(f"wrote {json_path} and {png_path}")
    return 0


def _quiet_closed_loop(default_hook):
    """An unraisable-exception hook that drops the "Event loop is closed" RuntimeErrors orbax's
    background threads leave behind after a failed restore (they are printed, not raised)."""

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
            return
        default_hook(unraisable)

    return hook


if __name__ == "__main__":
    sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)
    status = main()
    if status:
        # Leave without the interpreter's shutdown, where the same threads may print more.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
