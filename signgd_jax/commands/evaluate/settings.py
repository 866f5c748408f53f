"""signgd-convert's settings: one frozen :class:`ConvertSettings`, built and checked once (from the
command line, :meth:`ConvertSettings.from_args`, or from keywords, :meth:`ConvertSettings.create`)
and then passed whole to the evaluation. Every check raises :class:`ConvertError` with a one-line
message, before anything is loaded."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from signgd_jax.commands.evaluate.errors import ConvertError

DEFAULT_TIMESTEPS = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_DYNAMICS = ("paper", "improved", "if")  # of convert.NAMES: paper, improved, if, qcfs, ecmt
WORKDIR_CALIBRATION_BATCHES = 12  # a dozen batches of the evaluation batch size, as the reference's scripts
PRETRAINED_CALIBRATION_BATCHES = 100  # the paper calibrates its ImageNet conversions on 100 random batches
PRETRAINED_CALIBRATION_BATCH_SIZE = 32
PRETRAINED_DATASET = "imagenet2012"


def parse_timesteps(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,2,4"`` (or a sequence) -> sorted unique positive integers; ConvertError otherwise."""
    from signgd_jax.simulate import check_timesteps

    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    if isinstance(text, str) and not all(s.isdigit() for s in items):  # rejects "1.5", "a", "-1", ""
        raise ConvertError(f"timesteps must be positive integers separated by commas, got {text!r}")
    try:
        return check_timesteps([int(s) for s in items] if isinstance(text, str) else items)
    except ValueError:
        raise ConvertError(f"timesteps must be positive integers separated by commas, got {text!r}") from None


