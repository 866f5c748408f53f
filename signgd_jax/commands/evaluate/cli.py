"""``signgd-convert --workdir DIR [options]`` (``python -m convert``): convert a trained model,
evaluate, report.

``signgd-convert --model NAME --weights FILE [--workdir DIR] [options]``: the same for published
ImageNet weights (:func:`signgd_jax.models.from_checkpoint`), evaluated on imagenet2012 (or
``--dataset imagenet_v2`` / ``imagenette``, Imagenette scored over its 10 classes' logits) with the
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

``signgd-convert --dataset NAME --prepare [--data-dir DIR]``: prepare a public dataset as
array_record with TFDS' own builder, ``tfds build`` in a subprocess (:func:`signgd_jax.prepare.prepare`;
it needs TensorFlow, as Colab has, and the network), then exit.

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
from signgd_jax.commands.evaluate.errors import ConvertError
from signgd_jax.commands.evaluate.settings import DEFAULT_DYNAMICS, DEFAULT_TIMESTEPS, ConvertSettings

_DEFAULT_TS = ",".join(map(str, DEFAULT_TIMESTEPS))


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _add_analysis_options(a) -> None:
    """A sweep of the exponential schedule instead of one schedule, or the layer errors."""
    a("--sweep-eta0", default=None, metavar="A:B:N", help="sweep eta0 over N values from A to B (or a,b,c); "
      "writes sweep.json and heatmaps instead of results.json (default: no sweep)")
    a("--sweep-gamma", default=None, metavar="A:B:N", help="sweep gamma likewise; the axis not swept holds "
      "--eta0 or --gamma (default: no sweep)")
    a("--diagnose", action="store_true", help="also measure each site's error against the ANN per time-step "
      "on the first 64 test images: results.json['layer_errors'] and layer_errors.png (default: off)")


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
      "evaluated on imagenet2012 (or --dataset imagenet_v2 or imagenette) without a training workdir "
      "(default: none)")
    a("--pretrained", default=None, metavar="REPO_ID", help="instead of --model and --weights: a timm repository "
      "of the Hugging Face Hub, e.g. timm/convnext_small.fb_in1k (fetched into the Hugging Face cache; needs "
      "pip install 'signgd-jax[hub]'), evaluated like --weights (default: none)")
    a("--source", default=None, help="with --weights: the layout, vit_jax, timm or torchvision (default: "
      "recognised from the keys)")
    a("--dataset", default=None, help=f"dataset to evaluate on: {dataset_names()} (default: the one in "
      "config.json; imagenet2012 with --weights)")
    a("--data-dir", default=None, help="TFDS data dir (default: the training run's, else the "
      "signgd_jax.data default)")
    a("--prepare", action="store_true", help="only prepare --dataset as array_record in --data-dir with TFDS' "
      "own builder (`tfds build` in a subprocess; needs TensorFlow, which Colab has, and the network), then exit "
      "(default: off)")
    a("--timesteps", default=_DEFAULT_TS, help=f"comma-separated positive integers (default: {_DEFAULT_TS})")
    a("--dynamics", default=",".join(DEFAULT_DYNAMICS), help="comma-separated subset of paper, improved, if, qcfs "
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
    _add_analysis_options(a)
    distributed.add_arguments(p)  # --coordinator-address, --num-processes, --process-id
    return p


def _targets(args, p) -> str:
    """The workdir (with published weights by default ``./convert_NAME``); a usage error when the
    options do not go together."""
    if args.pretrained is not None and (args.weights is not None or args.model is not None or args.source):
        p.error("--pretrained REPO_ID names the weights, the model and the layout: it goes without --weights, "
                "--model and --source")
    if args.pretrained is None and (args.model is None) != (args.weights is None):
        p.error("--model and --weights go together (published weights of a zoo model)")
    if args.weights is None and args.pretrained is None:
        if args.workdir is None:
            p.error("the following arguments are required: --workdir (or --model with --weights, or --pretrained)")
        if args.source is not None:
            p.error("--source goes with --weights")
    if args.diagnose and (args.sweep_eta0 is not None or args.sweep_gamma is not None):
        p.error("--diagnose goes with an ordinary evaluation, not with --sweep-eta0/--sweep-gamma")
    if args.schedule == "auto" and (args.sweep_eta0 is not None or args.sweep_gamma is not None):
        p.error("--schedule auto chooses the step sizes itself; a sweep goes with --schedule exponential")
    return args.workdir or f"convert_{(args.model or args.pretrained).rsplit('/', 1)[-1]}"


@contextlib.contextmanager
def _workdir_held(settings: ConvertSettings, processes: distributed.Processes):
    """Process 0 holds the workdir's lock while the block runs, after checking it can write there;
    for published weights it first makes the workdir when missing, and removes it again (when
    still empty) after a bad-input or write error."""
    workdir, created = settings.workdir, False
    try:
        if settings.pretrained and not os.path.isdir(workdir) and processes.is_writer:
            with writing(f"the workdir {workdir}"):
                os.makedirs(workdir)
            created = True
        with contextlib.ExitStack() as hold:
            if os.path.isdir(workdir) and processes.is_writer:  # else loading names what is missing
                hold.enter_context(workdir_lock(workdir, ConvertError))
                check_writable(workdir)
            yield
    except (ConvertError, OutputNotWritable):
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(workdir)  # only when still empty
        raise


def _write(results: dict, workdir: str) -> list[str]:
    """results.json and its plot (and the layer errors' plot), or a sweep's files; their paths."""
    from signgd_jax.commands.evaluate.report import write_layer_errors, write_results, write_sweep

    if "sweep" in results:
        return write_sweep(results, workdir)
    written = list(write_results(results, workdir))
    if "layer_errors" in results:
        written.append(write_layer_errors(results, workdir))
    return written


def _interrupted(args, workdir: str) -> int:
    from signgd_jax.commands.evaluate.progress import PROGRESS_DIR

    if args.sweep_eta0 is not None or args.sweep_gamma is not None:
        print("interrupted; a sweep keeps no progress: rerun the command to start it again", file=sys.stderr)
    else:
        print(f"interrupted; progress kept in {os.path.join(workdir, PROGRESS_DIR)}: "
              "rerun the same command to resume", file=sys.stderr)
    return 130


def _prepare_dataset(args, p) -> int:
    """``--prepare``: :func:`signgd_jax.prepare.prepare` of ``--dataset``; 2 with one line on failure."""
    from signgd_jax.data import DatasetNotPrepared
    from signgd_jax.prepare import prepare

    if args.dataset is None:
        p.error("--prepare needs --dataset NAME")
    try:
        prepare(args.dataset, args.data_dir, log=lambda m: print(m, flush=True))
    except (DatasetNotPrepared, ValueError) as e:  # PrepareFailed included
        return fail(e)
    return 0


def main(argv=None, prog: str = "signgd-convert") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser(prog)
    args = p.parse_args(argv)
    if args.prepare:
        return _prepare_dataset(args, p)
    workdir = _targets(args, p)
    from signgd_jax.commands.evaluate import core
    from signgd_jax.commands.evaluate.report import accuracy_table, sweep_table

    try:
        processes = distributed.start(args)  # a multi-process run when flags or environment say so
        distributed.agree(distributed.command_settings(p, args), processes, "command options")
        settings = ConvertSettings.from_args(args, workdir, progress=args.progress and processes.is_writer)
        with _workdir_held(settings, processes):
            results = core.evaluate(settings, log=lambda m: print(m, flush=True))
            results["command"] = f"{prog} {shlex.join(argv)}"
            print((sweep_table if "sweep" in results else accuracy_table)(results), flush=True)
            if not processes.is_writer:  # process 0 writes the results
                return 0
            written = _write(results, workdir)
    except (ConvertError, OutputNotWritable) as e:
        return fail(e)
    except KeyboardInterrupt:
        return _interrupted(args, workdir)
    print(f"wrote {', '.join(written)}")
    return 0


def entry(prog: str = "signgd-convert") -> None:
    """The ``signgd-convert`` console script."""
    exit_with(lambda: main(prog=prog))
