"""Schedule sweeps: accuracy over a grid of ``(eta0, gamma)`` in one compiled call per batch.

    grid = sweep(snn, batches, labels, eta0=[0.1, 0.15, 0.2], gamma=[0.9, 0.95], timesteps=(8, 32))
    grid.shape == (3, 2, 2)          # [len(eta0), len(gamma), len(timesteps)], accuracies in [0, 1]

The step sizes ``eta_t = eta0 * gamma**(t-1)`` are leaves of the SNN's schedule, so the whole
simulation is ``vmap``-ed over the flattened grid of ``(eta0, gamma)`` points: one compilation,
one run per batch (per chunk of grid points when the grid's neuron state would not fit in memory,
see :func:`grid_chunk_size`), with every batch split over the local devices (the SNN and the grid
replicated, as in the ``convert`` command). The schedule module computes traced parameters exactly
as concrete ones, so each grid point is the separate ``simulate`` run with those values (up to the
summation order of XLA's batched matmuls; see ``tests/test_sweep.py``).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from signgd_jax.class_subset import check_classes, predict
from signgd_jax.simulate import CPU_COMPILER_OPTIONS, check_timesteps, initial_state, simulate
from signgd_jax.convert import _IMAGE_KEYS
from signgd_jax.cpu_forms import platform_of
from signgd_jax.types import SNN

_LABEL_KEYS = ("label", "labels", "y", "targets")
# Live arrays per grid point and image, in units of the neuron state: the scan carries the state,
# the step builds the next one and the affine layers' outputs (each neuron's inputs, up to two
# arrays of the state's size for a binary neuron) before the old state is released.
STATE_COPIES = 4
MEMORY_FRACTION = 0.25  # of the memory free on the device (CPU: the host's free RAM) a chunk may use
# On CPU a step streams every neuron's state through the caches: a chunk whose state outgrows them
# runs slower per image than separate runs (vgg_mini, 8 grid points of 50 images: 2.0 s as one
# chunk, 1.0 s in chunks of 1 or 2, 1.3 s as separate simulate calls; 2-core CPU). So CPU chunks
# hold at most this much (in the units of grid_point_bytes); small batches still share one chunk.
CPU_CHUNK_BYTES = 32 * 2**20


# ----------------------------------------------------------------------------- arguments
def _grid_values(name: str, values, default) -> np.ndarray:
    if values is None:
        values = [default]
    try:
        values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of numbers, got {values!r}") from None
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty list of numbers, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} values must be finite, got {values.tolist()}")
    return values


def check_grid(snn: SNN, eta0, gamma) -> tuple[np.ndarray, np.ndarray]:
    """The grid's ``eta0`` and ``gamma`` values as float64 vectors (the SNN's own value where
    None); ValueError for values the schedule cannot use or for a sweep that changes nothing.
    With both None the grid is the one point of the SNN's own schedule (any dynamics)."""
    own_schedule = eta0 is None and gamma is None  # one grid point: the SNN as it is
    if not snn.dynamics.uses_schedule and not own_schedule:
        raise ValueError(f"the {snn.dynamics.name!r} dynamics uses its own step sizes whatever the schedule: "
                         "there is no eta0 or gamma to sweep")
    schedule = snn.schedule
    if schedule.kind == "custom" and not own_schedule:
        raise ValueError("this SNN's schedule is an optax function, which ignores eta0 and gamma: "
                         "convert with schedule='exponential', 'inverse' or 'constant' to sweep them")
    eta0 = _grid_values("eta0", eta0, np.asarray(schedule.eta0))
    gamma = _grid_values("gamma", gamma, np.asarray(schedule.gamma))
    if own_schedule:
        return eta0, gamma
    if np.any(eta0 <= 0):
        raise ValueError(f"eta0 values must be > 0, got {eta0.tolist()}")
    if schedule.kind == "exponential" and np.any((gamma <= 0) | (gamma > 1)):
        raise ValueError(f"gamma values must be in (0, 1], got {gamma.tolist()}")
    if schedule.kind != "exponential" and gamma.size > 1:
        raise ValueError(f"the {schedule.kind!r} schedule does not use gamma; sweep eta0 only")
    return eta0, gamma


def _as_labels(labels, position: int, count: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels of batch {position} must be {count} integers (one per image), got "
                         f"{labels.dtype} of shape {labels.shape}")
    return labels.astype(np.int32)


