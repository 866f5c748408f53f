"""Load a training workdir or published weights, convert the model with each dynamics, evaluate,
and collect the results.

:func:`evaluate` does the work for one :class:`~signgd_jax.commands.evaluate.settings.ConvertSettings`
and returns the ``results.json`` dict; :func:`evaluate_workdir` builds the settings from keywords.
Bad input raises :class:`ConvertError` (a one-line message) before anything is written.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import platform
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

import signgd_jax
from signgd_jax import data, metrics
from signgd_jax import workdir as trained_workdir
from signgd_jax.class_subset import predict as predict_class
from signgd_jax.convert import as_apply_fn
from signgd_jax.dynamics import get as get_dynamics
from signgd_jax.commands.common import one_line, progress_bar
from signgd_jax.commands.evaluate.errors import ConvertError, check_finite  # noqa: F401 (re-exported)
from signgd_jax.commands.evaluate import distributed
from signgd_jax.commands.evaluate.parallel import DataParallel
from signgd_jax.commands.evaluate.progress import ProgressStore
from signgd_jax.commands.evaluate.settings import (DEFAULT_DYNAMICS, DEFAULT_TIMESTEPS,  # noqa: F401 (re-exported)
                                                   PRETRAINED_DATASET, ConvertSettings, parse_dynamics, parse_grid,
                                                   parse_timesteps)

RESULTS_FORMAT = 1
CALIBRATION_SEED = 0


# ----------------------------------------------------------------------------- loading


def load_workdir(workdir: str):
    """``(model, variables, config)`` of a training workdir (:func:`signgd_jax.workdir.load`);
    ConvertError when unusable."""
    try:
        return trained_workdir.load(workdir)
    except trained_workdir.CheckpointNotFound as e:
        raise ConvertError(f"missing checkpoint: {one_line(e)} (train one with `signgd-train"
                           f" --model NAME --workdir {workdir}`)") from None
    except trained_workdir.RestoreMismatch as e:
        raise ConvertError(f"checkpoint does not match the model in config.json: {one_line(e)}") from None
    except trained_workdir.CorruptCheckpoint as e:
        raise ConvertError(f"corrupt checkpoint: {one_line(e)}") from None
    except trained_workdir.TrainError as e:  # e.g. ConfigError: unknown model name in config.json
        raise ConvertError(f"cannot load {workdir}: {one_line(e)}") from None


def check_dataset(name: str, config: dict) -> None:
    """ConvertError unless ``name`` is a supported dataset the trained model can take."""
    if name not in data.SUPPORTED:
        raise ConvertError(f"unknown dataset {name!r}; supported: {', '.join(data.SUPPORTED)}")
    shape, classes, _, _ = data.dataset_info(name)
    want_shape = tuple(config.get("image_shape", shape))
    want_classes = int(config.get("num_classes", classes))
    try:  # its own classes, or a subset of them (imagenette's 10 of an ImageNet model's 1000)
        data.output_classes(name, want_classes)
        fits = tuple(shape) == want_shape
    except ValueError:
        fits = False
    if not fits:
        raise ConvertError(f"dataset {name!r} ({'x'.join(map(str, shape))} images, {classes} classes) does not "
                           f"fit the model trained on {config.get('dataset')!r} "
                           f"({'x'.join(map(str, want_shape))} images, {want_classes} classes)")


def load_splits(name: str, data_dir: Optional[str], preprocessing=None):
    """``(calibration, test)`` views of dataset ``name`` (:func:`signgd_jax.workdir.splits`);
    ConvertError if not prepared."""
    try:
        return trained_workdir.splits(name, data_dir, preprocessing)
    except data.DatasetNotPrepared as e:
        raise ConvertError(one_line(e)) from None


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What one evaluation runs on: the flax ``model`` and its ``variables``, the training and test
    splits, its ``identity`` (the model and its weights: with the settings, it decides whether saved
    progress is reused) and ``extra`` (the target's own entries of ``results.json``)."""
    model: Any
    variables: Any
    train_ds: Any
    test_ds: Any
    identity: dict
    extra: dict


