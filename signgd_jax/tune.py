"""Step sizes chosen per time budget on calibration data (``schedule="auto"``).

The exponential schedule ``eta_t = eta0 gamma**(t-1)`` trades reach against precision: a
neuron's output can move at most ``r eta0 (1 - gamma**T) / (1 - gamma)`` from its start in T
steps, and near its target it oscillates by about ``r eta_T``. The default (0.15, 0.95) is a
compromise for long runs; for a given T a schedule can be much better (see
``results/ablations.md``). :func:`tune_schedule` picks, for each T, the grid point whose SNN agrees
best with the ANN on calibration images (the training images the SNN was calibrated on, never
test images): most top-1 agreements, ties broken by the smaller mean squared logit error. Each
T's grid (its gamma values depend on T) is simulated as one compiled ``vmap`` over T steps
(:func:`signgd_jax.sweep`); T above ``max_timesteps`` keeps the SNN's own schedule.

    choice = tune_schedule(snn, calibration_images, timesteps=(8, 16, 32))
    logits = simulate_tuned(snn, choice, test_images)     # [3, batch, classes], T=8 with its own schedule...

With ``spike_levels=(1, 2, 3, 7)`` each T also chooses graded signGD's K (the levels a neuron
sends per step, :mod:`signgd_jax.dynamics`) from the list, by the same score (ties: the smaller
K, i.e. fewer bits); ``spike_levels=(3,)`` tunes the schedule for K = 3 alone.

A tuned network is still a spiking network: every neuron of it uses the same step sizes (only
their values differ between runs of different length), so each neuron's output is still decoded
with the schedule its receivers know.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np

from signgd_jax.convert import calibration_arrays
from signgd_jax.simulate import check_timesteps, simulate
from signgd_jax.sweep import sweep
from signgd_jax.types import SNN

ETA0_GRID = (0.1, 0.15, 0.2, 0.3, 0.45, 0.7, 1.0)
# the last step size as a fraction of the first, rho = eta_T / eta0 = gamma**(T-1): the grid's gamma
# depends on T, so short runs may decay fast and long runs slowly
DECAY_GRID = (0.03, 0.1, 0.2, 0.35, 0.6, 1.0)
TUNING_IMAGES = 256  # calibration images scored per grid point (the first ones given)
# Longer runs keep the SNN's own schedule: by then the default is as accurate as the ANN on every
# model we measured, and a grid over T steps costs T times a grid over one step.
MAX_TUNED_TIMESTEPS = 32


@dataclasses.dataclass(frozen=True)
class ScheduleChoice:
    """The exponential schedule chosen for each time budget T, with its scores on the tuning
    images: ``agreement`` (fraction with the ANN's top-1 class) and ``logit_error`` (mean squared
    difference to the ANN logits)."""

    timesteps: tuple
    eta0: tuple
    gamma: tuple
    agreement: tuple
    logit_error: tuple
    images: int
    spike_levels: tuple | None = None  # K per T (graded signGD); None: the SNN's own

    def levels(self, timesteps: int) -> int | None:
        """The spike levels K chosen for ``timesteps`` (None: the SNN's own)."""
        return None if self.spike_levels is None else self.spike_levels[self.timesteps.index(int(timesteps))]

    def point(self, timesteps: int) -> tuple[float, float]:
        """``(eta0, gamma)`` chosen for ``timesteps``."""
        try:
            k = self.timesteps.index(int(timesteps))
        except ValueError:
            raise ValueError(f"no schedule was tuned for T={timesteps}; tuned: {list(self.timesteps)}") from None
        return self.eta0[k], self.gamma[k]

    def groups(self) -> dict:
        """``{(eta0, gamma, K): (T, ...)}``: the time budgets that share a schedule and K."""
        out: dict = {}
        for t, e, g in zip(self.timesteps, self.eta0, self.gamma):
            out.setdefault((e, g, self.levels(t)), []).append(t)
        return {k: tuple(v) for k, v in out.items()}

    def runs(self, snn: SNN, timesteps: Optional[Sequence[int]] = None) -> list:
        """``[(SNN, its T's)]``: ``snn`` under each chosen schedule (and K), with the T's of
        ``timesteps`` (default: every tuned T) it serves; ValueError (one line) for a T not tuned."""
        timesteps = self.timesteps if timesteps is None else tuple(timesteps)
        untuned = [t for t in timesteps if t not in self.timesteps]
        if untuned:
            raise ValueError(f"the schedule was tuned for T in {list(self.timesteps)}, not for {untuned}; "
                             f"tune every T you evaluate")
        out = []
        for (eta0, gamma, levels), tuned_ts in self.groups().items():
            ts = tuple(t for t in timesteps if t in tuned_ts)
            if ts:
                run = snn.with_schedule(eta0=eta0, gamma=gamma)
                out.append((run if levels is None else run.with_spike_levels(levels), ts))
        return out

    def as_dict(self) -> dict:
        """``{"T": {eta0, gamma, agreement, logit_error}}`` for JSON (None where not scored)."""
        def number(v):
            return None if np.isnan(v) else v

        return {str(t): dict(eta0=e, gamma=g, spike_levels=self.levels(t), agreement=number(a),
                             logit_error=number(m)) for t, e, g, a, m in
                zip(self.timesteps, self.eta0, self.gamma, self.agreement, self.logit_error)}


def _tuning_images(calibration_batches, count: int) -> np.ndarray:
    images = np.concatenate([np.asarray(b, np.float32) for b in calibration_arrays(calibration_batches)])
    return images[:count]


def gamma_for(decay: float, timesteps: int) -> float:
    """``gamma`` with ``gamma**(T-1) = decay``: the last of T step sizes is ``decay * eta0``."""
    return float(decay) ** (1.0 / (timesteps - 1)) if timesteps > 1 else 1.0


def tune_schedule(snn: SNN, calibration_batches, timesteps: Sequence[int] = (8, 16, 32, 64), *,
                  eta0: Sequence[float] = ETA0_GRID, decay: Sequence[float] = DECAY_GRID,
                  images: int = TUNING_IMAGES, max_timesteps: int = MAX_TUNED_TIMESTEPS,
                  devices: Optional[Sequence[jax.Device]] = None,
                  spike_levels: Optional[Sequence[int]] = None) -> ScheduleChoice:
    """For each T of ``timesteps``, the exponential schedule of the grid ``eta0`` x ``decay``
    (``decay = eta_T / eta0``, so ``gamma = decay**(1/(T-1))``) under which ``snn`` agrees best
    with its ANN on the first ``images`` calibration images.

    ``calibration_batches``: the forms :func:`signgd_jax.convert` takes (use the training images
    the SNN was calibrated on; scoring on test images would overstate the accuracy). The ANN's
    own predictions are the labels, so no labels are needed. Each T is one compiled sweep of its
    grid over T steps. A T above ``max_timesteps`` keeps the SNN's own schedule (its scores are
    NaN: not measured). ``spike_levels``: the graded signGD levels K to choose from per T (None:
    the SNN's own K only); each K is its own grid, and the best point over all of them wins.
    """
    if snn.schedule.kind != "exponential" or snn.schedule.fn is not None:
        raise ValueError("schedule tuning searches the exponential schedule; this SNN has "
                         f"{snn.schedule.kind if snn.schedule.fn is None else 'an optax schedule'!r}")
    if not snn.dynamics.uses_schedule:
        raise ValueError(f"the {snn.dynamics.name!r} dynamics has fixed step sizes: nothing to tune")
    if isinstance(images, bool) or not isinstance(images, (int, np.integer)) or images < 1:
        raise ValueError(f"images must be a positive integer, got {images!r}")
    decay = [float(d) for d in decay]
    if not decay or not all(0 < d <= 1 for d in decay):
        raise ValueError(f"decay values must lie in (0, 1], got {decay}")
    timesteps = check_timesteps(timesteps)
    candidates = [None] if spike_levels is None else [snn.dynamics.with_spike_levels(k).spike_levels
                                                      for k in _levels_list(spike_levels)]
    x = _tuning_images(calibration_batches, images)
    ann = np.asarray(jax.jit(snn.apply_fn)(snn.variables, x))
    rows = []
    for t in timesteps:
        if t > max_timesteps:
            rows.append((float(snn.schedule.eta0), float(snn.schedule.gamma), float("nan"), float("nan"),
                         candidates[0] if len(candidates) == 1 else snn.dynamics.spike_levels))
            continue
        gammas = sorted({gamma_for(d, t) for d in decay})
        scored = []  # (agreement, error, K, eta0, gamma) per grid point of every K
        for k in candidates:
            tuned = snn if k is None else snn.with_spike_levels(k)
            accuracy, logits = sweep(tuned, [(x, ann.argmax(-1))], eta0=list(eta0), gamma=gammas, timesteps=(t,),
                                     devices=devices, return_logits=True)
            error = np.mean(np.square(logits[:, :, 0] - ann), axis=(-2, -1))  # [eta0, gamma]
            scored += [(float(accuracy[i, j, 0]), float(error[i, j]), k, float(eta0[i]), float(gammas[j]))
                       for i in range(len(eta0)) for j in range(len(gammas))]
        # most agreements, then the smallest logit error, then the fewest levels
        a, m, k, e, g = min(scored, key=lambda r: (-r[0], r[1], r[2] or 0))
        rows.append((e, g, a, m, k))
    e, g, a, m, k = zip(*rows)
    return ScheduleChoice(timesteps=tuple(int(t) for t in timesteps), eta0=e, gamma=g, agreement=a,
                          logit_error=m, images=len(x), spike_levels=None if spike_levels is None else k)


def _levels_list(spike_levels) -> list:
    levels = [spike_levels] if isinstance(spike_levels, (int, np.integer)) else list(spike_levels)
    if not levels:
        raise ValueError("spike_levels must list at least one K")
    return sorted(set(levels))


def simulate_tuned(snn: SNN, choice: ScheduleChoice, images, **kwargs):
    """Logits ``[len(choice.timesteps), batch, classes]``: each T simulated with its own schedule
    (one :func:`signgd_jax.simulate` run per distinct schedule, up to the largest T it serves).
    ``kwargs`` go to ``simulate`` (``key``, ``dtype``)."""
    out = [None] * len(choice.timesteps)
    for tuned, ts in choice.runs(snn):
        logits = simulate(tuned, images, timesteps=ts, **kwargs)
        for t, row in zip(ts, logits):
            out[choice.timesteps.index(t)] = row
    return jax.numpy.stack(out)
