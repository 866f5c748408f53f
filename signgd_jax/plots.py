"""Plots: accuracy against time-steps, schedule-sweep heatmaps, per-site errors.

Every function draws on a :class:`matplotlib.figure.Figure` of its own (no pyplot state, no
backend chosen: saving needs none), so it works in scripts, notebooks and tests alike.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from signgd_jax.diagnose import LOGITS, LayerErrors


def _figure(figsize):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot()


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def accuracy_against_timesteps(curves: dict, ann_accuracy: float | None = None, *, ax=None, title: str = ""):
    """One line per entry of ``curves`` (``{label: {T: accuracy}}``, accuracies in [0, 1]) against
    T on a log axis, the ANN as a dotted line; draws on ``ax`` if given; returns the Figure."""
    fig, ax = _figure((6, 4)) if ax is None else (ax.figure, ax)
    for label, points in curves.items():
        ts = sorted(int(t) for t in points)
        ax.plot(ts, [100 * points[t] if t in points else 100 * points[str(t)] for t in ts], marker="o", ms=3,
                label=label)
    if ann_accuracy is not None:
        ax.axhline(100 * ann_accuracy, color="k", ls=":", lw=1, label="ANN")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="time-steps T", ylabel="accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_sweep(accuracy, eta0: Sequence[float], gamma: Sequence[float], timesteps: Sequence[int], out_dir: str,
               *, title: str = "", prefix: str = "sweep") -> list[str]:
    """Writes one heatmap per time-step of a :func:`sweep` grid (accuracy in %, eta0 by gamma)
    to ``out_dir/<prefix>_T<t>.png``; returns the paths."""
    accuracy = np.asarray(accuracy)
    if accuracy.shape != (len(eta0), len(gamma), len(timesteps)):
        raise ValueError(f"accuracy has shape {accuracy.shape}, expected {(len(eta0), len(gamma), len(timesteps))}")
    paths = []
    for k, t in enumerate(timesteps):
        fig, ax = _figure(figsize=(1.2 + 0.55 * len(gamma), 1.2 + 0.45 * len(eta0)))
        image = ax.imshow(100 * accuracy[:, :, k], origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=100)
        ax.set_xticks(range(len(gamma)), [f"{g:g}" for g in gamma], fontsize=7, rotation=45)
        ax.set_yticks(range(len(eta0)), [f"{e:g}" for e in eta0], fontsize=7)
        ax.set_xlabel("gamma")
        ax.set_ylabel("eta0")
        ax.set_title(f"{title} T={t}".strip(), fontsize=9)
        for i in range(len(eta0)):
            for j in range(len(gamma)):
                ax.text(j, i, f"{100 * accuracy[i, j, k]:.1f}", ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(image, ax=ax, label="accuracy (%)")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{prefix}_T{t}.png")
        fig.savefig(path, dpi=110, format="png")
        paths.append(path)
    return paths


def plot_layer_errors(errors: LayerErrors, path: str, *, normalised: bool = True, title: str | None = None) -> str:
    """Writes a log-log plot of the (normalised) error per site over t to ``path`` (PNG); one
    line per site, the logits dashed. Zero errors (not drawable on a log axis) are left out."""
    table = errors.normalised if normalised else errors.absolute
    t = np.asarray(errors.timesteps, np.float64)
    fig, ax = _figure(figsize=(7, 4.5))
    colors = _colormap("viridis")(np.linspace(0, 0.9, max(1, len(table) - 1)))
    for i, (name, values) in enumerate((n, v) for n, v in table.items() if n != LOGITS):
        ax.plot(t, np.where(values > 0, values, np.nan), marker="o", ms=3, color=colors[i], label=name)
    if LOGITS in table:
        ax.plot(t, np.where(table[LOGITS] > 0, table[LOGITS], np.nan), "k--", marker="s", ms=3, label=LOGITS)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time-step t")
    ax.set_ylabel("mean |u_t - a| / mean |a|" if normalised else "mean |u_t - a|")
    ax.set_title(title or "output estimate against the ANN activation, per site")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(table) > 12 else 1, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    return path
