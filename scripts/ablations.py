"""The paper's kinds of ablation on one trained small model: schedule, codec, calibration data,
and the integrate-and-fire baseline, with signgd_jax.sweep for the step-size grids.

    PYTHONPATH=. python scripts/ablations.py --workdir runs/vgg_mini               # the full run
    PYTHONPATH=. python scripts/ablations.py --workdir runs/vgg_mini --limit 50 \\
        --timesteps 4,16 --eta0 0.1,0.2 --gamma 0.9,0.95 --calibration-batches 1,2 \\
        --out-dir /tmp/ablations                                                 # a smoke run

The workdir is one ``python -m train`` wrote (e.g. by ``scripts/five_architectures.py``). Every
table is test accuracy (%) on the first ``--limit`` test images, per time-step:

* schedule: exponential ``eta0 gamma**(t-1)`` over the ``--eta0`` x ``--gamma`` grid, constant
  ``eta0`` and inverse ``eta0/t`` over their eta0 grids (one compiled sweep each); the tables show
  the default point and, per T, the best grid point (chosen on the test images themselves: an upper
  bound of what a tuned schedule buys); a heatmap of the exponential grid per T;
* codec: float, spike, stochastic;
* calibration: the ReLU maxima (paper mode) and ranges (improved mode) from 1, 10, 100 batches of
  ``--calibration-batch-size`` random training images (the paper calibrates on 100 batches);
* the integrate-and-fire baseline (ReLU networks; n/a otherwise);
* where accuracy is lost: each site's normalised error against the ANN (``signgd_jax.layer_errors``);
* the compiled grid against a loop of separate ``simulate`` runs (seconds, after compilation);
* the A(0)/A(1) offset correction on and off (``simulate(..., offset_correction=False)``: every
  input estimate integrates the raw affine response ``A(2 s_t - 1)`` of the signed spikes).

Written to ``<out-dir>/ablations.json`` with the plots beside it, and the report to ``--markdown``
(default ``<out-dir>/ablations.md``). ``--sections`` runs only some of the tables, e.g.

    PYTHONPATH=. python scripts/ablations.py --workdir runs/vgg_mini --sections offset

and then updates only those entries of an existing ``<out-dir>/ablations.json`` (each with the
model, test images and command it was made with) and writes the report only where ``--markdown``
is given (it is printed either way), so a full report is not overwritten by a part.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import jax  # noqa: E402
import numpy as np  # noqa: E402

import signgd_jax as sg  # noqa: E402
from signgd_jax import workdir  # noqa: E402
from signgd_jax.convert import as_apply_fn  # noqa: E402


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


SECTIONS = ("schedule", "layer_errors", "codec", "calibration", "if", "benchmark", "offset")


def _sections(text: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in chosen if v not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(SECTIONS)}")
    return chosen


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/ablations.py", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--workdir", required=True, help="a trained workdir (python -m train)")
    a("--out-dir", default="results/ablations", help="where ablations.json and the plots go")
    a("--markdown", default=None, help="the report (default <out-dir>/ablations.md; its plot links are "
      "relative to it)")
    a("--limit", type=int, default=1000, help="test images (default 1000)")
    a("--timesteps", default="4,8,16,32,64", help="time-steps (default 4,8,16,32,64)")
    a("--dynamics", default="paper,improved", help="signGD modes to ablate (default paper,improved)")
    a("--eta0", default="0.05,0.1,0.15,0.2,0.3", help="eta0 grid of the exponential schedule")
    a("--gamma", default="0.9,0.93,0.95,0.97,0.99", help="gamma grid of the exponential schedule")
    a("--constant-eta0", default="0.01,0.02,0.05,0.1", help="eta0 grid of the constant schedule")
    a("--inverse-eta0", default="0.25,0.5,1,2", help="eta0 grid of the inverse schedule")
    a("--calibration-batches", default="1,10,100", help="calibration batch counts (default 1,10,100)")
    a("--calibration-batch-size", type=int, default=32)
    a("--default-calibration-batches", type=int, default=12, help="as python -m convert (default 12)")
    a("--batch-size", type=int, default=250, help="test images per simulate call")
    a("--benchmark", action=argparse.BooleanOptionalAction, default=True,
      help="time the compiled grid against a loop of separate simulate runs")
    a("--sections", type=_sections, default=SECTIONS, help=f"comma-separated tables to run (default all: "
      f"{','.join(SECTIONS)}); a part updates only its entries of an existing ablations.json")
    return p


def pct(values) -> list[float]:
    return [round(100 * float(v), 2) for v in values]


def table(title: str, timesteps, rows: dict, ann: float | None, fmt: str = "{:.2f}") -> str:
    """A markdown table, one row per entry of ``rows`` (None: n/a), after an ANN row (unless None)."""
    out = [f"| {title} | " + " | ".join(f"T={t}" for t in timesteps) + " |", "|---|" + "---:|" * len(timesteps)]
    if ann is not None:
        out.append("| ANN | " + " | ".join(f"{ann:.2f}" for _ in timesteps) + " |")
    for name, values in rows.items():
        cells = ["n/a"] * len(timesteps) if values is None else [fmt.format(v) for v in values]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def heatmaps(grid: np.ndarray, eta0s, gammas, timesteps, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(timesteps), figsize=(3.2 * len(timesteps), 3.2), squeeze=False)
    for k, (ax, t) in enumerate(zip(axes[0], timesteps)):
        im = ax.imshow(100 * grid[:, :, k], origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=100)
        ax.set_xticks(range(len(gammas)), [f"{g:g}" for g in gammas], fontsize=7)
        ax.set_yticks(range(len(eta0s)), [f"{e:g}" for e in eta0s], fontsize=7)
        ax.set_xlabel("gamma")
        ax.set_ylabel("eta0") if k == 0 else None
        ax.set_title(f"T={t}", fontsize=9)
        for i in range(len(eta0s)):
            for j in range(len(gammas)):
                ax.text(j, i, f"{100 * grid[i, j, k]:.0f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy (%)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lines(rows: dict, timesteps, ann: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in rows.items():
        if values is not None:
            ax.plot(timesteps, values, marker="o", ms=3, label=name)
    ax.axhline(ann, color="k", ls="--", lw=1, label="ANN")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("time-steps T")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def offset_table(snn, batches, timesteps, ann_logits) -> dict:
    """Accuracy (%) and mean |y_T - ANN logits| / mean |ANN logits| per T, offset correction on and off."""
    out = {}
    for label, correction in (("on (default)", True), ("off", False)):
        logits = np.concatenate([np.asarray(sg.simulate(snn, x, timesteps, offset_correction=correction))
                                 for x, _ in batches], axis=1)
        labels = np.concatenate([y for _, y in batches])
        error = np.abs(logits - ann_logits[None]).mean(axis=(1, 2)) / np.abs(ann_logits).mean()
        out[label] = dict(accuracy=pct((logits.argmax(-1) == labels[None]).mean(1)),
                          logit_error=[round(float(e), 4) for e in error])
    return out


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    sections = args.sections
    partial = set(sections) != set(SECTIONS)
    t_start = time.perf_counter()
    timesteps = tuple(sorted(set(_ints(args.timesteps))))
    modes = [m.strip() for m in args.dynamics.split(",") if m.strip()]
    os.makedirs(args.out_dir, exist_ok=True)

    model, variables, config = workdir.load(args.workdir)
    train_ds, test_ds = workdir.splits(*workdir.trained_on(config))
    test_ds = test_ds.take(args.limit)
    images, labels = test_ds.get(np.arange(len(test_ds)))
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    batches = [(images[i:i + args.batch_size], labels[i:i + args.batch_size])
               for i in range(0, len(images), args.batch_size)]
    apply_fn = as_apply_fn(model)
    forward = jax.jit(apply_fn)
    ann_logits = np.concatenate([np.asarray(forward(variables, x)) for x, _ in batches]).astype(np.float64)
    ann = 100 * float(np.mean(ann_logits.argmax(-1) == labels))
    most = max(_ints(args.calibration_batches) * ("calibration" in sections) + [args.default_calibration_batches])
    calibration = workdir.calibration_batches(train_ds, args.calibration_batch_size, most)
    default_calibration = calibration[:args.default_calibration_batches]
    print(f"{config['model']}: ANN {ann:.2f}% on {len(images)} test images; "
          f"{len(calibration)} calibration batches of {args.calibration_batch_size}", flush=True)

    def accuracy(snn, **kw):
        return pct(sg.sweep(snn, batches, timesteps=timesteps, **kw)[0, 0])

    command = "PYTHONPATH=. python scripts/ablations.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = dict(model=config["model"], dataset=config.get("dataset"), workdir=os.path.abspath(args.workdir),
                  num_test_images=len(images), timesteps=list(timesteps), ann=ann, settings=vars(args),
                  machine=dict(backend=jax.default_backend(), devices=jax.device_count(), cpus=os.cpu_count()),
                  schedule={}, codec={}, calibration={}, integrate_and_fire=None, benchmark=None)
    md = [f"# Ablations: {config['model']} on {config.get('dataset')}", "",
          f"Test accuracy (%) on the first {len(images)} test images; ANN {ann:.2f}%. Made by",
          "", "```", command, "```", ""]
    eta0s, gammas = _floats(args.eta0), _floats(args.gamma)
    default_rows = {}  # the default schedule's accuracy per mode (for the baseline's table)
    offsets = {}
    for mode in modes:
        t0 = time.perf_counter()
        snn = sg.convert(model, variables, default_calibration, dynamics=mode)
        if "schedule" in sections:
            rows, grids = {}, {}
            # the schedule does not enter the conversion (calibration and probe): swap it in
            exponential = sg.sweep(snn, batches, eta0=eta0s, gamma=gammas, timesteps=timesteps)
            grids["exponential"] = exponential
            rows["exponential 0.15, 0.95 (default)"] = default_rows[mode] = accuracy(snn)
            rows["exponential, best of grid per T"] = pct(exponential.reshape(-1, len(timesteps)).max(0))
            for kind, values in (("constant", _floats(args.constant_eta0)), ("inverse", _floats(args.inverse_eta0))):
                other = snn.replace(schedule=sg.make_schedule(kind, values[0]))
                grid = sg.sweep(other, batches, eta0=values, timesteps=timesteps)
                grids[kind] = grid
                best = grid[:, 0].argmax(0)
                rows[f"{kind}, best of eta0 in {values} per T"] = pct(grid[:, 0].max(0))
                rows[f"{kind}, its eta0 per T"] = [values[i] for i in best]
            heatmaps(exponential, eta0s, gammas, timesteps, os.path.join(args.out_dir, f"schedule_grid_{mode}.png"),
                     f"{config['model']}, {mode}: accuracy over eta0 x gamma")
            lines({k: v for k, v in rows.items() if "its eta0" not in k}, timesteps, ann,
                  os.path.join(args.out_dir, f"schedule_{mode}.png"), f"{config['model']}, {mode}: schedules")
            report["schedule"][mode] = dict(rows=rows, grids={k: (100 * g).round(2).tolist() for k, g in grids.items()},
                                            eta0=eta0s, gamma=gammas)
            md += [f"## Schedule ({mode} mode)", "", table("schedule", timesteps, {k: v for k, v in rows.items()
                                                                                   if "its eta0" not in k}, ann), "",
                   "eta0 chosen per T: " + "; ".join(f"{k.split(',')[0]}: {v}" for k, v in rows.items()
                                                     if "its eta0" in k),
                   "", f"![grid](schedule_grid_{mode}.png) ![lines](schedule_{mode}.png)", ""]
        if "layer_errors" in sections:
            errors = sg.layer_errors(snn, batches[0][0], timesteps)
            sg.plot_layer_errors(errors, os.path.join(args.out_dir, f"layer_errors_{mode}.png"),
                                 title=f"{config['model']}, {mode}: mean |u_t - a| / mean |a| per site")
            report.setdefault("layer_errors", {})[mode] = {k: v.round(5).tolist() for k, v in errors.normalised.items()}
            md += [f"## Where accuracy is lost ({mode} mode, default schedule, {len(batches[0][0])} images)", "",
                   "Normalised error `mean |u_t - a| / mean |a|` of each site's output estimate against the ANN "
                   "activation (`signgd_jax.layer_errors`):", "",
                   table("site", timesteps, errors.normalised, None, "{:.3g}"),
                   "", f"![layer errors](layer_errors_{mode}.png)", ""]
        if "codec" in sections:
            codecs = {codec: accuracy(snn.replace(codec=codec)) for codec in sg.dynamics.CODECS}
            report["codec"][mode] = codecs
            lines(codecs, timesteps, ann, os.path.join(args.out_dir, f"codec_{mode}.png"), f"{mode}: codecs")
            md += [f"## Codec ({mode} mode)", "", table("codec", timesteps, codecs, ann), "",
                   f"![codec](codec_{mode}.png)", ""]
        if "calibration" in sections:
            calib = {}
            for count in _ints(args.calibration_batches):
                calib[f"{count} batch(es)"] = accuracy(sg.convert(model, variables, calibration[:count], dynamics=mode))
            report["calibration"][mode] = calib
            lines(calib, timesteps, ann, os.path.join(args.out_dir, f"calibration_{mode}.png"),
                  f"{mode}: calibration batches of {args.calibration_batch_size}")
            md += [f"## Calibration data ({mode} mode, batches of {args.calibration_batch_size} training images)", "",
                   table("calibration", timesteps, calib, ann), "", f"![calibration](calibration_{mode}.png)", ""]
        if "offset" in sections:
            offsets[mode] = offset_table(snn, batches, timesteps, ann_logits)
        print(f"{mode}: {time.perf_counter() - t0:.0f} s", flush=True)

    if "if" in sections:
        try:
            baseline, reason = accuracy(sg.convert(model, variables, default_calibration, dynamics="if")), None
        except sg.UnsupportedOperation as e:
            baseline, reason = None, " ".join(str(e).split())
        report["integrate_and_fire"] = dict(accuracy=baseline, reason=reason)
        for m in modes:
            if m not in default_rows:
                default_rows[m] = accuracy(sg.convert(model, variables, default_calibration, dynamics=m))
        md += ["## Integrate-and-fire baseline", "",
               table("dynamics", timesteps, {"if (rate coding)": baseline,
                                             **{f"{m}, default schedule": default_rows[m] for m in modes}}, ann), ""]
        if reason:
            md += [f"n/a: {reason}", ""]

    if "benchmark" in sections and args.benchmark and modes:
        snn = sg.convert(model, variables, default_calibration, dynamics=modes[0])
        x, y = batches[0]
        kw = dict(eta0=eta0s, gamma=gammas, timesteps=timesteps)
        sg.sweep(snn, [(x, y)], **kw)  # compile
        t0 = time.perf_counter()
        sg.sweep(snn, [(x, y)], **kw)
        grid_s = time.perf_counter() - t0
        for e in eta0s[:1]:
            for g in gammas[:1]:
                np.asarray(sg.simulate(snn.with_schedule(eta0=e, gamma=g), x, timesteps))  # compile
        t0 = time.perf_counter()
        for e in eta0s:
            for g in gammas:
                np.asarray(sg.simulate(snn.with_schedule(eta0=e, gamma=g), x, timesteps))
        loop_s = time.perf_counter() - t0
        report["benchmark"] = dict(points=len(eta0s) * len(gammas), images=len(x), num_steps=max(timesteps),
                                   grid_s=round(grid_s, 3), loop_s=round(loop_s, 3), mode=modes[0])
        md += ["## Compiled grid against separate runs", "",
               f"{len(eta0s) * len(gammas)} (eta0, gamma) points, {len(x)} images, T={max(timesteps)}, "
               f"{modes[0]} mode, compiled, on {jax.device_count()} {jax.default_backend()} device(s) "
               f"({os.cpu_count()} CPUs): `sweep` {grid_s:.2f} s, a loop of `simulate` calls {loop_s:.2f} s "
               f"({loop_s / grid_s:.2f}x).", ""]

    if "offset" in sections:
        report["offset_correction"] = dict(model=config["model"], workdir=args.workdir,
                                           num_test_images=len(images), timesteps=list(timesteps), ann=ann,
                                           command=command, modes=offsets)
        md += ["## Offset correction on and off (default schedule, float codec)", "",
               "`simulate(..., offset_correction=False)`: every neuron input and the logits integrate the raw "
               "affine response of the signed spikes, `x_t = x_{t-1} - eta_t A(2 s_t - 1)`, i.e. "
               "`x_t = A(v_t) - S_t A(0)` with `S_t = eta_1 + ... + eta_t`, instead of "
               "`x_t = x_{t-1} - eta_t (2 A(s_t) - A(1) - A(0))`.", "",
               table("accuracy (%)", timesteps, {f"{m}, correction {k}": v["accuracy"]
                                                 for m, rows in offsets.items() for k, v in rows.items()}, ann), "",
               "Logit error `mean |y_T - ANN logits| / mean |ANN logits|`:", "",
               table("logit error", timesteps, {f"{m}, correction {k}": v["logit_error"]
                                                for m, rows in offsets.items() for k, v in rows.items()},
                     None, "{:.3g}"), ""]

    report["total_s"] = round(time.perf_counter() - t_start, 1)
    md += [f"Total time {report['total_s']:.0f} s."]
    json_path = os.path.join(args.out_dir, "ablations.json")
    if partial:  # update only this run's entries of an existing report
        entries = {"schedule": ["schedule"], "layer_errors": ["layer_errors"], "codec": ["codec"],
                   "calibration": ["calibration"], "if": ["integrate_and_fire"], "benchmark": ["benchmark"],
                   "offset": ["offset_correction"]}
        previous = {}
        if os.path.exists(json_path):
            with open(json_path) as f:
                previous = json.load(f)
        if previous:
            for section in sections:
                for key in entries[section]:
                    if key in report:
                        previous[key] = report[key]
            report = previous
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    text = "\n".join(md) + "\n"
    markdown_path = args.markdown or (None if partial else os.path.join(args.out_dir, "ablations.md"))
    if markdown_path:
        plots = os.path.relpath(args.out_dir, os.path.dirname(os.path.abspath(markdown_path)))
        if plots != ".":
            text = re.sub(r"\]\(([\w.]+\.png)\)", lambda m: f"]({plots}/{m.group(1)})", text)
        with open(markdown_path, "w") as f:
            f.write(text)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
