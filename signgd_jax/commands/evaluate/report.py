"""The accuracy table, the accuracy-vs-time-steps plot, and writing them atomically."""
from __future__ import annotations

import os
from typing import Optional, Sequence

from signgd_jax.commands.common import atomic_outputs, write_json, writing
from signgd_jax.commands.evaluate.progress import clear_progress

RESULTS_FILE = "results.json"
PLOT_FILE = "accuracy_vs_timesteps.png"


def percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def accuracy_table(results: dict, timesteps: Optional[Sequence[int]] = None) -> str:
    """Plain-text table: the ANN row first, then one row per dynamics, accuracy in % per T.

    Unsupported dynamics show ``n/a`` with the reason once below the table.
    """
    ts = [int(t) for t in (timesteps or results["timesteps"])]
    header = ["", *[f"T={t}" for t in ts]]
    rows = [["ANN", *[percent(results["ann"]["accuracy"])] * len(ts)]]
    notes = []
    for name, r in results["dynamics"].items():
        if r["supported"]:
            rows.append([name, *[percent(r["accuracy"].get(str(t))) for t in ts]])
            if r.get("schedule_per_t"):
                notes.append(f"{name}: schedule per T (eta0, gamma): " + ", ".join(
                    f"T={t} ({c['eta0']:g}, {c['gamma']:.4f})" for t, c in r["schedule_per_t"].items()))
        else:
            rows.append([name, *["n/a"] * len(ts)])
            notes.append(f"n/a: {name}: {r['reason']}")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    title = (f"accuracy (%) of {results['model']} on {results['dataset']}, {results['num_test_images']} test "
             f"images (the ANN row repeats the ANN's accuracy for reference)")
    return "\n".join([title, *_accuracy_over(results), *lines, *notes])


def _accuracy_over(results: dict) -> list[str]:
    """The line saying which outputs the accuracy is taken over, when not all of them."""
    return [f"accuracy over {results['accuracy_over']}"] if results.get("accuracy_over") else []


_MARKERS = {"paper": "o", "improved": "s", "if": "^"}


def accuracy_figure(results: dict):
    """A matplotlib Figure (Agg, no pyplot state) of 12 x 5 in at 120 dpi (1440 x 600 px), two
    panels over the time-steps T (log2 axis). Left: test accuracy (%) per dynamics, the ANN's
    dashed. Right: the gap to the ANN, ``ANN - SNN`` in percentage points, on a symmetric log
    scale (linear within one test image, ``100 / N`` points, logarithmic beyond), so dynamics that
    both look converged on the left stay apart; a gap below 0 means the SNN beats the ANN.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ts = [int(t) for t in results["timesteps"]]
    ann = 100 * results["ann"]["accuracy"]
    one_image = 100 / max(int(results["num_test_images"]), 1)
    fig = Figure(figsize=(12, 5), dpi=120)
    acc_ax, gap_ax = fig.subplots(1, 2)
    gaps = [0.0]
    for name, r in results["dynamics"].items():
        style = dict(marker=_MARKERS.get(name, "D"), label=name)
        if r["supported"]:
            acc = [100 * r["accuracy"][str(t)] for t in ts]
            line, = acc_ax.plot(ts, acc, **style)
            gap = [ann - a for a in acc]
            gap_ax.plot(ts, gap, color=line.get_color(), **style)
            gaps += gap
        else:
            acc_ax.plot([], [], linestyle="none", label=f"{name}: n/a")
    ann_label = f"ANN ({percent(results['ann']['accuracy'])}%)"
    acc_ax.axhline(ann, color="black", linestyle="--", linewidth=1, label=ann_label)
    gap_ax.axhline(0, color="black", linestyle="--", linewidth=1, label=f"{ann_label}: no gap")
    gap_ax.set_yscale("symlog", linthresh=one_image)
    gap_ax.set_ylim(min(gaps) * 1.5 - 0.2 * one_image, max(max(gaps) * 1.5, one_image))
    for ax in (acc_ax, gap_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ts)
        ax.set_xticklabels([str(t) for t in ts])
        ax.set_xlabel("time-steps T")
        ax.grid(True, which="both", alpha=0.3)
    acc_ax.set_ylabel("test accuracy (%)")
    acc_ax.set_ylim(0, 100)
    acc_ax.set_title("accuracy")
    acc_ax.legend(loc="lower right")
    gap_ax.set_ylabel("ANN - SNN accuracy (percentage points)")
    gap_ax.set_title(f"gap to the ANN (log scale beyond one test image = {one_image:.2g} points)")
    gap_ax.legend(loc="upper right")
    fig.suptitle(f"{results['model']} on {results['dataset']}: ANN vs SNN, "
                 f"{results['num_test_images']} test images")
    fig.tight_layout()
    return fig


def write_results(results: dict, out_dir: str) -> tuple[str, str]:
    """``out_dir/results.json`` and ``out_dir/accuracy_vs_timesteps.png``, atomically; then the
    evaluation's saved progress (:mod:`~signgd_jax.commands.evaluate.progress`) is no longer needed and is removed."""
    paths = [os.path.join(out_dir, RESULTS_FILE), os.path.join(out_dir, PLOT_FILE)]
    with writing(f"the results into {out_dir}"), atomic_outputs(paths) as (json_tmp, png_tmp):
        write_json(json_tmp, results)
        accuracy_figure(results).savefig(png_tmp, format="png")
    clear_progress(out_dir)
    return paths[0], paths[1]