def _split(batch, position: int):
    """``(images, labels or None)`` of one batch: an array, an ``(images, labels)`` pair or a
    dict with an image entry (and a label entry)."""
    if isinstance(batch, dict):
        image_key = next((k for k in _IMAGE_KEYS if k in batch), None)
        if image_key is None:
            raise TypeError(f"batch {position} is a dict without an image entry (expected one of "
                            f"{', '.join(_IMAGE_KEYS)}; got keys {sorted(batch)})")
        label_key = next((k for k in _LABEL_KEYS if k in batch), None)
        return batch[image_key], None if label_key is None else batch[label_key]
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and hasattr(batch[0], "shape"):
        return batch[0], batch[1]
    return batch, None


def labelled_batches(batches, labels=None):
    """Yields ``(images float32 [n, ...], labels int32 [n])`` per batch.

    ``batches``: one array, one ``(images, labels)`` tuple, or a list or iterator of arrays, ``(images, labels)`` pairs or dicts
    with an ``'image'`` and a ``'label'`` entry (the forms :func:`signgd_jax.convert` takes).
    ``labels``: None when the batches carry them; else one integer array for all images in order,
    or a list with one array per batch. Errors name the batch at fault.
    """
    one_pair = (isinstance(batches, tuple) and len(batches) == 2 and hasattr(batches[0], "shape")
                and np.ndim(batches[0]) >= 2 and np.ndim(batches[1]) == 1)
    if hasattr(batches, "shape") or isinstance(batches, dict) or one_pair:
        batches = [batches]
    try:
        iterator = iter(batches)
    except TypeError:
        raise TypeError(f"batches must be an array or an iterable of batches, got {type(batches).__name__}") from None
    per_batch = labels is not None and not hasattr(labels, "shape") and isinstance(labels, (list, tuple))
    flat = None if labels is None or per_batch else np.asarray(labels)
    used, position = 0, -1
    for position, batch in enumerate(iterator):
        images, carried = _split(batch, position)
        if not hasattr(images, "shape") or np.ndim(images) < 2:
            raise TypeError(f"batch {position} is not an image batch: expected an array [batch, ...], an "
                            f"(images, labels) pair or a dict with 'image'; got {type(images).__name__}")
        images = np.asarray(images, np.float32)
        if not np.all(np.isfinite(images)):
            raise ValueError(f"batch {position} contains NaN or Inf values")
        n = len(images)
        if carried is not None and labels is not None:
            raise ValueError(f"batch {position} carries its labels and labels were passed too: pass one of them")
        if carried is not None:
            batch_labels = carried
        elif labels is None:
            raise ValueError(f"batch {position} has no labels: pass (images, labels) pairs, dicts with 'label', "
                             "or the labels argument")
        elif per_batch:
            if position >= len(labels):
                raise ValueError(f"labels has {len(labels)} entries (one per batch) but there are more batches")
            batch_labels = labels[position]
        else:
            batch_labels = flat[used:used + n]
            if len(batch_labels) != n:
                raise ValueError(f"labels has {len(flat)} entries, fewer than the images (batch {position} "
                                 f"needs {used + n})")
        used += n
        yield images, _as_labels(batch_labels, position, n)
    if position < 0:
        raise ValueError("batches is empty: pass at least one batch of images")
    if per_batch and len(labels) != position + 1:
        raise ValueError(f"labels has {len(labels)} entries (one per batch) for {position + 1} batches")
    if flat is not None and used != len(flat):
        raise ValueError(f"labels has {len(flat)} entries for {used} images")


# ----------------------------------------------------------------------------- memory
def grid_point_bytes(snn: SNN, images) -> int:
    """Bytes one grid point needs for a batch shaped like ``images``: :data:`STATE_COPIES` times
    its neuron, codec and decoder state (from the shapes alone)."""
    shapes = jax.eval_shape(lambda x: initial_state(snn, x),
                            jax.ShapeDtypeStruct(np.shape(images), jnp.float32))
    state = sum(math.prod(s.shape) * s.dtype.itemsize for s in jax.tree_util.tree_leaves(shapes))
    return STATE_COPIES * int(state)


