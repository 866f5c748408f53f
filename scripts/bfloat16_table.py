"""bfloat16 simulation next to float32 on the five-architecture models.

    PYTHONPATH=. python scripts/bfloat16_table.py [--runs-dir runs] [--results-dir results]

Needs the workdirs of ``scripts/five_architectures.py`` (its float32 accuracies are read from
``<results-dir>/five_architectures.json``). Each workdir is copied, so its own results.json is
kept, and converted with ``python -m convert ... --dtype bfloat16``; the table goes to
``<results-dir>/bfloat16.md``, each model's results to ``<results-dir>/bfloat16/MODEL.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

TIMESTEPS = (8, 16, 32, 64, 128)
DYNAMICS = ("paper", "improved")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    import jax

    from signgd_jax.commands.evaluate import percent
    from signgd_jax.commands.evaluate.cli import main as convert_main

    with open(os.path.join(args.results_dir, "five_architectures.json")) as f:
        float32 = json.load(f)["models"]
    os.makedirs(os.path.join(args.results_dir, "bfloat16"), exist_ok=True)
    lines = ["# bfloat16 simulation: accuracy effect on the five-model table (mnist5k, 1,000 test images)", "",
             "Command: `PYTHONPATH=. python scripts/bfloat16_table.py`, which runs, on a copy of each workdir "
             "trained by `scripts/five_architectures.py`:",
             f"`python -m convert --workdir runs/MODEL --timesteps {','.join(map(str, TIMESTEPS))} "
             f"--dynamics {','.join(DYNAMICS)} --dtype bfloat16`",
             f"({os.cpu_count()}-core CPU, {platform.platform()}, jax {jax.__version__}). float32 numbers: "
             "`five_architectures.json`; bfloat16: `bfloat16/MODEL.json`.", "",
             "| model | dynamics | dtype | " + " | ".join(f"T={t}" for t in TIMESTEPS) + " |",
             "|---|---|---|" + "---:|" * len(TIMESTEPS)]
    for name, full in float32.items():
        with tempfile.TemporaryDirectory() as tmp:
            workdir = os.path.join(tmp, name)
            shutil.copytree(os.path.join(args.runs_dir, name), workdir, ignore=shutil.ignore_patterns(".lock"))
            code = convert_main(["--workdir", workdir, "--timesteps", ",".join(map(str, TIMESTEPS)),
                                 "--dynamics", ",".join(DYNAMICS), "--dtype", "bfloat16", "--no-progress"])
            if code:
                return code
            shutil.copy(os.path.join(workdir, "results.json"), os.path.join(args.results_dir, "bfloat16", f"{name}.json"))
            with open(os.path.join(workdir, "results.json")) as f:
                half = json.load(f)
        for dyn in DYNAMICS:
            for label, r in (("float32", full), ("bfloat16", half)):
                acc = r["dynamics"][dyn]["accuracy"]
                head = f"| {name} | {dyn} |" if label == "float32" else "|  |  |"
                lines.append(f"{head} {label} | " + " | ".join(percent(acc.get(str(t))) for t in TIMESTEPS) + " |")
    with open(os.path.join(args.results_dir, "bfloat16.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