# ----------------------------------------------------------------------------- sweeps and layer errors
SWEEP_FILE = "sweep.json"
LAYER_ERRORS_PLOT = "layer_errors.png"


def sweep_table(results: dict) -> str:
    """Plain-text summary of a sweep: per dynamics and T, the best grid point and its accuracy."""
    sweep = results["sweep"]
    lines = [f"sweep of {results['model']} on {results['dataset']}, {results['num_test_images']} test images: "
             f"{len(sweep['eta0'])} eta0 x {len(sweep['gamma'])} gamma values (ANN "
             f"{percent(results['ann']['accuracy'])}%); best point per T", *_accuracy_over(results)]
    for name, r in sweep["dynamics"].items():
        if not r["supported"]:
            lines.append(f"{name}: n/a ({r['reason']})")
            continue
        for t in results["timesteps"]:
            b = r["best"][str(t)]
            lines.append(f"{name}  T={t}: {percent(b['accuracy'])}% at eta0={b['eta0']:g}, gamma={b['gamma']:g}")
    return "\n".join(lines)


def write_sweep(results: dict, out_dir: str) -> list[str]:
    """``out_dir/sweep.json`` (the results dict with its ``sweep`` entry) and one heatmap per
    swept dynamics and time-step, ``out_dir/sweep_<dynamics>_T<t>.png``
    (:func:`signgd_jax.plots.plot_sweep`), each written atomically; returns the paths."""
    import tempfile

    import numpy as np

    from signgd_jax.plots import plot_sweep

    sweep, paths = results["sweep"], [os.path.join(out_dir, SWEEP_FILE)]
    with writing(f"the sweep into {out_dir}"):
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".sweep_plots.") as tmp:
            made = []
            for name, r in sweep["dynamics"].items():
                if r["supported"]:
                    made += plot_sweep(np.asarray(r["accuracy"]), sweep["eta0"], sweep["gamma"], results["timesteps"],
                                       tmp, title=f"{results['model']} {name}", prefix=f"sweep_{name}")
            with atomic_outputs([paths[0]]) as (json_tmp,):
                write_json(json_tmp, results)
            for path in made:
                target = os.path.join(out_dir, os.path.basename(path))
                os.replace(path, target)
                paths.append(target)
    return paths


def layer_errors_figure(results: dict):
    """A matplotlib Figure: one panel per dynamics, the normalised error of each site's output
    estimate against the ANN (``results['layer_errors']``) over t, log-log; the logits dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib import cm
    from matplotlib.figure import Figure

    from signgd_jax.diagnose import LOGITS

    per_dynamics = results["layer_errors"]
    fig = Figure(figsize=(6.4 * max(1, len(per_dynamics)), 4.8), dpi=110)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(per_dynamics)), squeeze=False)[0])
    for ax, (name, errors) in zip(axes, per_dynamics.items()):
        t = np.asarray(errors["timesteps"], np.float64)
        sites = [s for s in errors["sites"] if s != LOGITS]
        colors = cm.viridis(np.linspace(0, 0.9, max(1, len(sites))))
        for color, site in zip(colors, sites):
            values = np.asarray([np.nan if v is None else v for v in errors["normalised"][site]], np.float64)
            ax.plot(t, np.where(values > 0, values, np.nan), marker="o", ms=3, color=color, label=site)
        if LOGITS in errors["normalised"]:
            values = np.asarray([np.nan if v is None else v for v in errors["normalised"][LOGITS]], np.float64)
            ax.plot(t, np.where(values > 0, values, np.nan), "k--", marker="s", ms=3, label=LOGITS)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("time-step t")
        ax.set_ylabel("mean |u_t - a| / mean |a|")
        ax.set_title(f"{name}: estimate vs ANN ({errors['images']} test images)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2 if len(sites) > 12 else 1, loc="lower left")
    fig.suptitle(f"{results['model']} on {results['dataset']}: error per site")
    fig.tight_layout()
    return fig


def write_layer_errors(results: dict, out_dir: str) -> str:
    """``out_dir/layer_errors.png`` (:func:`layer_errors_figure`), atomically; the numbers are in
    results.json."""
    path = os.path.join(out_dir, LAYER_ERRORS_PLOT)
    with writing(f"the layer errors plot into {out_dir}"), atomic_outputs([path]) as (png_tmp,):
        layer_errors_figure(results).savefig(png_tmp, format="png")
    return path
