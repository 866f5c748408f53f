"""Why the QCFS rows of results/comparison.md reach their ANN late: the two limits of a QCFS SNN.

    PYTHONPATH=. python scripts/qcfs_limits.py            # after scripts/compare_methods.py

A QCFS SNN (integrate-and-fire, membrane 1/2, reset by subtraction) has two reference networks:

* at T = L with evenly spread spikes it would equal the trained ANN (the quantised activation
  ``clip(floor(z L + 1/2) / L, 0, 1)``, one count per step);
* as T grows, every rate tends to ``clip(z, 0, 1)``: the SNN converges to the *clip network*,
  the ANN with each QCFS activation replaced by clipping (tests/test_methods.py checks this).

For the QCFS-trained models of compare_methods.py (same workdirs, the same first 500 test images,
the same calibration batches) this prints and writes ``results/qcfs_limits.{md,json}``: the
trained ANN, the clip network, the ANN requantised at L' = T (what an SNN with perfectly even
spikes would compute at T steps) and the SNN at each T.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

MODELS = ("resnet_mini_qcfs", "vgg_mini_qcfs", "digits_cnn_qcfs")
REQUANTISED_T = (1, 2, 4, 8, 16, 32)
SNN_T = (1, 2, 4, 8, 16, 32, 64, 256, 1024)


def qcfs_replaced(rule):
    """An ``on_site`` for :func:`signgd_jax.interpret.evaluate`: each ``qcfs`` site computes
    ``rule(z)``, every other site what the ANN computes."""
    from signgd_jax import interpret

    def on_site(name, kind, options, inputs):
        if kind == "qcfs":
            return rule(inputs[0])
        return interpret.ann_site(name, kind, options, inputs)

    return on_site


def clipped(z):
    import jax.numpy as jnp

    return jnp.clip(z, 0, 1)


def requantised(levels: int):
    import jax.numpy as jnp

    return lambda z: jnp.clip(jnp.floor(z * levels + 0.5) / levels, 0, 1)


def accuracy(apply, variables, images, labels, rule, batch: int = 250) -> float:
    from signgd_jax import interpret

    hits = 0
    for i in range(0, len(images), batch):
        out = interpret.evaluate(apply, variables, images[i:i + batch], qcfs_replaced(rule))
        hits += int(np.sum(np.argmax(np.asarray(out), -1) == labels[i:i + batch]))
    return hits / len(images)


def limits(name: str, args) -> dict:
    import signgd_jax as sg
    from compare_methods import _params, load_model
    from signgd_jax import metrics

    model, variables, calibration, images, labels, _ = load_model(name, args)
    images, labels = images[:args.limit], labels[:args.limit]
    if "train" in _params(model):
        def apply(v, x):
            return model.apply(v, x, train=False)
    else:
        apply = model.apply
    row = dict(model=name, num_test_images=len(images),
               ann=accuracy(apply, variables, images, labels, requantised(8)),
               clip_network=accuracy(apply, variables, images, labels, clipped),
               requantised={t: accuracy(apply, variables, images, labels, requantised(t)) for t in REQUANTISED_T})
    snn = sg.convert(model, variables, calibration, dynamics="qcfs")
    hits = np.zeros(len(SNN_T))
    for i in range(0, len(images), args.batch_size):
        logits = sg.simulate(snn, images[i:i + args.batch_size], SNN_T)
        hits += np.asarray(metrics.accuracy_per_step(logits, labels[i:i + args.batch_size])) * len(logits[0])
    row["snn"] = {t: h / len(images) for t, h in zip(SNN_T, hits)}
    return row


def markdown(rows: list, seconds: float) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["# The two limits of a QCFS SNN", "",
             "From `PYTHONPATH=. python scripts/qcfs_limits.py` on the QCFS-trained models of "
             "`scripts/compare_methods.py` (L = 8; the same workdirs, first 500 test images and calibration). "
             f"{seconds:.0f} s on a 2-core CPU.", "",
             "- **trained ANN**: the network as trained, `clip(floor(8 z + 1/2) / 8, 0, 1)` per activation;",
             "- **clip network**: every QCFS activation replaced by `clip(z, 0, 1)`: where the SNN converges as "
             "T grows (every rate tends to it);",
             "- **requantised L' = T**: the activations requantised to T levels, what T steps of perfectly even "
             "spikes would compute;",
             "- **SNN T**: the QCFS SNN (`dynamics='qcfs'`).", ""]
    head = ["model", "trained ANN", "clip network"] + [f"L'={t}" for t in REQUANTISED_T] + [f"SNN T={t}" for t in SNN_T]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], pct(r["ann"]), pct(r["clip_network"])]
        cells += [pct(r["requantised"][t]) for t in REQUANTISED_T] + [pct(r["snn"][t]) for t in SNN_T]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Reading, per model (at T = 1 the SNN equals L' = 1 exactly: one step of an integrate-and-fire "
              "neuron with membrane 1/2 is the 1-level QCFS activation):", ""]
    for r in rows:
        lines.append(f"- {r['model']}: at T = 1024 the SNN is at {pct(r['snn'][1024])} against the clip network's "
                     f"{pct(r['clip_network'])} (the limit it converges to; the trained ANN: {pct(r['ann'])}); at T = 8 "
                     f"it is at {pct(r['snn'][8])} where even spikes would give {pct(r['requantised'][8])}: the "
                     f"difference is the uneven timing of spikes across layers (QCFS's 'unevenness error').")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--runs-dir", default="runs/compare")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--epochs", type=int, default=12, help="as compare_methods.py (finished workdirs are reused)")
    args = p.parse_args(argv)
    args.progress = False
    start = time.perf_counter()
    rows = []
    for name in args.models.split(","):
        rows.append(limits(name, args))
        print(json.dumps(rows[-1]), flush=True)
    seconds = time.perf_counter() - start
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "qcfs_limits.json"), "w") as f:
        json.dump(dict(rows=rows, seconds=round(seconds, 1)), f, indent=1)
    text = markdown(rows, seconds)
    with open(os.path.join(args.results_dir, "qcfs_limits.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