def free_memory_bytes(device: Optional[jax.Device] = None) -> Optional[int]:
    """Memory free on ``device`` (accelerators: ``memory_stats``; CPU: the host's available RAM),
    None when unknown."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def grid_chunk_size(snn: SNN, images, grid_points: int, memory_bytes: Optional[int] = None,
                    num_devices: int = 1) -> int:
    """How many grid points to simulate at once on a batch shaped like ``images`` (split over
    ``num_devices``): all of them if they fit in ``MEMORY_FRACTION`` of ``memory_bytes`` (default:
    the free memory of one local device, and on CPU at most :data:`CPU_CHUNK_BYTES`), else as many
    as fit, at least one."""
    if memory_bytes is None:
        free = free_memory_bytes()
        budget = None if free is None else free * MEMORY_FRACTION
        if platform_of(images, snn) == "cpu":
            budget = CPU_CHUNK_BYTES if budget is None else min(budget, CPU_CHUNK_BYTES)
    else:
        budget = memory_bytes * MEMORY_FRACTION
    if budget is None:
        return grid_points
    per_point = max(1, grid_point_bytes(snn, images) // max(1, num_devices))
    return int(max(1, min(grid_points, budget // per_point)))


# ----------------------------------------------------------------------------- the compiled grid
def _grid_impl(snn: SNN, images, labels, key, eta0s, gammas, timesteps: tuple, dtype, with_logits: bool,
               classes: Optional[tuple] = None):
    def one_point(eta0, gamma):
        return simulate(snn.with_schedule(eta0=eta0, gamma=gamma), images, timesteps, key=key,
                                   dtype=dtype)

    if eta0s.shape[0] == 1:  # one point per chunk: the plain simulation (a vmap of 1 ran slower on CPU)
        logits = one_point(eta0s[0], gammas[0])[None]
    else:
        logits = jax.vmap(one_point)(eta0s, gammas)  # [points, len(timesteps), batch, classes]
    correct = jnp.sum(predict(logits, classes) == labels, axis=-1)  # padded images have label -1
    return correct, (logits if with_logits else None)


_STATIC = ("timesteps", "dtype", "with_logits", "classes")
_grid = jax.jit(_grid_impl, static_argnames=_STATIC)
# On CPU the same compiler options as ``simulate`` (they can be set on this outer jit only).
_grid_cpu = jax.jit(_grid_impl, static_argnames=_STATIC, compiler_options=CPU_COMPILER_OPTIONS)


def _run_grid(*args, **static):
    if platform_of(args[1]) != "cpu":
        return _grid(*args, **static)
    try:
        return _grid_cpu(*args, **static)
    except jax.errors.JaxRuntimeError as e:  # a jaxlib without the option: XLA's defaults
        if "xla_cpu_experimental_ynn_fusion_type" not in str(e):
            raise
        return _grid(*args, **static)


def _batch_mesh(devices):
    mesh = Mesh(np.asarray(devices), ("batch",))
    return NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())


class SweepGrid(np.ndarray):
    """The accuracies of a :func:`sweep`, ``[len(eta0), len(gamma), len(timesteps)]`` (a numpy
    array), with the grid's axes (``eta0``, ``gamma``, ``timesteps``) and :meth:`best`."""

    def __new__(cls, accuracy, eta0, gamma, timesteps):
        grid = np.asarray(accuracy).view(cls)
        grid.eta0, grid.gamma, grid.timesteps = tuple(map(float, eta0)), tuple(map(float, gamma)), tuple(timesteps)
        return grid

    def __array_finalize__(self, obj):
        self.eta0 = getattr(obj, "eta0", None)
        self.gamma = getattr(obj, "gamma", None)
        self.timesteps = getattr(obj, "timesteps", None)

    def best(self, timesteps: int) -> tuple[float, float, float]:
        """``(eta0, gamma, accuracy)`` of the most accurate grid point at ``timesteps`` (the first
        one in grid order on a tie)."""
        try:
            k = self.timesteps.index(int(timesteps))
        except (ValueError, AttributeError):
            raise ValueError(f"T={timesteps} is not a swept time-step; swept: {list(self.timesteps or ())}") from None
        accuracy = np.asarray(self)[:, :, k]
        i, j = np.unravel_index(int(np.argmax(accuracy)), accuracy.shape)
        return self.eta0[i], self.gamma[j], float(accuracy[i, j])


