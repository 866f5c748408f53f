#!/usr/bin/env bash
# The README's first command: set up, train the small ConvNeXt on the embedded mnist5k
# digits, convert it with signGD (paper and improved) and the integrate-and-fire baseline,
# print accuracy per time-step and save the plot. Rerunning resumes or reuses what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(command -v python3.11 || command -v python3)
WORKDIR=${WORKDIR:-runs/quickstart}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e .
# convnext_mini's own recipe (AdamW lr 0.003, weight decay 0.05, shifted digits; `--help` lists
# the recipes; --optimizer, --lr, ... override them)
.venv/bin/python -m train --model convnext_mini --dataset mnist5k --workdir "$WORKDIR" --epochs 25
.venv/bin/python -m convert --workdir "$WORKDIR" --timesteps 1,2,4,8,16,32,64,128 \
  --dynamics paper,improved,if
echo "plot: $WORKDIR/accuracy_vs_timesteps.png, numbers: $WORKDIR/results.json"
