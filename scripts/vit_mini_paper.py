"""Paper mode on the trained vit_mini: the same weights in the reference's elementwise
decomposition (product, exp, divide and two-neuron LayerNorm sites), since paper mode has no
vector neurons. Usage: PYTHONPATH=. python scripts/vit_mini_paper.py runs/vit_mini"""
import json
import sys

import numpy as np

import signgd_jax as sg
from signgd_jax import data, metrics, models
from signgd_jax.workdir import load as load_trained


def main(workdir: str, timesteps=(8, 16, 32, 64, 128), batch: int = 100):
    vector_model, variables, config = load_trained(workdir)
    model = models.create("vit_mini", num_classes=int(config["num_classes"]), vector_neurons=False)
    train, test = data.load("mnist5k", "train"), data.load("mnist5k", "test")
    calibration = [train.get(np.arange(i * 250, (i + 1) * 250))[0] for i in range(12)]
    snn = sg.convert(model, variables, calibration, dynamics="paper")
    correct, ann_correct = np.zeros(len(timesteps)), 0
    for start in range(0, len(test), batch):
        images, labels = test.get(np.arange(start, min(start + batch, len(test))))
        ann = model.apply(variables, images, train=False)
        assert np.allclose(ann, vector_model.apply(variables, images, train=False), atol=1e-4)
        ann_correct += int(np.sum(np.argmax(ann, -1) == labels))
        logits = sg.simulate(snn, images, timesteps)
        correct += np.asarray(metrics.accuracy_per_step(logits, labels)) * len(labels)
    out = dict(ann=ann_correct / len(test), paper={str(t): float(c / len(test)) for t, c in zip(timesteps, correct)})
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