def load_trained_target(settings: ConvertSettings) -> tuple[ConvertSettings, Loaded]:
    """The training workdir's model on its dataset (or ``settings.dataset``), with the settings'
    dataset and data dir resolved (the training run's, where it found the data)."""
    model, variables, config = load_workdir(settings.workdir)
    dataset, data_dir = trained_workdir.trained_on(config, settings.dataset, settings.data_dir)
    check_dataset(dataset, config)
    train_ds, test_ds = load_splits(dataset, data_dir)
    identity = dict(model=config["model"], checkpoint_step=config.get("checkpoint_step"))
    extra = dict(checkpoint_step=config.get("checkpoint_step"), epochs_done=config.get("epochs_done"))
    return (dataclasses.replace(settings, dataset=dataset, data_dir=data_dir),
            Loaded(model, variables, train_ds, test_ds, identity, extra))


def calibration_batches(train_ds, batch_size: int, count: int, seed: int = CALIBRATION_SEED) -> list:
    """:func:`signgd_jax.workdir.calibration_batches`; ConvertError for an empty split or NaN or
    Inf images."""
    try:
        batches = trained_workdir.calibration_batches(train_ds, batch_size, count, seed)
    except ValueError as e:  # an empty split
        raise ConvertError(one_line(e)) from None
    for i, images in enumerate(batches):
        check_finite(images, f"calibration batch {i} of the {train_ds.name} training split")
    return batches


def machine_info() -> dict:
    """Where the numbers were made. ``usable_cpus`` (the CPUs this process may run on) matters
    for reproducing them: XLA:CPU splits convolutions and reductions by its thread count, so the
    last bits of the results depend on it (same machine, same usable CPUs: identical results)."""
    devices = jax.devices()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(platform=platform.platform(), machine=platform.machine(), python=platform.python_version(),
                cpu_count=os.cpu_count(), usable_cpus=usable, jax=jax.__version__, backend=jax.default_backend(),
                device_count=len(devices), devices=[str(d) for d in devices],
                process_count=jax.process_count(), process_index=jax.process_index(),
                device_kind=devices[0].device_kind if devices else None)


# ----------------------------------------------------------------------------- evaluation


IN_FLIGHT = 2  # batches dispatched to the devices before the oldest one's tallies are read back


def _resumable(store: Optional[ProgressStore], name: str, test_ds, batch_size: int, desc: str, progress: bool,
               tally: Callable, dp: DataParallel) -> tuple[dict, int]:
    """Sums ``tally(batch_index, images, labels, n_real) -> {name: device array}`` over the padded
    test batches, after those ``store`` already holds; returns ``(sums, batches resumed)``: host
    arrays, int64 for integer tallies and float64 for the others. The sums are saved as it goes
    and on Ctrl-C, so a rerun continues where this one stopped.

    No host round trip between batches: a batch's tallies are read back only once
    :data:`IN_FLIGHT` later batches have been dispatched, so the host reads, decodes and places
    the next batches while the devices compute; the sums are the same, in the same order."""
    done, sums = store.load(name) if store else (0, {})
    n = len(test_ds)
    completed, pending = done, collections.deque()

    def settle(bar):  # the oldest dispatched batch into the sums (left pending if interrupted)
        nonlocal sums, completed
        i, k, tallies = pending[0]
        sums = {**sums, **{key: sums.get(key, 0) + _host_sum(dp.to_host(value)) for key, value in tallies.items()}}
        completed = i + 1
        pending.popleft()
        if store:
            store.save(name, completed, sums)
        bar.update(k)

    with progress_bar(n, desc, "img", progress, initial=min(done * batch_size, n)) as bar:
        try:
            for i, (images, labels, k) in enumerate(dp.padded_batches(test_ds, batch_size, first=done), start=done):
                tallies = tally(i, images, labels, k)
                for value in tallies.values():
                    if getattr(value, "is_fully_addressable", False):
                        value.copy_to_host_async()
                pending.append((i, k, tallies))
                if len(pending) > IN_FLIGHT:
                    settle(bar)
            while pending:
                settle(bar)
        except KeyboardInterrupt:
            try:  # the batches already dispatched count: wait for them
                while pending:
                    settle(bar)
            except KeyboardInterrupt:
                pass
            if store:
                store.save(name, completed, sums, force=True)
            raise
    if store:
        store.save(name, completed, sums, force=True)
    return sums, done


def _host_sum(value: np.ndarray) -> np.ndarray:
    return value.astype(np.int64 if np.issubdtype(value.dtype, np.integer) else np.float64)


