"""The low-T table: improved-mode accuracy per model and T, one row per step of this work.

    PYTHONPATH=. python scripts/low_t_table.py --run "before=results/low_t/before.json" \\
        --run "LayerNorm vector neuron=results/low_t/vector_layer_norm.json" \\
        --run "+ schedule per T=results/low_t/schedule_auto.json" --out results/low_t.md

Each ``--run LABEL=FILE[,FILE...]`` names ``five_architectures.json`` (``scripts/five_architectures.py``
writes one per run) or ``results.json`` files of ``python -m convert``; their improved-mode
accuracy per T becomes one row per model, under the model's ANN accuracy. Cells within one point of the
ANN are marked with ``*``.
"""
from __future__ import annotations

import argparse
import json


def _models(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    return data["models"] if "models" in data else {data["model"]: data}


def table(runs: list[tuple[str, dict]], timesteps: list[int], dynamics: str = "improved") -> str:
    names = list(dict.fromkeys(name for _, models in runs for name in models))
    lines = ["| model | ANN | run | " + " | ".join(f"T={t}" for t in timesteps) + " |",
             "|---|---:|---|" + "---:|" * len(timesteps)]
    for name in names:
        ann = next(models[name]["ann"]["accuracy"] for _, models in runs if name in models)
        first = True
        for label, models in runs:
            if name not in models:
                continue
            r = models[name]["dynamics"].get(dynamics)
            cells = []
            for t in timesteps:
                value = None if not r or not r.get("supported") else r["accuracy"].get(str(t))
                cells.append("n/a" if value is None else
                             f"{100 * value:.1f}" + ("*" if 100 * (ann - value) <= 1.0 + 1e-9 else ""))
            lines.append(f"| {name if first else ''} | {f'{100 * ann:.1f}' if first else ''} | {label} | "
                         + " | ".join(cells) + " |")
            first = False
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/low_t_table.py", description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=FILE")
    p.add_argument("--timesteps", default="4,8,16,32,64")
    p.add_argument("--out", default=None, help="write the table here (default: print it)")
    args = p.parse_args(argv)
    runs = []
    for item in args.run:
        label, _, paths = item.partition("=")
        models = {}
        for path in paths.split(","):
            models.update(_models(path))
        runs.append((label, models))
    text = table(runs, [int(t) for t in args.timesteps.split(",")])
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
