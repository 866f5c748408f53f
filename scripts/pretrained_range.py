"""How far the neuron targets of pretrained-layout models lie outside paper mode's reach.

A paper-mode output estimate starts at 0 and moves at most ``sum(eta_t) = eta0 / (1 - gamma) = 3``
(docs/design.md). Only ReLUs are rescaled by calibration, so a GELU, LayerNorm (its square and
``x1/sqrt(x2)`` neurons) or max-pool neuron whose target ``|phi| > 3`` saturates. This script
loads every zoo fixture (tests/fixtures/zoo: the publishers' checkpoint layouts) with its
deterministic stand-in weights through ``models.from_arrays``, runs the two fixture images, and
reports per site the fraction of targets beyond 3 and the largest ``|phi|``.

The weights are stand-ins (a sine rule, not trained values): the numbers show what the
measurement looks like and bound nothing about real checkpoints; rerun it on real weights
(``--weights``-style loading through ``models.from_checkpoint``) for those.

    python scripts/pretrained_range.py            # writes results/pretrained_range.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from signgd_jax import interpret, kinds, models  # noqa: E402
from test_checkpoints import CASES, FIXTURES, stand_in, stand_in_images  # noqa: E402  (the fixtures' weight rule)

REACH = 3.0  # eta0 / (1 - gamma) with the paper's eta0 = 0.15, gamma = 0.95
MEASURED = {"gelu": "GELU", "square": "LayerNorm square", "rsqrt_mul": "LayerNorm x/sqrt", "maximum": "max-pool"}


def site_ranges(model, variables, x):
    """``[(site name, kind, fraction |phi| > REACH, max |phi|)]`` over the measured kinds."""
    kinds_of = {}

    def kinds_only(name, kind, options, inputs):
        if kind in MEASURED:
            kinds_of[name] = kind
        return kinds.ann_op(kind, options)(*inputs)

    jax.eval_shape(lambda v, x: interpret.evaluate(lambda v, x: model.apply(v, x, train=False), v, x, kinds_only),
                   variables, x)
    values = jax.jit(lambda v, x: _fractions(model, v, x))(variables, x)
    return [(n, kinds_of[n], float(values[n][0]), float(values[n][1])) for n in sorted(kinds_of)]


def _fractions(model, variables, x):
    """``{site name: (fraction |phi| > REACH, max |phi|)}`` (traceable)."""
    out = {}

    def on_site(name, kind, options, inputs):
        if kind in MEASURED:
            phi = jnp.abs(kinds.get(kind).target(*inputs, **dict(options)))
            out[name] = (jnp.mean(phi > REACH), jnp.max(phi))
        return kinds.ann_op(kind, options)(*inputs)

    interpret.evaluate(lambda v, x: model.apply(v, x, train=False), variables, x, on_site)
    return out


def measure_fixture(fixture, keys):
    name, source, layout, _ = CASES[fixture]
    arrays = {k: stand_in(k, shape, layout) for k, shape, _ in keys[fixture]}
    model, variables, _ = models.from_arrays(arrays, name, source, origin=fixture)
    return name, source, site_ranges(model, variables, jnp.asarray(stand_in_images()))


def summary_rows(fixture, name, source, sites):
    rows = []
    for kind, label in MEASURED.items():
        chosen = [s for s in sites if s[1] == kind]
        if not chosen:
            continue
        fractions = np.array([s[2] for s in chosen])
        rows.append(f"| {fixture} | {label} | {len(chosen)} | {int((fractions > 0).sum())} | "
                    f"{fractions.mean():.4f} | {fractions.max():.4f} | {max(s[3] for s in chosen):.3g} |")
    return rows


def report(results, seconds):
    lines = [
        "# Pretrained layouts: neuron targets beyond paper mode's reach (|phi| > 3)",
        "",
        "Made by `python scripts/pretrained_range.py` "
        f"({seconds:.0f} s on this machine's CPU). Each model is built as its publisher's checkpoint layout "
        "(tests/fixtures/zoo) and loaded through `signgd_jax.models.from_arrays`, with the fixtures' "
        "**deterministic stand-in weights** (a sine rule, not trained values) and the two fixture images. "
        "The numbers show the measurement, not what a real checkpoint does: rerun on real weights for that.",
        "",
        "A paper-mode output estimate starts at 0 and moves at most eta0/(1-gamma) = 3, and only ReLUs are "
        "rescaled by calibration, so GELU, LayerNorm (square and x/sqrt neurons) and max-pool neurons saturate "
        "where their target |phi| exceeds 3 (GELU's phi is the neuron's x*sigmoid(1.702x)). Improved mode "
        "represents every site as offset + range * v with calibrated offset and range, so no target is out of "
        "reach there.",
        "",
        "Averaged fraction = mean over the sites of that kind of the fraction of their targets (all positions, "
        "both images) beyond 3; worst site = the largest such fraction.",
        "",
        "| model (layout) | neurons | sites | sites with any | mean fraction | worst site | max abs(phi) |",
        "|---|---|---|---|---|---|---|",
    ]
    for fixture, (name, source, sites) in results.items():
        lines += summary_rows(fixture, name, source, sites)
    lines += ["", "## Per site", ""]
    for fixture, (name, source, sites) in results.items():
        lines += [f"### {fixture} ({name}, {source} layout)", "", "| site | neuron | fraction > 3 | max abs(phi) |",
                  "|---|---|---|---|"]
        lines += [f"| {site.partition('_')[0]} | {MEASURED[kind]} | {frac:.4f} | {peak:.3g} |"
                  for site, kind, frac, peak in sites]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "pretrained_range.md"))
    parser.add_argument("--models", default=",".join(CASES), help="comma-separated fixture names")
    args = parser.parse_args(argv)

    keys = json.loads((FIXTURES / "keys.json").read_text())
    start, results = time.time(), {}
    for fixture in args.models.split(","):
        results[fixture] = measure_fixture(fixture, keys)
        print(f"{fixture}: {len(results[fixture][2])} sites, {time.time() - start:.0f} s", flush=True)
    Path(args.out).write_text(report(results, time.time() - start) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
