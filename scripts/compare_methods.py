"""Where signGD stands: every conversion method on the same trained weights, test images and
calibration images, with spikes counted by the bits and additions they carry.

    PYTHONPATH=. python scripts/compare_methods.py                       # the full run
    PYTHONPATH=. python scripts/compare_methods.py --models digits_cnn --limit 50 \\
        --runs-dir /tmp/smoke/runs --results-dir /tmp/smoke/results --epochs 1   # a smoke run

Models: the six small zoo models trained on mnist5k (``python -m train``'s own code, one workdir
per model under ``<runs-dir>``, reused when finished), the QCFS-trained twins of the two ReLU
networks (``--activation qcfs --qcfs-levels 8``), and a small CNN on sklearn's 8x8 digits (and
its QCFS twin), trained here. Methods (rows of :mod:`signgd_jax.dynamics`):

* ``paper``, ``improved``: binary signGD with the default schedule (eta0 0.15, gamma 0.95);
* ``improved tuned``: binary signGD with the schedule chosen per T on calibration images
  (``tune_schedule`` over eta0 in TUNE_ETA0 x decay in TUNE_DECAY, on TUNE_IMAGES images);
* ``graded K=2/3/7``: graded signGD, schedule chosen per (T, K) (tuned), T <= 8;
* ``if``: the integrate-and-fire baseline (ReLU networks);
* ``qcfs``: integrate-and-fire neurons of the QCFS-trained twins;
* ``ecmt n=8`` (ECMT's own default), ``ecmt n=3``: expectation compensation and multi-threshold
  neurons, training-free, any network.

Each (model, method) is evaluated on the same test images; the energy per image at T is
exact for that T (spike counts over the first T steps, ``simulate(...,
return_spike_counts="per_timestep")``): synaptic events x fan-out x 0.9 pJ plus the first
layer's multiply-accumulates x 4.6 pJ per step (:mod:`signgd_jax.metrics`). Per-model results go
to ``<runs-dir>/<model>/comparison.json`` as they finish (a rerun continues), the tables to
``<results-dir>/comparison.md``, everything to ``comparison.json``, and two figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import numpy as np  # noqa: E402

ZOO = ("convnext_mini", "mixer_mini", "resmlp_mini", "resnet_mini", "vgg_mini", "vit_mini")
TWINS = {"resnet_mini_qcfs": "resnet_mini", "vgg_mini_qcfs": "vgg_mini"}
DIGITS = ("digits_cnn", "digits_cnn_qcfs")
MODELS = ZOO + tuple(TWINS) + DIGITS
RANGE_PENALTY = {"resmlp_mini": 0.1}  # as scripts/five_architectures.py: ResMLP trains with a range penalty
QCFS_LEVELS = 8
ALL_T = (1, 2, 4, 8, 16, 32, 64, 128)
LOW_T = (1, 2, 4, 8)
TUNED_UP_TO = 8  # longer runs keep the default schedule (as accurate as the ANN there on these models)
# a coarser grid than tune_schedule's default (7 x 6 points on 256 images), to keep the run short
TUNE_ETA0 = (0.15, 0.3, 0.5, 1.0)
TUNE_DECAY = (0.1, 0.35, 1.0)
TUNE_IMAGES = 64


@dataclasses.dataclass(frozen=True)
class Method:
    """One row: a dynamics with its levels, tuned or not, over which time-steps."""

    label: str
    dynamics: str
    spike_levels: int | None = None
    tuned: bool = False
    timesteps: tuple = ALL_T


METHODS = (
    Method("paper", "paper"),
    Method("improved", "improved"),
    Method("improved tuned", "improved", 1, True),
    Method("graded K=2", "improved", 2, True, LOW_T),
    Method("graded K=3", "improved", 3, True, LOW_T),
    Method("graded K=7", "improved", 7, True, LOW_T),
    Method("if", "if"),
    Method("qcfs", "qcfs"),
    Method("ecmt n=8", "ecmt", 8),
    Method("ecmt n=3", "ecmt", 3, timesteps=LOW_T),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python scripts/compare_methods.py", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    a("--methods", default=",".join(m.label for m in METHODS), help="comma-separated method labels")
    a("--epochs", type=int, default=12, help="training epochs per mnist5k model (default 12)")
    a("--limit", type=int, default=None, metavar="N", help="evaluate the first N test images only")
    a("--runs-dir", default="runs/compare", help="training workdirs and per-model results (default runs/compare)")
    a("--results-dir", default="results", help="where the tables and figures go (default results/)")
    a("--data-dir", default=None, help="TFDS data dir (default: signgd_jax.data's)")
    a("--batch-size", type=int, default=250, help="evaluation batch (default 250)")
    a("--no-progress", dest="progress", action="store_false")
    return p


# ----------------------------------------------------------------------------- data and models
def _digits_cnn(activation: str):
    import flax.linen as nn

    import signgd_jax as sg

    class DigitsCNN(nn.Module):
        """Conv 3x3 (16) -> act -> conv 3x3 (32) -> act -> average pool 2 -> dense 64 -> act -> 10."""

        @nn.compact
        def __call__(self, x):
            def act(y):
                return sg.nn.QCFS(QCFS_LEVELS, init_threshold=4.0)(y) if activation == "qcfs" else sg.nn.relu(y)

            x = act(nn.Conv(16, (3, 3))(x))
            x = act(nn.Conv(32, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
            return nn.Dense(10)(act(nn.Dense(64)(x)))

    return DigitsCNN()


def digits_splits():
    """sklearn's 1,797 8x8 digits in [0, 1], shuffled once (seed 0): 1,297 train, 500 test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.images))
    images = (d.images[order] / 16.0).astype(np.float32)[..., None]
    labels = d.target[order].astype(np.int32)
    return (images[:1297], labels[:1297]), (images[1297:], labels[1297:])


