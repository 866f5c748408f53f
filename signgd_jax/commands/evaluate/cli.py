"""``signgd-convert --workdir DIR [options]`` (``python -m convert``): convert a trained model,
evaluate, report.

Exit status: 0 done; 2 bad input (unknown dataset / dynamics / codec, bad time-steps, missing,
corrupt or mismatched checkpoint, dataset not prepared, NaN or Inf images, workdir in use by
another process, a workdir where nothing can be written), with one line on stderr and no
results file touched; 130 Ctrl-C (results.json not written; the progress so far is kept, and
the same command resumes: see :mod:`~signgd_jax.commands.evaluate.progress`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys

from signgd_jax.commands.common import (OneLineParser, OutputNotWritable, check_writable, exit_with,
                                        fail, workdir_lock)

_DEFAULT_TS = "1,2,4,8,16,32,64,128"


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def parser(prog: str = "signgd-convert") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description="Convert the model of a training workdir into "
                      "spiking networks (one per dynamics), evaluate them on the test split at "
                      "several time-steps, and write DIR/results.json and "
                      "DIR/accuracy_vs_timesteps.png.")
    a = p.add_argument
    a("--workdir", required=True, help="a `signgd-train` workdir (config.json + checkpoints/)")
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


def main(argv=None, prog: str = "signgd-convert") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(prog).parse_args(argv)
    from signgd_jax.commands.evaluate.core import ConvertError, evaluate_workdir
    from signgd_jax.commands.evaluate.progress import PROGRESS_DIR
    from signgd_jax.commands.evaluate.report import accuracy_table, write_results

    try:
        with contextlib.ExitStack() as hold:
            if os.path.isdir(args.workdir):  # else evaluate_workdir names what is missing
                hold.enter_context(workdir_lock(args.workdir, ConvertError))
                check_writable(args.workdir)
            results = evaluate_workdir(
                args.workdir, dataset=args.dataset, data_dir=args.data_dir, timesteps=args.timesteps,
                dynamics=args.dynamics, batch_size=args.batch_size,
                calibration_batch_count=args.calibration_batches, limit=args.limit, codec=args.codec,
                eta0=args.eta0, gamma=args.gamma, dtype=args.dtype, progress=args.progress,
                log=lambda m: print(m, flush=True))
            results["command"] = f"{prog} {shlex.join(argv)}"
            print(accuracy_table(results), flush=True)
            json_path, png_path = write_results(results, args.workdir)
    except (ConvertError, OutputNotWritable) as e:
        return fail(e)
    except KeyboardInterrupt:
        print(f"interrupted; progress kept in {os.path.join(args.workdir, PROGRESS_DIR)}: "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    print(f"wrote {json_path} and {png_path}")
    return 0


def entry(prog: str = "signgd-convert") -> None:
    """The ``signgd-convert`` console script."""
    exit_with(lambda: main(prog=prog))
