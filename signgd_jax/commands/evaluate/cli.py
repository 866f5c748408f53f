"""``signgd-convert --workdir DIR [options]`` (``python -m convert``): convert a trained model,
evaluate, report.

``signgd-convert --model NAME --weights FILE [--workdir DIR] [options]``: the same for published
ImageNet weights (:func:`signgd_jax.models.from_checkpoint`), evaluated on imagenet2012 with the
checkpoint's preprocessing; DIR (default ``./convert_NAME``, created if missing) holds the
progress and the results. Calibration: ``--calibration-batches`` (default 100, as the paper) of
``--calibration-batch-size`` (default 32) training images. ``--pretrained REPO_ID`` instead of
``--model`` and ``--weights``: a timm repository of the Hugging Face Hub, e.g.
``timm/convnext_small.fb_in1k`` (:func:`signgd_jax.models.from_pretrained`); DIR defaults to
``./convert_<repository name>``, e.g. ``./convert_convnext_small.fb_in1k``.

``--sweep-eta0 A:B:N`` / ``--sweep-gamma A:B:N``: the accuracy over that grid of the exponential
schedule instead of one schedule (:func:`signgd_jax.sweep`), written to DIR/sweep.json and one
heatmap per dynamics and T (DIR/sweep_<dynamics>_T<t>.png). ``--diagnose``: each site's error
against the ANN per time-step (:func:`signgd_jax.diagnose.layer_errors`) into results.json and
DIR/layer_errors.png. ``--schedule auto``: each T simulated with its own exponential schedule,
chosen on calibration images (:func:`signgd_jax.tune_schedule`), recorded in results.json.

Exit status: 0 done; 2 bad input (unknown dataset / dynamics / codec, bad time-steps, missing,
corrupt or mismatched checkpoint, dataset not prepared, NaN or Inf images, workdir in use by
another process, a workdir where nothing can be written, processes of a multi-process run whose
options or inputs differ: every process stops), with one line on stderr and no
results file touched; 130 Ctrl-C (results.json not written; the progress so far is kept, and
the same command resumes: see :mod:`~signgd_jax.commands.evaluate.progress`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys

from signgd_jax.commands.common import (OneLineParser, OutputNotWritable, check_writable, dataset_names,
                                        exit_with, fail, workdir_lock, writing)
from signgd_jax.commands.evaluate import distributed

_DEFAULT_TS = "1,2,4,8,16,32,64,128"


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def parser(prog: str = "signgd-convert") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description="Convert the model of a training workdir (or published "
                      "ImageNet weights: --model with --weights) into spiking networks (one per dynamics), "
                      "evaluate them on the test split at several time-steps, and write DIR/results.json and "
                      "DIR/accuracy_vs_timesteps.png (a sweep: DIR/sweep.json and heatmaps).")
    a = p.add_argument
    a("--workdir", default=None, help="a `signgd-train` workdir (config.json + checkpoints/), or with --weights "
      "where the results and progress go (default: required without --weights; ./convert_MODEL with "
      "--weights, created if missing)")
    a("--model", default=None, help="with --weights: the zoo ImageNet model the weights are for, e.g. "
      "convnext_small or resnet18 (default: none, evaluate --workdir's trained model)")
    a("--weights", default=None, metavar="FILE", help="published weights (.safetensors, .npz, .pth) of --model, "
      "evaluated on imagenet2012 without a training workdir (default: none)")
    a("--pretrained", default=None, metavar="REPO_ID", help="instead of --model and --weights: a timm repository "
      "of the Hugging Face Hub, e.g. timm/convnext_small.fb_in1k (fetched into the Hugging Face cache; needs "
      "pip install 'signgd-jax[hub]'), evaluated like --weights (default: none)")
    a("--source", default=None, help="with --weights: the layout, vit_jax, timm or torchvision (default: "
      "recognised from the keys)")
    a("--dataset", default=None, help=f"dataset to evaluate on: {dataset_names()} (default: the one in "
      "config.json; imagenet2012 with --weights)")
    a("--data-dir", default=None, help="TFDS data dir (default: the training run's, else the "
      "signgd_jax.data default)")
    a("--timesteps", default=_DEFAULT_TS, help=f"comma-separated positive integers (default: {_DEFAULT_TS})")
    a("--dynamics", default="paper,improved,if", help="comma-separated subset of paper, improved, if, qcfs "
      "(QCFS-trained networks), ecmt (expectation compensation + multi-threshold neurons) (default: %(default)s)")
    a("--spike-levels", type=_int, default=None, metavar="K", help="levels a neuron sends per step and side: "
      "graded signGD in improved mode (K=1, the default, is the binary neuron; log2(2K) bits per step) and "
      "ecmt's thresholds per sign (default 8)")
    a("--batch-size", type=_int, default=250, help="evaluation batch size, rounded up to a multiple of the "
      "device count, and the calibration batch size of a workdir (default: 250)")
    a("--calibration-batches", type=_int, default=None, help="training batches used for calibration, "
      "fixed-seed shuffle (default: 12 for a workdir; 100 with --weights, as the paper)")
    a("--calibration-batch-size", type=_int, default=None, help="images per calibration batch (default: "
      "--batch-size for a workdir; 32 with --weights)")
    a("--limit", type=_int, default=None, metavar="N", help="evaluate the first N test images only "
      "(default: all test images)")
    a("--codec", default="float", help="input codec of the signGD modes: float, spike or stochastic "
      "(default: %(default)s)")
    a("--schedule", choices=("exponential", "auto"), default="exponential", help="step sizes of the signGD "
      "modes: exponential uses --eta0 and --gamma for every T; auto picks for each T the exponential schedule "
      "that agrees best with the ANN on 256 calibration images (default: %(default)s)")
    a("--spread", type=float, default=None, metavar="K", help="improved mode's neuron ranges: K standard "
      "deviations over the calibration images instead of the largest deviation (default: the largest "
      "deviation)")
    a("--eta0", type=float, default=0.15, help="initial step size of the exponential schedule (default: 0.15)")
    a("--gamma", type=float, default=0.95, help="step-size decay per time-step (default: 0.95)")
    a("--dtype", default="float32", help="simulation precision: float32 or bfloat16 (default: %(default)s)")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars (default: progress bars "
      "on)")
    a("--sweep-eta0", default=None, metavar="A:B:N", help="sweep eta0 over N values from A to B (or a,b,c); "
      "writes sweep.json and heatmaps instead of results.json (default: no sweep)")
    a("--sweep-gamma", default=None, metavar="A:B:N", help="sweep gamma likewise; the axis not swept holds "
      "--eta0 or --gamma (default: no sweep)")
    a("--diagnose", action="store_true", help="also measure each site's error against the ANN per time-step "
      "on the first 64 test images: results.json['layer_errors'] and layer_errors.png (default: off)")
    distributed.add_arguments(p)  # --coordinator-address, --num-processes, --process-id
    return p


def _targets(args, p) -> tuple[str, bool]:
    """``(workdir, pretrained)`` from the arguments; a usage error when they do not fit."""
    if args.pretrained is not None and (args.weights is not None or args.model is not None or args.source):
        p.error("--pretrained REPO_ID names the weights, the model and the layout: it goes without --weights, "
                "--model and --source")
    if args.pretrained is None and (args.model is None) != (args.weights is None):
        p.error("--model and --weights go together (published weights of a zoo model)")
    pretrained = args.weights is not None or args.pretrained is not None
    if not pretrained:
        if args.workdir is None:
            p.error("the following arguments are required: --workdir (or --model with --weights, or --pretrained)")
        if args.source is not None:
            p.error("--source goes with --weights")
    if args.diagnose and (args.sweep_eta0 is not None or args.sweep_gamma is not None):
        p.error("--diagnose goes with an ordinary evaluation, not with --sweep-eta0/--sweep-gamma")
    if args.schedule == "auto" and (args.sweep_eta0 is not None or args.sweep_gamma is not None):
        p.error("--schedule auto chooses the step sizes itself; a sweep goes with --schedule exponential")
    return args.workdir or f"convert_{args.model or args.pretrained.rsplit('/', 1)[-1]}", pretrained


def main(argv=None, prog: str = "signgd-convert") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser(prog)
    args = p.parse_args(argv)
    workdir, pretrained = _targets(args, p)
    from signgd_jax.commands.evaluate import core
    from signgd_jax.commands.evaluate.progress import PROGRESS_DIR
    from signgd_jax.commands.evaluate.report import (accuracy_table, sweep_table, write_layer_errors, write_results,
                                                     write_sweep)

    created = False
    try:
        processes = distributed.start(args)  # a multi-process run when flags or environment say so
        distributed.agree(distributed.command_settings(p, args), processes, "command options")
        common = dict(
            dataset=args.dataset, data_dir=args.data_dir, timesteps=args.timesteps, dynamics=args.dynamics,
            batch_size=args.batch_size, calibration_batch_size=args.calibration_batch_size, limit=args.limit,
            codec=args.codec, schedule=args.schedule, spread=args.spread, spike_levels=args.spike_levels,
            eta0=args.eta0, gamma=args.gamma, dtype=args.dtype,
            progress=args.progress and processes.is_writer, log=lambda m: print(m, flush=True),
            sweep_eta0=core.parse_grid("sweep-eta0", args.sweep_eta0),
            sweep_gamma=core.parse_grid("sweep-gamma", args.sweep_gamma), diagnose=args.diagnose)
        if args.calibration_batches is not None:  # else each mode's default
            common["calibration_batch_count"] = args.calibration_batches
        if args.calibration_batch_size is None:
            common.pop("calibration_batch_size")
        with contextlib.ExitStack() as hold:
            if pretrained and not os.path.isdir(workdir) and processes.is_writer:
                with writing(f"the workdir {workdir}"):
                    os.makedirs(workdir)
                created = True
            if os.path.isdir(workdir) and processes.is_writer:  # else evaluate_workdir names what is missing
                hold.enter_context(workdir_lock(workdir, core.ConvertError))
                check_writable(workdir)
            if pretrained:
                results = core.evaluate_pretrained(args.model, args.weights, workdir, source=args.source,
                                                   repo_id=args.pretrained, **common)
            else:
                results = core.evaluate_workdir(workdir, **common)
            results["command"] = f"{prog} {shlex.join(argv)}"
            print((sweep_table if "sweep" in results else accuracy_table)(results), flush=True)
            if not processes.is_writer:  # process 0 writes the results
                return 0
            if "sweep" in results:
                written = write_sweep(results, workdir)
            else:
                written = list(write_results(results, workdir))
                if "layer_errors" in results:
                    written.append(write_layer_errors(results, workdir))
    except (core.ConvertError, OutputNotWritable) as e:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(workdir)  # only when still empty
        return fail(e)
    except KeyboardInterrupt:
        if args.sweep_eta0 is not None or args.sweep_gamma is not None:
            print("interrupted; a sweep keeps no progress: rerun the command to start it again", file=sys.stderr)
        else:
            print(f"interrupted; progress kept in {os.path.join(workdir, PROGRESS_DIR)}: "
                  "rerun the same command to resume", file=sys.stderr)
        return 130
    print(f"wrote {', '.join(written)}")
    return 0


def entry(prog: str = "signgd-convert") -> None:
    """The ``signgd-convert`` console script."""
    exit_with(lambda: main(prog=prog))