def parse_dynamics(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"paper,if"`` -> ``("paper", "if")`` in the given order, duplicates dropped."""
    from signgd_jax.convert import NAMES

    names = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise ConvertError(f"unknown dynamics {', '.join(map(repr, unknown)) or repr(text)}; "
                           f"supported: {', '.join(NAMES)}")
    return tuple(dict.fromkeys(names))


def parse_grid(name: str, text: str | Sequence[float] | None) -> Optional[tuple[float, ...]]:
    """A sweep axis: ``"start:stop:count"`` (``count`` evenly spaced values, both ends included),
    ``"a,b,c"`` or a sequence of numbers; None stays None. ConvertError otherwise."""
    if text is None:
        return None
    try:
        if isinstance(text, str) and ":" in text:
            start, stop, count = text.split(":")
            if not count.strip().isdigit() or int(count) < 1:
                raise ValueError
            values = np.linspace(float(start), float(stop), int(count))
        else:
            values = [float(s) for s in text.split(",")] if isinstance(text, str) else [float(v) for v in text]
    except ValueError:
        raise ConvertError(f"--{name} must be start:stop:count (count a positive integer) or numbers separated "
                           f"by commas, got {text!r}") from None
    if len(values) == 0 or not np.all(np.isfinite(values)):
        raise ConvertError(f"--{name} needs finite values, got {text!r}")
    return tuple(round(float(v), 12) for v in values)


def imagenet_datasets() -> tuple[str, ...]:
    """The datasets published ImageNet weights (1000 outputs) are evaluated on: ImageNet's classes,
    or some of them (:func:`signgd_jax.data.output_classes`)."""
    from signgd_jax import data

    def takes_imagenet_models(name: str) -> bool:
        try:
            data.output_classes(name, data.dataset_info(PRETRAINED_DATASET)[1])
        except ValueError:
            return False
        return True

    return tuple(name for name in data.SUPPORTED if takes_imagenet_models(name))


def _positive(name: str, value, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ConvertError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class ConvertSettings:
    """What one ``signgd-convert`` run evaluates, and how (see ``signgd-convert --help``).

    The target is a training ``workdir``, or published weights: ``model`` with ``weights`` (and
    the layout ``source``; None: recognised from the keys) or ``repo_id`` (a timm repository of
    the Hugging Face Hub), with ``workdir`` the folder of their progress and results.
    ``dataset``/``data_dir`` None: the training run's (imagenet2012 for published weights).
    ``dtype`` float32 or bfloat16. ``sweep_eta0``/``sweep_gamma``: the axes of a sweep (None: not
    swept). Build it with :meth:`create` or :meth:`from_args`, which check every value and fill
    the defaults that depend on the target (calibration: 12 batches of ``batch_size`` for a
    workdir, 100 of 32 for published weights, as the paper).
    """

    workdir: str
    model: Optional[str] = None
    weights: Optional[str] = None
    repo_id: Optional[str] = None
    source: Optional[str] = None
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    dynamics: tuple[str, ...] = DEFAULT_DYNAMICS
    spike_levels: Optional[int] = None
    batch_size: int = 250
    calibration_batch_count: int = WORKDIR_CALIBRATION_BATCHES
    calibration_batch_size: int = 250
    limit: Optional[int] = None
    codec: str = "float"
    schedule: str = "exponential"
    spread: Optional[float] = None
    eta0: float = 0.15
    gamma: float = 0.95
    dtype: str = "float32"
    progress: bool = True
    sweep_eta0: Optional[tuple[float, ...]] = None
    sweep_gamma: Optional[tuple[float, ...]] = None
    diagnose: bool = False

    @property
    def pretrained(self) -> bool:
        """Published weights (``weights`` or ``repo_id``), not a training workdir."""
        return self.weights is not None or self.repo_id is not None

    @property
    def sweeping(self) -> bool:
        return self.sweep_eta0 is not None or self.sweep_gamma is not None

    @property
    def grid(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The sweep grid ``(eta0s, gammas)``; an axis not swept holds the single ``eta0`` / ``gamma``."""
        return tuple(self.sweep_eta0 or (self.eta0,)), tuple(self.sweep_gamma or (self.gamma,))

    @property
    def simulate_dtype(self) -> Optional[str]:
        """``dtype`` as :func:`signgd_jax.simulate` takes it (None: the network's own, float32)."""
        return None if self.dtype == "float32" else self.dtype

    @classmethod
    def create(cls, workdir: str, *, model: Optional[str] = None, weights: Optional[str] = None,
               repo_id: Optional[str] = None, timesteps=DEFAULT_TIMESTEPS, dynamics=DEFAULT_DYNAMICS,
               calibration_batch_count: Optional[int] = None, calibration_batch_size: Optional[int] = None,
               dtype: Optional[str] = None, sweep_eta0=None, sweep_gamma=None, **rest) -> "ConvertSettings":
        """The checked settings: time-steps, dynamics and sweep axes as text (``"1,2,4"``,
        ``"0.1:0.3:5"``) or sequences; the calibration defaults of the target filled in; the
        other keywords are the fields. ConvertError (one line) for any bad value."""
        pretrained = weights is not None or repo_id is not None
        count = calibration_batch_count if calibration_batch_count is not None else (
            PRETRAINED_CALIBRATION_BATCHES if pretrained else WORKDIR_CALIBRATION_BATCHES)
        size = calibration_batch_size if calibration_batch_size is not None else (
            PRETRAINED_CALIBRATION_BATCH_SIZE if pretrained else None)  # None: batch_size
        return cls(workdir=workdir, model=model, weights=weights, repo_id=repo_id,
                   timesteps=parse_timesteps(timesteps), dynamics=parse_dynamics(dynamics),
                   calibration_batch_count=count, calibration_batch_size=size, dtype=dtype or "float32",
                   sweep_eta0=parse_grid("sweep-eta0", sweep_eta0),
                   sweep_gamma=parse_grid("sweep-gamma", sweep_gamma), **rest)._checked()

    @classmethod
    def from_args(cls, args, workdir: str, progress: bool) -> "ConvertSettings":
        """The settings of ``signgd-convert``'s parsed arguments, evaluated into (or from)
        ``workdir``; ``progress``: bars shown in this process."""
        return cls.create(
            workdir, model=args.model, weights=args.weights, repo_id=args.pretrained, source=args.source,
            dataset=args.dataset, data_dir=args.data_dir, timesteps=args.timesteps, dynamics=args.dynamics,
            spike_levels=args.spike_levels, batch_size=args.batch_size,
            calibration_batch_count=args.calibration_batches, calibration_batch_size=args.calibration_batch_size,
            limit=args.limit, codec=args.codec,
            schedule=args.schedule, spread=args.spread, eta0=args.eta0, gamma=args.gamma, dtype=args.dtype,
            progress=progress, sweep_eta0=args.sweep_eta0, sweep_gamma=args.sweep_gamma, diagnose=args.diagnose)

    def _checked(self) -> "ConvertSettings":
        """These settings with the integers and the spread normalised; ConvertError for a bad value."""
        from signgd_jax import data
        from signgd_jax.convert import check_spread
        from signgd_jax.dynamics import CODECS, get as get_dynamics

        batch_size = _positive("batch-size", self.batch_size)
        counts = dict(batch_size=batch_size,
                      calibration_batch_count=_positive("calibration-batches", self.calibration_batch_count),
                      calibration_batch_size=_positive("calibration-batch-size", self.calibration_batch_size,
                                                       allow_none=True) or batch_size,  # a workdir: batch_size
                      limit=_positive("limit", self.limit, allow_none=True))
        if self.dtype not in ("float32", "bfloat16"):
            raise ConvertError(f"unknown dtype {self.dtype!r}; supported: float32, bfloat16")
        if self.codec not in CODECS:
            raise ConvertError(f"unknown codec {self.codec!r}; supported: {', '.join(CODECS)}")
        if self.dataset is not None and self.dataset not in data.SUPPORTED:  # before the (slow) checkpoint load
            raise ConvertError(f"unknown dataset {self.dataset!r}; supported: {', '.join(data.SUPPORTED)}")
        if self.pretrained and self.dataset is not None and self.dataset not in imagenet_datasets():
            raise ConvertError(f"pretrained ImageNet weights are evaluated on {', '.join(imagenet_datasets())}, "
                               f"not {self.dataset!r}")
        if not (self.eta0 > 0 and 0 < self.gamma <= 1):
            raise ConvertError(f"need eta0 > 0 and 0 < gamma <= 1, got eta0={self.eta0!r}, gamma={self.gamma!r}")
        levels = _positive("spike-levels", self.spike_levels, allow_none=True)
        if levels is not None and not any(get_dynamics(d).takes_levels for d in self.dynamics):
            raise ConvertError(f"--spike-levels applies to the dynamics improved (graded signGD) and ecmt; "
                               f"--dynamics is {','.join(self.dynamics)}")
        try:
            spread = check_spread(self.spread)
        except ValueError:
            raise ConvertError(f"--spread must be a positive number of standard deviations, got {self.spread!r}") \
                from None
        eta0s, gammas = self.grid
        if self.sweeping and (min(eta0s) <= 0 or not all(0 < g <= 1 for g in gammas)):
            raise ConvertError(f"sweep values need eta0 > 0 and 0 < gamma <= 1, got eta0 {list(eta0s)}, "
                               f"gamma {list(gammas)}")
        return dataclasses.replace(self, spike_levels=levels, spread=spread, **counts)