def evaluate_ann(model, variables, test_ds, batch_size: int, dp: DataParallel, progress: bool,
                 store: Optional[ProgressStore] = None, classes: Optional[tuple] = None) -> int:
    """Number of test images the ANN classifies correctly (over ``classes`` only, see
    :func:`signgd_jax.class_subset.predict`); ConvertError on NaN or Inf images."""
    apply_fn = as_apply_fn(model)
    predict = jax.jit(lambda v, x: predict_class(apply_fn(v, x), classes))
    variables = dp.replicate(variables)

    def tally(i, images, labels, k):  # runs over every test image before any simulation
        check_finite(images[:k], f"test batch {i} (batch size {batch_size}) of {test_ds.name}")
        return dict(correct=dp.count_correct(predict(variables, dp.shard(images)), labels))  # pads: label -1

    sums, _ = _resumable(store, "ann", test_ds, batch_size, "ANN", progress, tally, dp)
    return int(sums["correct"])


_COUNT = "count:"  # prefix of a site's spike counts among the running sums


def evaluate_snn(snn, test_ds, batch_size: int, timesteps: tuple, dp: DataParallel, progress: bool,
                 desc: str, seed: int = 0, dtype: Optional[str] = None, store: Optional[ProgressStore] = None,
                 classes: Optional[tuple] = None):
    """``(correct per time-step, spike counts per site, batches resumed)`` over the test images
    (a prediction is the argmax over ``classes`` only, as :func:`evaluate_ann`'s).

    Spike counts come from the same simulate call (T = max(timesteps)), summed over the real
    images only: the zero images that pad the last batch are subtracted with the counts of an
    all-zero batch (exact for the deterministic codecs, where every zero image spikes alike;
    an estimate for the stochastic codec).
    """
    replicated = dp.replicate(snn)
    base_key = jax.random.PRNGKey(seed)

    def tally(i, images, labels, k):
        logits, batch_counts = signgd_jax.simulate(replicated, dp.shard(images), timesteps=timesteps,
                                                   key=jax.random.fold_in(base_key, i),
                                                   return_spike_counts=True, dtype=dtype)
        correct = dp.count_correct(predict_class(logits, classes), labels)  # [len(timesteps)]; pads: label -1
        return dict(correct=correct, **{_COUNT + name: c for name, c in batch_counts.items()})

    sums, resumed = _resumable(store, desc, test_ds, batch_size, desc, progress, tally, dp)
    correct = sums["correct"].astype(np.int64)
    counts = {k[len(_COUNT):]: v for k, v in sums.items() if k.startswith(_COUNT)}
    pad_rows = -len(test_ds) % batch_size  # zero images in the last batch
    if pad_rows:
        zeros = np.zeros((dp.local_size(batch_size), *test_ds.image_shape), np.float32)  # this process's rows
        _, zero_counts = signgd_jax.simulate(replicated, dp.shard(zeros), timesteps=timesteps,
                                             key=base_key, return_spike_counts=True, dtype=dtype)
        counts = {n: np.maximum(c - dp.to_host(zero_counts[n]).astype(np.float64) * (pad_rows / batch_size), 0.0)
                  for n, c in counts.items()}
    return correct, counts, resumed


def evaluate_tuned(snn, choice, test_ds, batch_size: int, timesteps: tuple, dp: DataParallel, progress: bool,
                   desc: str, **kwargs):
    """:func:`evaluate_snn` with each T simulated under the schedule ``choice`` (a
    :class:`signgd_jax.tune.ScheduleChoice`; None: the SNN's own schedule for every T); the spike
    counts are those of the run that reaches ``max(timesteps)``."""
    if choice is None:
        return evaluate_snn(snn, test_ds, batch_size, timesteps, dp, progress, desc, **kwargs)
    correct = np.zeros(len(timesteps), np.int64)
    counts, resumed = {}, 0
    for tuned, ts in choice.runs(snn, timesteps):
        c, batch_counts, r = evaluate_snn(tuned, test_ds, batch_size, ts, dp, progress,
                                          f"{desc} (eta0 {tuned.schedule.eta0:g}, gamma {tuned.schedule.gamma:.4f})",
                                          **kwargs)
        for t, value in zip(ts, c):
            correct[timesteps.index(t)] = value
        if max(timesteps) in ts:
            counts = batch_counts
        resumed = max(resumed, r)
    return correct, counts, resumed


