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
        else:
            rows.append([name, *["n/a"] * len(ts)])
            notes.append(f"n/a: {name}: {r['reason']}")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    title = (f"accuracy (%) of {results['model']} on {results['dataset']}, {results['num_test_images']} test "
             f"images (the ANN row repeats the ANN's accuracy for reference)")
    return "\n".join([title, *lines, *notes])


def accuracy_figure(results: dict):
    """A matplotlib Figure (Agg, no pyplot state): accuracy % against log2 time-steps."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ts = [int(t) for t in results["timesteps"]]
    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    ax = fig.subplots()
    for name, r in results["dynamics"].items():
        if r["supported"]:
            ax.plot(ts, [100 * r["accuracy"][str(t)] for t in ts], marker="o", label=name)
        else:
            ax.plot([], [], linestyle="none", label=f"{name}: n/a")
    ax.axhline(100 * results["ann"]["accuracy"], color="black", linestyle="--", linewidth=1,
               label=f"ANN ({percent(results['ann']['accuracy'])}%)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts)
    ax.set_xticklabels([str(t) for t in ts])
    ax.set_xlabel("time-steps T")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{results['model']} on {results['dataset']} ({results['num_test_images']} test images)")
    ax.legend(loc="lower right")
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