def train_digits(activation: str, epochs: int = 40, seed: int = 0):
    """The digits CNN trained with AdamW (lr 3e-3, batch 64): ``(model, variables)``."""
    import jax
    import optax

    (x, y), _ = digits_splits()
    model = _digits_cnn(activation)
    variables = model.init(jax.random.key(seed), x[:1])
    tx = optax.adamw(optax.cosine_decay_schedule(3e-3, epochs * (len(x) // 64)), weight_decay=1e-4)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss(p):
            logits = model.apply({"params": p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, rng = variables["params"], np.random.default_rng(seed)
    opt_state = tx.init(params)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x) - 63, 64):
            params, opt_state = step(params, opt_state, x[order[i:i + 64]], y[order[i:i + 64]])
    return model, {"params": params}


def load_model(name: str, args):
    """``(model, variables, calibration batches, test images, test labels, how it was trained)``."""
    from signgd_jax import workdir as trained_workdir
    from signgd_jax.commands import train

    if name in DIGITS:
        activation = "qcfs" if name.endswith("_qcfs") else "relu"
        model, variables = train_digits(activation, epochs=40 if args.epochs > 1 else 1)
        (xtr, _), (xte, yte) = digits_splits()
        calibration = [xtr[i:i + 250] for i in range(0, 1250, 250)]
        return model, variables, calibration, xte, yte, dict(dataset="sklearn digits (1,297 train / 500 test)",
                                                             activation=activation, epochs=40 if args.epochs > 1 else 1)
    zoo_name = TWINS.get(name, name)
    qcfs = name in TWINS
    workdir = os.path.join(args.runs_dir, name)
    epochs = args.epochs
    train.run(train.TrainConfig(model=zoo_name, workdir=workdir, dataset="mnist5k", epochs=epochs, optimizer="adamw",
                                lr=0.003, weight_decay=0.05, augment=True, data_dir=args.data_dir,
                                range_penalty=RANGE_PENALTY.get(zoo_name, 0.0), range_bound=2.0,
                                activation="qcfs" if qcfs else "relu", qcfs_levels=QCFS_LEVELS,
                                progress=args.progress),
              log=lambda msg: print(f"   {msg}", flush=True))
    model, variables, config = trained_workdir.load(workdir)
    train_ds, test_ds = trained_workdir.splits("mnist5k", args.data_dir)
    calibration = trained_workdir.calibration_batches(train_ds, 250, 12)
    images, labels = test_ds.get(np.arange(len(test_ds)))
    return model, variables, calibration, images, labels, dict(
        dataset="mnist5k", workdir=workdir, activation=config.get("activation", "relu"), epochs=epochs,
        range_penalty=RANGE_PENALTY.get(zoo_name, 0.0))


# ----------------------------------------------------------------------------- evaluation
def run_method(snn, method: Method, calibration, images, labels, batch_size: int) -> dict:
    """Accuracy, events, synaptic operations and energy per image at each T of ``method``."""
    import signgd_jax as sg
    from signgd_jax import metrics

    timesteps = method.timesteps
    groups = {(None, None, snn.dynamics.spike_levels): timesteps}
    schedule_per_t = None
    if method.tuned:
        tuned_ts = tuple(t for t in timesteps if t <= TUNED_UP_TO)
        choice = sg.tune_schedule(snn, calibration, timesteps=tuned_ts, spike_levels=(method.spike_levels,),
                                  eta0=TUNE_ETA0, decay=TUNE_DECAY, images=TUNE_IMAGES)
        schedule_per_t = choice.as_dict()
        groups = dict(choice.groups())
        rest = tuple(t for t in timesteps if t > TUNED_UP_TO)
        if rest:
            groups[(None, None, method.spike_levels)] = rest
    n, correct, statistics = len(images), {}, {}
    for (e, g, k), ts in groups.items():
        run = snn if e is None else snn.with_schedule(eta0=e, gamma=g)
        run = run.with_spike_levels(k)
        hits, totals = np.zeros(len(ts)), None
        for i in range(0, len(images), batch_size):
            logits, counts = sg.simulate(run, images[i:i + batch_size], ts, return_spike_counts="per_timestep")
            hits += np.asarray(metrics.accuracy_per_step(logits, labels[i:i + batch_size])) * len(logits[0])
            counts = {name: np.asarray(c, np.float64) for name, c in counts.items()}
            totals = counts if totals is None else {name: totals[name] + c for name, c in counts.items()}
        correct.update({t: int(round(h)) for t, h in zip(ts, hits)})
        statistics.update(metrics.spike_statistics_per_timestep(run, totals, n, ts, images[:1]))
    out = {}
    for t in timesteps:  # per image over the whole T-step run
        out[str(t)] = dict(accuracy=correct[t] / n, correct=correct[t],
                           sops_per_image=statistics[t]["sops_per_image_step"] * t,
                           energy_uj_per_image=statistics[t]["energy_pj_per_image_step"] * t / 1e6,
                           bits_per_neuron=t * snn.dynamics.bits_per_step)
    return dict(bits_per_neuron_step=snn.dynamics.bits_per_step, spike_levels=snn.dynamics.spike_levels,
                timesteps=list(timesteps), per_t=out, schedule_per_t=schedule_per_t)


def evaluate_model(name: str, methods, args) -> dict:
    import jax

    import signgd_jax as sg
    from signgd_jax import metrics

    model, variables, calibration, images, labels, trained = load_model(name, args)
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False) if "train" in _params(model) else model.apply(v, x))
    ann_logits = np.concatenate([np.asarray(apply(variables, images[i:i + 250])) for i in range(0, len(images), 250)])
    result = dict(model=name, trained=trained, num_test_images=len(images),
                  ann=dict(accuracy=float(np.mean(ann_logits.argmax(-1) == labels))), methods={})
    conversions = {}
    for method in methods:
        t0 = time.perf_counter()
        key = (method.dynamics, method.dynamics == "ecmt" and method.spike_levels)
        try:
            if key not in conversions:
                conversions[key] = sg.convert(model, variables, calibration, dynamics=method.dynamics,
                                              spike_levels=method.spike_levels if method.dynamics == "ecmt" else None)
            snn = conversions[key].with_spike_levels(method.spike_levels)
        except sg.UnsupportedOperation as e:
            result["methods"][method.label] = dict(supported=False, reason=str(e).splitlines()[0])
            print(f"   {method.label}: n/a", flush=True)
            continue
        row = run_method(snn, method, calibration, images, labels, args.batch_size)
        row.update(supported=True, seconds=round(time.perf_counter() - t0, 1))
        result["methods"][method.label] = row
        print(f"   {method.label}: " + " ".join(f"T={t} {100 * v['accuracy']:.1f}" for t, v in row["per_t"].items())
              + f" ({row['seconds']} s)", flush=True)
    snn = next(iter(conversions.values()), None)
    if snn is not None:
        result["ann"]["energy_uj_per_image"] = metrics.ann_macs(snn, images[:1]) * metrics.ENERGY_PER_MAC_PJ / 1e6
    return result


def _params(model) -> tuple:
    import inspect

    return tuple(inspect.signature(model.__call__).parameters)


# ----------------------------------------------------------------------------- tables and figures
def _evaluation_seconds(summary: dict) -> float:
    return sum(row.get("seconds", 0.0) for r in summary["models"].values() for row in r["methods"].values())


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def within_one_point(row: dict, ann: float):
    """The smallest T at which a method is within one point of its ANN (None: never)."""
    for t, v in sorted(row["per_t"].items(), key=lambda kv: int(kv[0])):
        if v["accuracy"] >= ann - 0.01:
            return int(t)
    return None


def markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = ["# How signGD compares: conversion methods on the same trained weights", "",
             f"Command: `{summary['command']}`", "",
             f"Machine: {m['platform']}, {m['cpu_count']} CPUs, jax {m['jax']} ({m['backend']}). "
             f"Evaluation time {_evaluation_seconds(summary):.0f} s (conversions, tuning and simulations, summed over "
             "models and methods; training not included). Test images: the first "
             + (f"{summary['settings']['limit']} of each test split" if summary['settings']['limit'] else
                "1,000 of mnist5k's test split (digits: 500)")
             + ", the same for every method; calibration: 12 training batches of 250 (digits: 1,250 training images).",
             "", "Test accuracy (%) per time-step T; `bits` = bits a neuron can send per step; the last two "
             "columns: the first T within one point of the ANN and the energy per image there (uJ; 0.9 pJ per "
             "accumulate, 4.6 pJ per multiply-accumulate, arithmetic only).", ""]
    lines += headline_table(summary)
    for name, r in summary["models"].items():
        ts = sorted({int(t) for row in r["methods"].values() if row.get("supported") for t in row["per_t"]})
        lines += [f"## {name} (ANN {_pct(r['ann']['accuracy'])}%, "
                  f"{r['ann'].get('energy_uj_per_image', float('nan')):.3g} uJ per image)", "",
                  "| method | bits | " + " | ".join(f"T={t}" for t in ts) + " | within 1 pt at | energy there |",
                  "|---|---:|" + "---:|" * len(ts) + "---:|---:|"]
        for label, row in r["methods"].items():
            if not row.get("supported"):
                continue
            cells = [_pct(row["per_t"].get(str(t), {}).get("accuracy")) for t in ts]
            first = within_one_point(row, r["ann"]["accuracy"])
            energy = f"{row['per_t'][str(first)]['energy_uj_per_image']:.3g}" if first else ""
            lines.append(f"| {label} | {row['bits_per_neuron_step']:.2f} | " + " | ".join(cells)
                         + f" | {'T=' + str(first) if first else 'no'} | {energy} |")
        refused = [label for label, row in r["methods"].items() if not row.get("supported")]
        if refused:
            lines += ["", f"n/a: {', '.join(refused)}: " + "; ".join(sorted({r['methods'][x]['reason'] for x in refused}))]
        lines.append("")
    lines += equal_bits_table(summary)
    return "\n".join(lines) + "\n"


def headline_table(summary: dict) -> list:
    """Per model and method: the first T within one point of the ANN, with the bits per neuron
    and the energy per image there ('-': not within one point at any T measured)."""
    labels = list(dict.fromkeys(label for r in summary["models"].values() for label, row in r["methods"].items()
                                if row.get("supported")))
    lines = ["## Summary: the first T within one point of the ANN", "",
             "Each cell: T (bits per neuron = T x bits per step; energy per image in uJ). '-': not within one "
             "point at any T measured (graded and `ecmt n=3` rows stop at T=8); blank: the method does not "
             "convert this network.", "",
             "| model | ANN | " + " | ".join(labels) + " |", "|---|---:|" + "---|" * len(labels)]
    for name, r in summary["models"].items():
        cells = []
        for label in labels:
            row = r["methods"].get(label)
            if not row or not row.get("supported"):
                cells.append("")
                continue
            first = within_one_point(row, r["ann"]["accuracy"])
            point = row["per_t"].get(str(first), {})
            cells.append(f"T={first} ({point['bits_per_neuron']:.3g} b; {point['energy_uj_per_image']:.2g})"
                         if first else "-")
        lines.append(f"| {name} | {_pct(r['ann']['accuracy'])} | " + " | ".join(cells) + " |")
    return lines + [""]


def equal_bits_table(summary: dict) -> list:
    """Accuracy at equal bits per neuron (T x bits per step): each method at the largest T whose
    bits do not exceed the budget."""
    budgets = (4, 8, 16)
    lines = ["## At equal bits per neuron", "",
             "Each cell: accuracy (%) at the largest T whose bits per neuron (T x bits per step) fit the budget "
             "(the T in brackets).", "",
             "| model | method | " + " | ".join(f"<= {b} bits" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]
    for name, r in summary["models"].items():
        for label, row in r["methods"].items():
            if not row.get("supported"):
                continue
            cells = []
            for b in budgets:
                fits = [int(t) for t, v in row["per_t"].items() if v["bits_per_neuron"] <= b + 1e-9]
                cells.append(f"{_pct(row['per_t'][str(max(fits))]['accuracy'])} (T={max(fits)})" if fits else "")
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def figures(summary: dict, results_dir: str) -> list:
    import matplotlib

    matplotlib.use("Agg")  # a script, not the library: no display needed
    import matplotlib.pyplot as plt

    names = list(summary["models"])
    palette = matplotlib.colormaps["tab10"].colors + ("k",)
    colors = {m.label: palette[i % len(palette)] for i, m in enumerate(METHODS)}  # one color per method
    cols = 3
    rows = math.ceil(len(names) / cols)
    paths = []
    for kind in ("accuracy", "energy"):
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
        for ax, name in zip(axes.ravel(), names):
            r = summary["models"][name]
            for label, row in r["methods"].items():
                if not row.get("supported"):
                    continue
                ts = sorted(int(t) for t in row["per_t"])
                acc = [100 * row["per_t"][str(t)]["accuracy"] for t in ts]
                x = ts if kind == "accuracy" else [row["per_t"][str(t)]["energy_uj_per_image"] for t in ts]
                ax.plot(x, acc, marker="o", ms=3, label=label, color=colors.get(label, "0.5"),
                        ls="--" if label.startswith(("if", "qcfs", "ecmt")) else "-")
            ann = 100 * r["ann"]["accuracy"]
            ax.axhline(ann, color="k", lw=0.8, ls=":", label="ANN")
            if kind == "energy" and "energy_uj_per_image" in r["ann"]:
                ax.axvline(r["ann"]["energy_uj_per_image"], color="k", lw=0.8, ls="-.", label="ANN energy")
            ax.set_xscale("log", base=2 if kind == "accuracy" else 10)
            ax.set_ylim(max(0, ann - 30), min(100, ann + 3))
            ax.set(title=name, xlabel="time-steps T" if kind == "accuracy" else "energy per image (uJ)",
                   ylabel="test accuracy (%)")
            ax.grid(alpha=0.3)
        for ax in axes.ravel()[len(names):]:
            ax.axis("off")
        legend = {}
        for ax in axes.ravel():
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=6, fontsize=8)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        path = os.path.join(results_dir, f"comparison_{kind}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    from signgd_jax.commands.common import atomic_outputs, write_json, write_text
    from signgd_jax.commands.evaluate import machine_info

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    labels = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [n for n in names if n not in MODELS] + [m for m in labels if m not in {x.label for x in METHODS}]
    if unknown or not names or not labels:
        print(f"error: unknown or empty --models/--methods: {unknown or 'empty'}; models: {', '.join(MODELS)}; "
              f"methods: {', '.join(m.label for m in METHODS)}", file=sys.stderr)
        return 2
    methods = [m for m in METHODS if m.label in labels]
    t0 = time.perf_counter()
    settings = dict(epochs=args.epochs, limit=args.limit, methods=labels, qcfs_levels=QCFS_LEVELS,
                    tuning=dict(eta0=TUNE_ETA0, decay=TUNE_DECAY, images=TUNE_IMAGES))
    summary = dict(command=" ".join(["python scripts/compare_methods.py", shlex.join(argv)]).rstrip(),
                   machine=machine_info(), settings=settings, models={})
    for name in names:
        path = os.path.join(args.runs_dir, name, "comparison.json")
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            if saved.get("settings") == json.loads(json.dumps(settings)):  # as it reads back from JSON
                print(f"== {name}: reusing {path}", flush=True)
                summary["models"][name] = saved["result"]
                continue
        print(f"== {name}", flush=True)
        result = evaluate_model(name, methods, args)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, dict(settings=settings, result=result))
        summary["models"][name] = result
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    os.makedirs(args.results_dir, exist_ok=True)
    md_path = os.path.join(args.results_dir, "comparison.md")
    json_path = os.path.join(args.results_dir, "comparison.json")
    text = markdown(summary)
    with atomic_outputs([md_path, json_path]) as (md_tmp, json_tmp):
        write_text(md_tmp, text)
        write_json(json_tmp, summary)
    pngs = figures(summary, args.results_dir)
    print(text)
    print(f"wrote {md_path}, {json_path}, {', '.join(pngs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