def load_pretrained(model_name: str, weights: str, source: Optional[str] = None):
    """``(model, variables, preprocessing, source)`` from a published checkpoint; ConvertError
    (one line) for an unknown model or source, a missing, unreadable or truncated file, and a
    checkpoint of another model or layout (a missing, extra or misshapen key is named)."""
    from signgd_jax import models
    from signgd_jax.models.checkpoints import LAYOUTS, recognise, read_arrays

    if model_name not in LAYOUTS:
        raise ConvertError(f"--model {model_name!r} has no pretrained checkpoint layout; supported: "
                           f"{', '.join(sorted(LAYOUTS))}")
    if source is not None and source not in LAYOUTS[model_name]:
        raise ConvertError(f"--source {source!r} is not a layout of {model_name}; supported: "
                           f"{', '.join(LAYOUTS[model_name])}")
    try:
        arrays = read_arrays(weights)
        source = source or recognise(arrays, model_name)
        model, variables, preprocessing = models.from_arrays(arrays, model_name, source, origin=os.fspath(weights))
    except models.CheckpointError as e:  # CheckpointMismatch included
        message = one_line(e)
        raise ConvertError(message if message.startswith(os.fspath(weights)) else f"{weights}: {message}") from None
    return model, variables, preprocessing, source


def load_hub(repo_id: str):
    """The :class:`signgd_jax.models.hub.Pretrained` of a timm repository of the Hugging Face Hub
    (fetched into the Hugging Face cache); ConvertError (one line naming the repository) for
    huggingface_hub missing, an unknown repository, architecture or revision, no model.safetensors,
    offline with an empty cache, and a file that is not the zoo model's."""
    from signgd_jax.models import CheckpointError, hub

    try:
        return hub.load(repo_id)
    except CheckpointError as e:  # HubError and CheckpointMismatch included
        raise ConvertError(one_line(e)) from None


def load_pretrained_target(settings: ConvertSettings) -> tuple[ConvertSettings, Loaded]:
    """Published ImageNet weights (``settings.weights`` of ``settings.model``, or the Hub repository
    ``settings.repo_id``: the results record it and its commit) on imagenet2012 (or
    ``settings.dataset``: imagenet_v2, imagenette) with the checkpoint's own preprocessing."""
    hub = {}
    if settings.repo_id is not None:
        loaded = load_hub(settings.repo_id)
        model_name, weights, model, variables, preprocessing, source = (
            loaded.name, loaded.weights, loaded.model, loaded.variables, loaded.preprocessing, loaded.source)
        hub = dict(hub=dict(repo_id=settings.repo_id, revision=loaded.revision, architecture=loaded.architecture))
    else:
        model_name, weights = settings.model, settings.weights
        model, variables, preprocessing, source = load_pretrained(model_name, weights, settings.source)
    dataset = settings.dataset or PRETRAINED_DATASET
    train_ds, test_ds = load_splits(dataset, settings.data_dir, preprocessing)
    stat = os.stat(weights)
    pretrained = dict(weights=os.path.abspath(weights), source=source,
                      preprocessing=dataclasses.asdict(preprocessing), **hub)
    identity = dict(model=model_name, weights=dict(path=pretrained["weights"], bytes=stat.st_size,
                                                   mtime_ns=stat.st_mtime_ns),
                    source=source, preprocessing=pretrained["preprocessing"])
    extra = dict(checkpoint_step=None, epochs_done=None, pretrained=pretrained)
    return dataclasses.replace(settings, dataset=dataset), Loaded(model, variables, train_ds, test_ds, identity,
                                                                   extra)


def evaluate(settings: ConvertSettings, *, log: Callable[[str], None] = print, devices: Optional[Sequence] = None,
             resume: bool = True, save_every_s: float = 30.0) -> dict:
    """Load the target of ``settings`` (a training workdir, or published weights), convert it with
    each dynamics and evaluate it; returns the results dict.

    Raises :class:`ConvertError` for bad input (missing / corrupt / mismatched checkpoint, a
    dataset the model cannot take or that is not prepared). With ``resume`` the running tallies
    are kept in ``settings.workdir`` (:mod:`~signgd_jax.commands.evaluate.progress`, every
    ``save_every_s`` seconds and on Ctrl-C), and an interrupted evaluation with the same settings
    continues. ``devices``: those the batches are split over (default: all).
    """
    t_start = time.perf_counter()
    settings, loaded = (load_pretrained_target if settings.pretrained else load_trained_target)(settings)
    return evaluate_model(loaded, settings, log=log, devices=devices, resume=resume, save_every_s=save_every_s,
                          t_start=t_start)