def sweep(snn: SNN, batches, labels=None, *, eta0: Optional[Sequence[float]] = None,
          gamma: Optional[Sequence[float]] = None, timesteps: Sequence[int] = (8, 16, 32, 64),
          key=None, dtype=None, chunk_size: Optional[int] = None, memory_bytes: Optional[int] = None,
          devices: Optional[Sequence[jax.Device]] = None, return_logits: bool = False,
          classes: Optional[Sequence[int]] = None):
    """Test accuracy of ``snn`` for every ``(eta0, gamma)`` of a grid, at each time-step.

    Returns a :class:`SweepGrid`, an array ``[len(eta0), len(gamma), len(timesteps)]`` of
    accuracies (fraction of images classified correctly; time-steps sorted ascending, as
    :func:`signgd_jax.simulate` returns them) with ``grid.best(T)`` -> ``(eta0, gamma,
    accuracy)``; with ``return_logits`` also the logits ``[len(eta0), len(gamma),
    len(timesteps), images, classes]`` in the order of the batches.

    Args:
      batches, labels: see :func:`labelled_batches` (arrays with ``labels``, ``(images,
        labels)`` pairs, dicts with 'image' and 'label').
      eta0, gamma: the grid's values; None keeps the SNN's own. gamma only for the exponential
        schedule; the 'if' dynamics (its ``eta_t = 1/(t+1)``) and optax schedules have nothing to
        sweep (with both None: the one point of the SNN as it is).
      key, dtype: as in :func:`signgd_jax.simulate` (the same key for every grid point and batch,
        so each point is the separate run ``simulate(snn.with_schedule(...), images, key=key)``).
      chunk_size: grid points simulated at once; default from :func:`grid_chunk_size`
        (``memory_bytes`` overrides the free memory it reads).
      devices: where each batch is split (default all local devices); a batch is padded with
        zero images up to a multiple of their count, which are not counted.
      classes: the outputs the labels ``0 .. len(classes) - 1`` stand for (e.g. Imagenette's
        10 ImageNet indices): a prediction is the argmax over those outputs only
        (:func:`signgd_jax.class_subset.predict`); None: every output.
    """
    eta0s, gammas = check_grid(snn, eta0, gamma)
    classes = check_classes(classes)
    timesteps = check_timesteps(timesteps)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    key = jax.random.PRNGKey(0) if key is None else key
    dtype = None if dtype is None else jnp.dtype(dtype)
    devices = list(jax.local_devices() if devices is None else devices)
    batch_sharding, replicated = _batch_mesh(devices)
    grid_e, grid_g = (a.ravel() for a in np.meshgrid(eta0s, gammas, indexing="ij"))
    points = grid_e.size
    snn_on_devices = jax.device_put(snn, replicated)
    key = jax.device_put(key, replicated)
    correct = np.zeros((points, len(timesteps)), np.int64)
    total, all_logits, padded_size, chunk = 0, [], 0, chunk_size

    for images, batch_labels in labelled_batches(batches, labels):
        n = len(images)
        # one padded size for every batch (the first batch's, rounded to the device count), so the
        # grid compiles once; a larger later batch gets its own size
        size = max(padded_size, -(-n // len(devices)) * len(devices))
        if size != padded_size and chunk_size is None:
            chunk = None  # (re)estimated for this size
        padded_size = size
        images = np.concatenate([images, np.zeros((padded_size - n, *images.shape[1:]), np.float32)])
        batch_labels = np.concatenate([batch_labels, np.full(padded_size - n, -1, np.int32)])
        if chunk is None:
            chunk = grid_chunk_size(snn, images, points, memory_bytes, len(devices))
        chunk = -(-points // -(-points // min(chunk, points)))  # equal chunks: the fewest repeated points
        x = jax.device_put(images, batch_sharding)
        y = jax.device_put(batch_labels, batch_sharding)
        batch_logits = []
        for start in range(0, points, chunk):
            # the last chunk repeats its last point up to the chunk size (one compilation)
            index = np.minimum(np.arange(start, start + chunk), points - 1)
            e, g = (jax.device_put(np.asarray(a[index], np.float32), replicated) for a in (grid_e, grid_g))
            c, logits = _run_grid(snn_on_devices, x, y, key, e, g, timesteps=timesteps, dtype=dtype,
                                  with_logits=return_logits, classes=classes)
            kept = min(chunk, points - start)
            correct[start:start + kept] += np.asarray(c)[:kept]
            if return_logits:
                batch_logits.append(np.asarray(logits)[:kept, :, :n])
        total += n
        if return_logits:
            all_logits.append(np.concatenate(batch_logits))
    accuracy = SweepGrid((correct / total).reshape(len(eta0s), len(gammas), len(timesteps)), eta0s, gammas, timesteps)
    if not return_logits:
        return accuracy
    logits = np.concatenate(all_logits, axis=2)
    return accuracy, logits.reshape(len(eta0s), len(gammas), *logits.shape[1:])
