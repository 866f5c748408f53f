"""Train the five small models on mnist5k, convert each with every dynamics, tabulate.

    PYTHONPATH=. python scripts/five_architectures.py                      # the full run
    PYTHONPATH=. python scripts/five_architectures.py --epochs 1 --limit 100 \\
        --runs-dir /tmp/smoke/runs --results-dir /tmp/smoke/results          # a smoke run

Each model trains into ``<runs-dir>/<model>`` with ``python -m train``'s own code (a finished
workdir is reused instantly, an interrupted one resumes), is converted with paper, improved and
if dynamics and evaluated on the test split (``<runs-dir>/<model>/results.json`` and its plot, as
``python -m convert`` writes them). The combined table goes to stdout and to
``<results-dir>/five_architectures.md``, everything else to ``five_architectures.json``.

A workdir trained with other settings (say ``--epochs 1`` from a smoke run) is not overwritten:
the script stops with an error naming the difference; use another ``--runs-dir`` or delete it.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

MODELS = ("convnext_mini", "mixer_mini", "resmlp_mini", "resnet_mini", "vgg_mini")
DATASET = "mnist5k"
# ResMLP has no normalisation: its GELU targets grow to ~90 and saturate paper-mode neurons (+-2.9 by
# T=64); a range penalty during training keeps them within the bound (signgd_jax.regularize).
RANGE_PENALTY = {"resmlp_mini": 0.1}


def parse_penalties(text: str) -> dict:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = lam = float(value)
        except ValueError:
            lam = float("nan")
        if not lam >= 0:
            raise ValueError(f"--range-penalty: expected MODEL=LAMBDA with LAMBDA >= 0, got {item!r}")
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python scripts/five_architectures.py", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--models", default=",".join(MODELS), help=f"comma-separated (default: {','.join(MODELS)})")
    a("--epochs", type=int, default=25, help="training epochs per model (default 25)")
    a("--optimizer", choices=("sgd", "adamw"), default="adamw", help="training optimizer (default adamw)")
    a("--lr", type=float, default=0.003, help="peak learning rate (default 0.003, cosine decay)")
    a("--weight-decay", type=float, default=0.05, help="weight decay (default 0.05)")
    a("--augment", action=argparse.BooleanOptionalAction, default=True,
      help="random 2-pixel shifts of the digits (default on)")
    a("--range-penalty", default=",".join(f"{k}={v}" for k, v in RANGE_PENALTY.items()), metavar="MODEL=LAMBDA,...",
      help="conversion-aware training (train --range-penalty) for these models (default "
      + ",".join(f"{k}={v}" for k, v in RANGE_PENALTY.items()) + "; '' for none)")
    a("--range-bound", type=float, default=2.0, help="bound of --range-penalty (default 2.0)")
    a("--runs-dir", default="runs", help="parent of the training workdirs (default runs/)")
    a("--results-dir", default="results", help="where the table goes (default results/)")
    a("--data-dir", default=None, help="TFDS data dir (default: signgd_jax.data's)")
    a("--timesteps", default="1,2,4,8,16,32,64,128", help="time-steps to evaluate (default 1,...,128)")
    a("--table-timesteps", default="8,16,32,64,128", help="time-steps shown in the table "
      "(default 8,16,32,64,128; all evaluated ones are in the JSON)")
    a("--dynamics", default="paper,improved,if")
    a("--schedule", choices=("exponential", "auto"), default="exponential", help="signGD step sizes: "
      "exponential (eta0 0.15, gamma 0.95) or auto (tuned per T on calibration images; default exponential)")
    a("--spread", type=float, default=None, metavar="K", help="improved-mode ranges in standard deviations "
      "(default: the largest deviation)")
    a("--batch-size", type=int, default=250, help="conversion: evaluation/calibration batch (default 250)")
    a("--calibration-batches", type=int, default=12)
    a("--limit", type=int, default=None, metavar="N", help="evaluate the first N test images only")
    a("--limit-train", type=int, default=None, metavar="N", help="train on the first N images only")
    a("--no-progress", dest="progress", action="store_false")
    return p


def markdown(summary: dict, table_ts: list[int]) -> str:
    """The results table in markdown, with the command and the machine."""
    from signgd_jax.commands.evaluate import percent

    m = summary["machine"]
    first = next(iter(summary["models"].values()))
    lines = [
        f"# Five architectures on {DATASET}: ANN vs SNN test accuracy (%)",
        "",
        f"Command: `{summary['command']}`",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, jax {m['jax']} ({m['backend']}, "
        f"{m['device_count']} device(s): {', '.join(m['devices'])}). Total time {summary['seconds']:.0f} s.",
        "",
        f"Training: {summary['settings']['epochs']} epoch(s) per model, {summary['settings']['optimizer']} "
        f"lr {summary['settings']['lr']} (cosine) weight decay {summary['settings']['weight_decay']}, "
        f"augmentation {'on' if summary['settings']['augment'] else 'off'}, batch 128"
        + "".join(f"; {k} with range penalty {v} (bound {summary['settings']['range_bound']}, "
                  "`python -m train --range-penalty`)" for k, v in summary["settings"]["range_penalty"].items()
                  if k in summary["models"])
        + ". "
        f"Test images: {first['num_test_images']}. Calibration: {first['calibration']['batches']} training "
        f"batches of {first['calibration']['batch_size']} (seed {first['calibration']['seed']}). Codec "
        f"{first['settings']['codec']}, "
        + ("schedule tuned per T on 256 calibration images (`--schedule auto`, chosen values in the json)"
           if first['settings'].get('schedule') == "auto" else
           f"exponential schedule eta0={first['settings']['eta0']}, gamma={first['settings']['gamma']}")
        + (f"; improved-mode ranges {first['settings']['spread']:g} standard deviations"
           if first['settings'].get('spread') else "") + ".",
        "",
        "| model | ANN | dynamics | " + " | ".join(f"T={t}" for t in table_ts) + " |",
        "|---|---:|---|" + "---:|" * len(table_ts),
    ]
    reasons = {}
    for name, r in summary["models"].items():
        for i, (dyn, d) in enumerate(r["dynamics"].items()):
            cells = ([percent(d["accuracy"].get(str(t))) for t in table_ts] if d["supported"]
                     else ["n/a"] * len(table_ts))
            if not d["supported"]:
                reasons.setdefault(dyn, []).append(name)
            lines.append(f"| {name if i == 0 else ''} | {percent(r['ann']['accuracy']) if i == 0 else ''} | "
                         f"{dyn} | " + " | ".join(cells) + " |")
    if "if" in reasons:
        lines += ["", f"n/a: the integrate-and-fire baseline (`if`) converts ReLU (+ max-pool) networks only; "
                      f"{', '.join(reasons.pop('if'))} use GELU and LayerNorm."]
    for dyn, names in reasons.items():
        lines += ["", f"n/a: {dyn} does not convert {', '.join(names)}."]
    lines += ["", "Per-model details (all time-steps, spike statistics, timings): "
                  "`five_architectures.json` and `<runs-dir>/<model>/results.json`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    from signgd_jax.commands import train
    from signgd_jax.commands.common import atomic_outputs, write_json, write_text
    from signgd_jax.commands.evaluate import (ConvertError, accuracy_table, evaluate_workdir, machine_info,
                                              parse_dynamics, parse_timesteps, write_results)
    from signgd_jax import data

    t0 = time.perf_counter()
    try:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            raise ConvertError("--models is empty")
        from signgd_jax import models as zoo

        unknown = [m for m in models if ":" not in m and m not in zoo.available()]
        if unknown:
            raise ConvertError(f"unknown model(s) {', '.join(unknown)}; available: {', '.join(zoo.available())}")
        try:
            penalties = parse_penalties(args.range_penalty)
        except ValueError as e:
            raise ConvertError(str(e)) from None
        table_ts = list(parse_timesteps(args.table_timesteps))
        timesteps = parse_timesteps(list(parse_timesteps(args.timesteps)) + table_ts)
        dynamics = parse_dynamics(args.dynamics)
        summary = dict(command=" ".join(["python scripts/five_architectures.py", shlex.join(argv)]).rstrip(), machine=machine_info(),
                       settings=dict(dataset=DATASET, epochs=args.epochs, optimizer=args.optimizer, lr=args.lr,
                                     weight_decay=args.weight_decay, augment=args.augment, limit=args.limit,
                                     range_penalty=penalties, range_bound=args.range_bound,
                                     limit_train=args.limit_train, timesteps=list(timesteps),
                                     dynamics=list(dynamics)),
                       models={})
        for name in models:
            workdir = os.path.join(args.runs_dir, name)
            print(f"== {name}: training into {workdir}", flush=True)
            t_train = time.perf_counter()
            try:
                last = train.run(train.TrainConfig(model=name, workdir=workdir, dataset=DATASET, epochs=args.epochs,
                                                   optimizer=args.optimizer, lr=args.lr,
                                                   weight_decay=args.weight_decay, augment=args.augment,
                                                   data_dir=args.data_dir, limit_train=args.limit_train,
                                                   range_penalty=penalties.get(name, 0.0),
                                                   range_bound=args.range_bound, progress=args.progress),
                                 log=lambda msg: print(f"   {msg}", flush=True))
            except train.ConfigError as e:
                if "different settings" not in str(e):
                    raise
                msg = str(e).replace("; use a new --workdir", "")
                raise ConvertError(f"{workdir}: {msg}; use another --runs-dir, or delete {workdir}") from None
            train_s = time.perf_counter() - t_train
            print(f"== {name}: converting ({', '.join(dynamics)})", flush=True)
            results = evaluate_workdir(workdir, data_dir=args.data_dir, timesteps=timesteps, dynamics=dynamics,
                                       batch_size=args.batch_size, calibration_batch_count=args.calibration_batches,
                                       limit=args.limit, progress=args.progress, schedule=args.schedule,
                                       spread=args.spread,
                                       log=lambda msg: print(f"   {msg}", flush=True))
            results["command"] = summary["command"]
            results["training"] = dict(last_epoch=last, seconds_this_invocation=round(train_s, 3))
            print(accuracy_table(results), flush=True)
            write_results(results, workdir)
            summary["models"][name] = results
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        text = markdown(summary, table_ts)
        os.makedirs(args.results_dir, exist_ok=True)
        md_path = os.path.join(args.results_dir, "five_architectures.md")
        json_path = os.path.join(args.results_dir, "five_architectures.json")
        with atomic_outputs([md_path, json_path]) as (md_tmp, json_tmp):
            write_text(md_tmp, text)
            write_json(json_tmp, summary)
    except (ConvertError, train.TrainError, data.DatasetNotPrepared) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume (finished trainings are reused)", file=sys.stderr)
        return 130
    print("\n" + text)
    print(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