def evaluate_workdir(workdir: str, *, log: Callable[[str], None] = print, devices: Optional[Sequence] = None,
                     resume: bool = True, save_every_s: float = 30.0, **options) -> dict:
    """:func:`evaluate` of the training workdir ``workdir``; ``options`` are the other fields of
    :class:`~signgd_jax.commands.evaluate.settings.ConvertSettings` (time-steps and dynamics also
    as text, e.g. ``timesteps="1,4,16"``), checked by its ``create``."""
    return evaluate(ConvertSettings.create(workdir, **options), log=log, devices=devices, resume=resume,
                    save_every_s=save_every_s)


DIAGNOSE_IMAGES = 64  # test images the layer errors are measured on


def _test_batches(test_ds, batch_size: int):
    """``(images, labels)`` over the test view in order (the last batch may be smaller)."""
    for start in range(0, len(test_ds), batch_size):
        yield test_ds.get(np.arange(start, min(start + batch_size, len(test_ds))))


def _json_numbers(values) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, np.float64)]


def layer_error_numbers(errors) -> dict:
    """A :class:`signgd_jax.diagnose.LayerErrors` as JSON-ready lists (NaN -> null)."""
    return dict(timesteps=list(errors.timesteps), sites=list(errors.normalised),
                normalised={k: _json_numbers(v) for k, v in errors.normalised.items()},
                absolute={k: _json_numbers(v) for k, v in errors.absolute.items()},
                ann_scale={k: float(v) for k, v in errors.ann_scale.items()})


