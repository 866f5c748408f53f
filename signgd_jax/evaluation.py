"""Accuracy over a dataset, with spikes and energy: what ``signgd-convert`` reports, as one call.

    report = signgd_jax.evaluate(snn, test_batches, timesteps=(4, 16, 64))
    report.accuracy          # {4: 0.91, 16: 0.97, 64: 0.98}
    report.ann_accuracy      # the ANN on the same images
    report.statistics[64]    # firing rates, synaptic operations and energy per image over 64 steps
    report.plot()            # accuracy against T next to the ANN (a matplotlib Figure)
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np

from signgd_jax import interpret, metrics
from signgd_jax.class_subset import check_classes, predict
from signgd_jax.plots import accuracy_against_timesteps
from signgd_jax.simulate import check_snn, check_timesteps, simulate
from signgd_jax.sweep import labelled_batches
from signgd_jax.types import SNN


@dataclasses.dataclass(frozen=True)
class Report:
    """One SNN evaluated on a dataset.

    accuracy: ``{T: fraction correct}``; ann_accuracy: the ANN on the same images; statistics:
    ``{T: metrics.spike_statistics over the first T steps}`` (firing rates, synaptic operations
    and energy per image and step; multiply by T for a whole run); energy_uj_per_image:
    ``{T: energy of a T-step run per image}``; dynamics: the method's label; bits_per_neuron_step:
    the bits a neuron of ``snn`` sends per step (with a tuned schedule that chooses K per T, the
    bits at each T are ``statistics[T]["bits_per_neuron_step"]``); schedule: the tuned schedule
    per T (``ScheduleChoice.as_dict()``), None when the SNN's own was used.
    """

    timesteps: tuple
    accuracy: dict
    ann_accuracy: float
    num_images: int
    statistics: dict
    energy_uj_per_image: dict
    ann_energy_uj_per_image: float
    dynamics: str
    bits_per_neuron_step: float
    schedule: Optional[dict] = None

    def plot(self, ax=None):
        """Accuracy against T (log scale) with the ANN as a line; returns the Figure."""
        return accuracy_against_timesteps({self.dynamics: self.accuracy}, self.ann_accuracy, ax=ax)


def evaluate(snn: SNN, batches, timesteps: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128), labels=None, *,
             key=None, dtype=None, classes: Optional[Sequence[int]] = None, schedule=None) -> Report:
    """Evaluates ``snn`` (and its ANN) on every batch; returns a :class:`Report`.

    ``batches``: the forms :func:`signgd_jax.sweep` takes (an ``(images, labels)`` pair, a list or
    iterator of them, dicts with ``'image'`` and ``'label'``, or arrays with ``labels`` given).
    Spike counts are summed per T over the first T steps of the same run (one simulation per
    batch and schedule). ``classes``: the outputs the labels ``0 .. len(classes) - 1`` stand for
    (e.g. Imagenette's 10 ImageNet indices, :func:`signgd_jax.data.output_classes`); the SNN and
    the ANN are then both scored by the argmax over those outputs only
    (:func:`signgd_jax.class_subset.predict`). None: every output, labels are output indices.
    ``schedule``: a :class:`signgd_jax.tune.ScheduleChoice` (from :func:`signgd_jax.tune_schedule`)
    that tuned every requested T: each T then runs with its own step sizes and spike levels.
    """
    snn = check_snn(snn)
    timesteps = check_timesteps(timesteps)
    classes = check_classes(classes)
    runs = [(snn, timesteps)] if schedule is None else schedule.runs(snn, timesteps)
    ann = jax.jit(lambda v, x: interpret.evaluate(snn.apply_fn, v, x, interpret.ann_site))
    correct, totals = {t: 0 for t in timesteps}, [None] * len(runs)
    ann_correct, n, sample = 0, 0, None
    for images, batch_labels in labelled_batches(batches, labels):
        for r, (run, ts) in enumerate(runs):
            logits, counts = simulate(run, images, ts, key=key, dtype=dtype, return_spike_counts="per_timestep")
            hits = np.sum(np.asarray(predict(logits, classes)) == batch_labels[None], axis=-1)
            correct.update({t: correct[t] + int(h) for t, h in zip(ts, hits)})
            counts = {k: np.asarray(v, np.float64) for k, v in counts.items()}
            totals[r] = counts if totals[r] is None else {k: totals[r][k] + counts[k] for k in counts}
        ann_correct += int(np.sum(np.asarray(predict(ann(snn.variables, images), classes)) == batch_labels))
        n += len(images)
        sample = images[:1] if sample is None else sample
    statistics = {}
    for (run, ts), run_totals in zip(runs, totals):
        statistics.update(metrics.spike_statistics_per_timestep(run, run_totals, n, ts, sample))
    statistics = {t: statistics[t] for t in timesteps}
    energy = {t: s["energy_pj_per_image_step"] * t / 1e6 for t, s in statistics.items()}
    return Report(timesteps=timesteps, accuracy={t: correct[t] / n for t in timesteps},
                  ann_accuracy=ann_correct / n, num_images=n, statistics=statistics, energy_uj_per_image=energy,
                  ann_energy_uj_per_image=statistics[timesteps[0]]["ann_energy_pj_per_image"] / 1e6,
                  dynamics=snn.dynamics.label + (" tuned" if schedule is not None else ""),
                  bits_per_neuron_step=snn.dynamics.bits_per_step,
                  schedule=None if schedule is None else schedule.as_dict())