def run_sweep(snn, test_ds, batch_size: int, timesteps: tuple, eta0s, gammas, dp: DataParallel, dtype,
              classes: Optional[tuple] = None) -> dict:
    """The accuracy grid of one SNN over the test images: ``[len(eta0), len(gamma), len(timesteps)]``
    from :func:`signgd_jax.sweep` (one compiled ``vmap`` over the grid per batch; over ``classes``
    only), with the best point per T."""
    accuracy = signgd_jax.sweep(snn, _test_batches(test_ds, batch_size), eta0=eta0s, gamma=gammas,
                                timesteps=timesteps, dtype=dtype, devices=dp.devices, classes=classes)
    best = {}
    for k, t in enumerate(timesteps):
        i, j = np.unravel_index(int(np.argmax(accuracy[:, :, k])), accuracy.shape[:2])
        best[str(t)] = dict(eta0=eta0s[i], gamma=gammas[j], accuracy=float(accuracy[i, j, k]))
    return dict(supported=True, reason=None, accuracy=np.asarray(accuracy, np.float64).tolist(), best=best)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What every dynamics of one evaluation shares: the (limited) test view, the calibration
    batches, the devices and evaluation batch size, the progress store (None: nothing resumed),
    when loading ended, and the model outputs the labels stand for (:func:`signgd_jax.data.output_classes`;
    None: all of them)."""
    test_ds: object
    calib: list
    dp: DataParallel
    eval_batch: int
    store: Optional[ProgressStore]
    t_loaded: float
    classes: Optional[tuple] = None


def _check_processes(settings: ConvertSettings) -> None:
    """ConvertError for an auto schedule or a sweep over several processes."""
    for asked, what in ((settings.schedule == "auto", "--schedule auto"), (settings.sweeping, "a sweep")):
        if asked and jax.process_count() > 1:
            raise ConvertError(f"{what} runs in one process (over its local devices); start it without "
                               "multi-process options")


def _progress_identity(loaded: Loaded, settings: ConvertSettings, test_ds, eval_batch: int, calib: list) -> dict:
    """Everything that decides the numbers: saved progress made with other values is discarded."""
    s = settings
    return dict(loaded.identity, dataset=test_ds.name, data_dir=s.data_dir, num_test_images=len(test_ds),
                timesteps=s.timesteps, codec=s.codec, schedule=s.schedule, spread=s.spread,
                spike_levels=s.spike_levels, eta0=s.eta0, gamma=s.gamma, dtype=s.simulate_dtype,
                eval_batch_size=eval_batch, calibration_batch_size=s.calibration_batch_size,
                calibration_batches=len(calib), calibration_seed=CALIBRATION_SEED)


def _prepare(loaded: Loaded, settings: ConvertSettings, *, devices: Optional[Sequence], resume: bool,
             save_every_s: float, log: Callable[[str], None]) -> _Setup:
    """The :class:`_Setup`: limits the test view (ConvertError when empty), draws the calibration
    batches, checks every process has the same inputs, logs what is evaluated and opens the
    progress store (with ``resume``)."""
    test_ds = loaded.test_ds.take(settings.limit)
    if len(test_ds) == 0:
        raise ConvertError(f"the test split of {test_ds.name!r} is empty")
    dp = DataParallel(devices)
    eval_batch = dp.round_up(min(settings.batch_size, len(test_ds)))
    calib = calibration_batches(loaded.train_ds, settings.calibration_batch_size, settings.calibration_batch_count)
    distributed.agree_on_inputs(dp.processes, loaded.identity, loaded.variables, test_ds, calib)  # else exit 2
    t_loaded = time.perf_counter()
    log(f"{loaded.identity['model']} on {test_ds.name}: {len(test_ds)} test images; calibration: {len(calib)} "
        f"batches, {sum(len(b) for b in calib)} training images; batch {eval_batch} over {dp.size} device(s) "
        f"({jax.default_backend()})")
    classes = _scored_classes(loaded, test_ds.name, calib[0][:1])
    if classes is not None:
        log(f"accuracy over {data.accuracy_rule(test_ds.name, classes)}")
    store = None
    if resume:
        store = ProgressStore(settings.workdir, _progress_identity(loaded, settings, test_ds, eval_batch, calib),
                              save_every_s, log)
    return _Setup(test_ds, calib, dp, eval_batch, store, t_loaded, classes)


def _scored_classes(loaded: Loaded, dataset: str, sample) -> Optional[tuple]:
    """The model outputs the labels of ``dataset`` stand for (:func:`signgd_jax.data.output_classes`
    of the model's output count, read off ``sample``); ConvertError (one line) for a count that
    does not fit."""
    outputs = jax.eval_shape(as_apply_fn(loaded.model), loaded.variables, sample).shape[-1]
    try:
        return data.output_classes(dataset, outputs)
    except ValueError as e:
        raise ConvertError(one_line(e)) from None


def _refusal(error) -> str:
    """An UnsupportedOperation's first line (its second lists every supported operation)."""
    return one_line(str(error).splitlines()[0]) if str(error) else one_line(error)


def _convert(loaded: Loaded, name: str, calib: list, settings: ConvertSettings):
    """The SNN of dynamics ``name`` (an 'auto' schedule starts exponential); raises
    :class:`signgd_jax.UnsupportedOperation`."""
    chosen = get_dynamics(name)
    return signgd_jax.convert(loaded.model, loaded.variables, calib, dynamics=name, codec=settings.codec,
                              schedule="exponential" if settings.schedule == "auto" else settings.schedule,
                              eta0=settings.eta0, gamma=settings.gamma,
                              spread=settings.spread if chosen.takes_spread else None,
                              spike_levels=settings.spike_levels if chosen.takes_levels else None)


def _sweep_dynamics(loaded: Loaded, name: str, setup: _Setup, settings: ConvertSettings) -> dict:
    """The ``results["sweep"]["dynamics"]`` entry of one dynamics: converted, then swept over
    the settings' grid (:func:`run_sweep`); not supported when it does not convert or has nothing
    to sweep."""
    t0 = time.perf_counter()
    def unsupported(error):  # the reason is printed once, by sweep_table
        return dict(supported=False, reason=_refusal(error), accuracy=None, best=None)

    try:
        snn = _convert(loaded, name, setup.calib, settings)
    except signgd_jax.UnsupportedOperation as e:
        return unsupported(e)
    t1 = time.perf_counter()
    try:
        entry = run_sweep(snn, setup.test_ds, setup.eval_batch, settings.timesteps, *settings.grid, setup.dp,
                          settings.simulate_dtype, setup.classes)
    except ValueError as e:  # e.g. 'if': eta_t = 1/(t+1), nothing to sweep
        return unsupported(e)
    entry["timings"] = dict(convert_s=round(t1 - t0, 3), sweep_s=round(time.perf_counter() - t1, 3))
    return entry


def _layer_errors(snn, test_ds, timesteps: tuple) -> dict:
    """The ``results["layer_errors"]`` entry of one SNN, on the first :data:`DIAGNOSE_IMAGES` test images."""
    from signgd_jax import diagnose as diagnostics

    images, _ = test_ds.get(np.arange(min(DIAGNOSE_IMAGES, len(test_ds))))
    return dict(images=len(images), **layer_error_numbers(diagnostics.layer_errors(snn, images, timesteps)))


def _tuned_schedule(snn, name: str, calib: list, settings: ConvertSettings, log: Callable[[str], None]):
    """With ``schedule`` 'auto', the :class:`signgd_jax.tune.ScheduleChoice` of dynamics ``name``
    (logged); else None."""
    if settings.schedule != "auto" or not get_dynamics(name).uses_schedule:
        return None
    choice = signgd_jax.tune_schedule(snn, calib, settings.timesteps)
    log(f"{name}: schedule per T (on {choice.images} calibration images): " + ", ".join(
        f"T={t}: eta0 {e:g}, gamma {g:.4f}" for t, e, g in zip(choice.timesteps, choice.eta0, choice.gamma)))
    return choice


def _evaluate_dynamics(loaded: Loaded, name: str, setup: _Setup, settings: ConvertSettings,
                       log: Callable[[str], None]) -> tuple[dict, Optional[dict]]:
    """``(results["dynamics"] entry, results["layer_errors"] entry)`` of one dynamics: converted,
    its schedule tuned per T (``schedule`` 'auto'), simulated over the test images, its spike
    statistics, and with ``diagnose`` its layer errors (else None; None too when not supported)."""
    timesteps, test_ds, calib, n = settings.timesteps, setup.test_ds, setup.calib, len(setup.test_ds)
    t0 = time.perf_counter()
    try:
        snn = _convert(loaded, name, calib, settings)
    except signgd_jax.UnsupportedOperation as e:  # the reason is printed once, under report.accuracy_table
        return dict(supported=False, reason=_refusal(e), accuracy=None, correct=None, spike_statistics=None,
                    timings=None), None
    t1 = time.perf_counter()
    choice = _tuned_schedule(snn, name, calib, settings, log)
    t_tuned = time.perf_counter()
    correct, counts, resumed = evaluate_tuned(snn, choice, test_ds, setup.eval_batch, timesteps, setup.dp,
                                              settings.progress, name, dtype=settings.simulate_dtype,
                                              store=setup.store, classes=setup.classes)
    t2 = time.perf_counter()
    stats = metrics.spike_statistics(snn, counts, n, max(timesteps), calib[0][:1])
    t3 = time.perf_counter()
    entry = dict(
        supported=True, reason=None, spike_levels=snn.dynamics.spike_levels,
        bits_per_neuron_step=snn.dynamics.bits_per_step,
        accuracy={str(t): int(c) / n for t, c in zip(timesteps, correct)},
        correct={str(t): int(c) for t, c in zip(timesteps, correct)},
        spike_statistics=dict(num_steps=max(timesteps), num_images=n, **stats),
        timings=dict(convert_s=round(t1 - t0, 3), tune_s=round(t_tuned - t1, 3),
                     simulate_s=round(t2 - t_tuned, 3), statistics_s=round(t3 - t2, 3), resumed_batches=resumed,
                     images_per_s=round((n - min(resumed * setup.eval_batch, n)) / max(t2 - t_tuned, 1e-9), 2)))
    if choice is not None:
        entry["schedule_per_t"] = choice.as_dict()
    return entry, (_layer_errors(snn, test_ds, timesteps) if settings.diagnose else None)


def _assemble_results(loaded: Loaded, settings: ConvertSettings, setup: _Setup, ann_correct: int, *,
                      evaluated: dict, timings: dict) -> dict:
    """The results dict: what was evaluated with which settings and calibration, the ANN's accuracy,
    then ``evaluated`` (``dynamics`` or ``sweep``, and ``layer_errors``), ``timings`` and the machine."""
    s, n, calib = settings, len(setup.test_ds), setup.calib
    results = dict(
        format=RESULTS_FORMAT,
        workdir=os.path.abspath(s.workdir),
        model=loaded.identity["model"],
        dataset=setup.test_ds.name,
        **loaded.extra,
        num_test_images=n,
        timesteps=list(s.timesteps),
        settings=dict(dynamics=list(s.dynamics), codec=s.codec, schedule=s.schedule, spread=s.spread,
                      spike_levels=s.spike_levels, eta0=s.eta0, gamma=s.gamma, dtype=s.dtype,
                      batch_size=s.batch_size, eval_batch_size=setup.eval_batch, limit=s.limit,
                      data_dir=s.data_dir),
        calibration=dict(split="train", batches=len(calib), batch_size=s.calibration_batch_size,
                         images=sum(len(b) for b in calib), seed=CALIBRATION_SEED,
                         **({} if loaded.train_ds.name == setup.test_ds.name else dict(dataset=loaded.train_ds.name))),
        ann=dict(accuracy=ann_correct / n, correct=ann_correct),
    )
    if setup.classes is not None:  # the ANN and every SNN: the argmax over these outputs only
        results.update(accuracy_over=data.accuracy_rule(setup.test_ds.name, setup.classes),
                       class_indices=list(setup.classes))
    results.update(evaluated)
    results.update(timings=timings, machine=machine_info())
    return results


def _evaluate_every_dynamics(loaded: Loaded, setup: _Setup, settings: ConvertSettings,
                             log: Callable[[str], None]) -> dict:
    """``results["sweep"]`` when sweeping, else ``results["dynamics"]`` (and with ``diagnose``
    ``results["layer_errors"]``): one entry per dynamics."""
    if settings.sweeping:
        swept = {name: _sweep_dynamics(loaded, name, setup, settings) for name in settings.dynamics}
        eta0s, gammas = settings.grid
        return dict(sweep=dict(eta0=list(eta0s), gamma=list(gammas), dynamics=swept))
    per_dynamics, layer_errors = {}, {}
    for name in settings.dynamics:
        per_dynamics[name], errors = _evaluate_dynamics(loaded, name, setup, settings, log)
        if errors is not None:
            layer_errors[name] = errors
    return dict(dynamics=per_dynamics, **(dict(layer_errors=layer_errors) if settings.diagnose else {}))


def evaluate_model(loaded: Loaded, settings: ConvertSettings, *, log: Callable[[str], None] = print,
                   devices: Optional[Sequence] = None, resume: bool = True, save_every_s: float = 30.0,
                   t_start: Optional[float] = None) -> dict:
    """Calibrate on ``loaded.train_ds``, convert with each dynamics, evaluate on ``loaded.test_ds``:
    the results dict.

    ``loaded.identity`` (the model and its weights) and the settings decide whether saved progress
    in ``settings.workdir`` is reused. A sweep (``settings.sweep_eta0`` or ``sweep_gamma``)
    evaluates each dynamics with a schedule over that grid instead (:func:`run_sweep`;
    ``results["sweep"]``, nothing resumed) and the 'if' dynamics is n/a. With ``settings.diagnose``
    each dynamics' layer errors (:func:`signgd_jax.diagnose.layer_errors` on the first
    :data:`DIAGNOSE_IMAGES` test images) go into ``results["layer_errors"]``.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    _check_processes(settings)
    setup = _prepare(loaded, settings, devices=devices, resume=resume and not settings.sweeping,
                     save_every_s=save_every_s, log=log)
    ann_correct = evaluate_ann(loaded.model, loaded.variables, setup.test_ds, setup.eval_batch, setup.dp,
                               settings.progress, setup.store, setup.classes)
    t_ann = time.perf_counter()
    evaluated = _evaluate_every_dynamics(loaded, setup, settings, log)
    t_end = time.perf_counter()
    timings = dict(load_s=round(setup.t_loaded - t_start, 3), ann_s=round(t_ann - setup.t_loaded, 3),
                   snn_s=round(t_end - t_ann, 3), total_s=round(t_end - t_start, 3))
    return _assemble_results(loaded, settings, setup, ann_correct, evaluated=evaluated, timings=timings)
