"""Batches of a dataset on the host: what each batch holds, and a grain pipeline that reads,
decodes and assembles them, in worker processes when asked.

What a batch holds is defined here and nowhere else, and does not depend on how many worker
processes or JAX processes compute it:

- the order of a pass is :func:`epoch_order` ``(n, seed, epoch)``, a pure function of them
  (grain's own shuffles would give another order, hence other training runs than the committed
  ones);
- global batch ``b`` holds positions ``order[b*B : (b+1)*B]``; its augmentation
  (:func:`augment_crop_flip`) draws its random numbers from ``(seed, epoch, b)`` alone, for the
  whole batch, so a run resumed at batch ``k`` (``start=k``) sees exactly the batches it would
  have seen;
- a process holding rows ``[lo, hi)`` of every global batch (``rows``; :func:`process_rows`,
  or the rows of its devices in a device mesh) reads those rows and nothing else, and applies
  to them the augmentation the whole batch would get. Put together in process order, the
  processes' rows are the single-process batch, bit for bit. (grain's ``ShardByJaxProcess``
  gives each process a contiguous range of the dataset instead: the batches would then depend
  on the number of processes.)

How it is computed: one grain ``MapDataset`` whose elements are these batches: ``source`` over
the batch plans, a ``map`` that reads a batch's records in one call, decodes and resizes them
(:meth:`signgd_jax.data.Dataset.raw`), augments and normalises them, then ``to_iter_dataset``
and, with ``workers > 0``, ``mp_prefetch``: that many worker processes compute batches ``w,
w + workers, ...`` ahead while the caller consumes them in order (grain passes the arrays
through shared memory). A batch is the unit of work because its order, augmentation and rows
are defined per batch and its records are read in one call; worker processes run numpy and PIL
only (never a JAX device). Each pass starts its workers anew (``spawn``: each imports grain,
JAX and this package, about 2 s of a CPU), so :func:`default_workers` uses them only for
datasets decoded on every read (photos) and passes of several batches.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
import warnings
from typing import Iterator, Optional

import numpy as np

WORKERS_ENV = "SIGNGD_DATA_WORKERS"
MAX_WORKERS = 8
MIN_BATCHES_FOR_WORKERS = 8  # below this, starting the workers costs more than they save


# ----------------------------------------------------------------------------- what a batch holds


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Example order of an epoch: a pure function of ``(n, seed, epoch)``."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def num_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
    return n // batch_size if drop_remainder else -(-n // batch_size)


def _crop_flip_draws(rng: np.random.Generator, count: int, pad: int):
    """The random crop offsets and flips of ``count`` images, in the order they are drawn."""
    oy = rng.integers(0, 2 * pad + 1, size=count)
    ox = rng.integers(0, 2 * pad + 1, size=count)
    return oy, ox, rng.random(count) < 0.5


def _crop_flip(images: np.ndarray, oy, ox, flips, pad: int, flip: bool) -> np.ndarray:
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = oy[:, None] + np.arange(h)[None, :]
    cols = ox[:, None] + np.arange(w)[None, :]
    if flip:
        cols = np.where(flips[:, None], cols[:, ::-1], cols)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def augment_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 4,
                      flip: bool = True) -> np.ndarray:
    """Random crop to the input size after zero-padding by ``pad``, then (if ``flip``) a
    random horizontal flip.

    ``images`` is a NHWC batch (uint8 before normalisation, so the padding is black).
    """
    return _crop_flip(images, *_crop_flip_draws(rng, len(images), pad), pad, flip)


def process_rows(batch_size: int, index: Optional[int] = None, count: Optional[int] = None) -> tuple[int, int]:
    """``(lo, hi)``: the rows of every ``batch_size`` batch that process ``index`` of ``count``
    reads (default: ``jax.process_index()`` of ``jax.process_count()``), one equal block each."""
    if index is None or count is None:
        import jax

        index, count = jax.process_index(), jax.process_count()
    if batch_size % count:
        raise ValueError(f"batch size {batch_size} is not a multiple of the {count} processes")
    share = batch_size // count
    return index * share, (index + 1) * share


@dataclasses.dataclass(frozen=True)
class _Batch:
    """One global batch as this process sees it: its index in the pass, the dataset positions
    of this process's real rows, the batch row they start at, and the batch's real rows."""

    index: int
    positions: np.ndarray
    first: int
    real: int


def _plan(order: np.ndarray, batch_size: int, count: int, start: int, rows: tuple[int, int]) -> list:
    lo, hi = rows
    if not 0 <= lo < hi <= batch_size:
        raise ValueError(f"rows {rows} are not a non-empty range of a {batch_size}-row batch")
    n = len(order)
    out = []
    for b in range(start, count):
        real = min(batch_size, n - b * batch_size)
        out.append(_Batch(b, order[b * batch_size + lo:b * batch_size + min(hi, real)], lo, real))
    return out


class _Load:
    """The map of the pipeline: a planned batch -> ``(float32 images, int32 labels, real)``,
    read from ``ds``, augmented when ``augment`` is ``(seed, epoch)``, and padded to ``pad_to``
    rows with zero images and label -1 (which no prediction equals) when it is set."""

    def __init__(self, ds, augment: Optional[tuple[int, int]], pad_to: Optional[int]):
        self.ds, self.augment, self.pad_to = ds, augment, pad_to

    def __call__(self, batch: _Batch):
        if len(batch.positions) == 0:  # this process's share of a short last batch
            images, labels = np.zeros((0, *self.ds.image_shape), np.float32), np.zeros((0,), np.int32)
        elif self.augment is None:
            images, labels = self.ds.get(batch.positions)
        else:
            raw, labels = self.ds.raw(batch.positions)
            seed, epoch = self.augment
            settings = self.ds.augmentation
            rng = np.random.default_rng([int(seed), int(epoch), batch.index, 1])
            draws = _crop_flip_draws(rng, batch.real, settings["pad"])
            mine = slice(batch.first, batch.first + len(raw))
            images = self.ds.normalize(_crop_flip(raw, *(d[mine] for d in draws), **settings))
        missing = (self.pad_to or 0) - len(labels)
        if missing > 0:
            images = np.concatenate([images, np.zeros((missing, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.full(missing, -1, labels.dtype)])
        return images, labels, batch.real


# ----------------------------------------------------------------------------- the pipeline


def default_workers(ds, batches: int) -> int:
    """Worker processes for a pass of ``batches`` batches over ``ds``: ``$SIGNGD_DATA_WORKERS``
    when set; else none for a dataset held in memory (decoded once: nothing left to spread) or a
    pass of fewer than :data:`MIN_BATCHES_FOR_WORKERS` batches, and otherwise one per usable CPU
    up to :data:`MAX_WORKERS`."""
    asked = os.environ.get(WORKERS_ENV, "").strip()
    if asked:
        try:
            workers = int(asked)
        except ValueError:
            raise ValueError(f"${WORKERS_ENV} must be a whole number of worker processes, got {asked!r}") from None
        if workers < 0:
            raise ValueError(f"${WORKERS_ENV} must be 0 or more, got {workers}")
        return workers
    if ds.in_memory or batches < MIN_BATCHES_FOR_WORKERS:
        return 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS, usable))


def _absl_flags_parsed() -> None:
    """grain's worker processes read absl flags (e.g. whether to profile workers); a program
    that never parsed absl flags (anything not started by ``absl.app``) gets their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _unguarded_script() -> Optional[str]:
    """The path of the running script when it has no ``if __name__ == "__main__":`` guard (a
    worker started with ``spawn`` would run it again, and die while starting); else None
    (a guarded script, ``python -m``, a notebook or a REPL)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not path.endswith(".py") or os.path.basename(path) == "__main__.py":
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            source = f.read()
    except OSError:
        return None
    return None if re.search(r"""__name__\s*==\s*['"]__main__['"]""", source) else path


def _run(ds, plan: list, augment, pad_to, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    import grain

    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    script = _unguarded_script() if workers else None
    if script:
        warnings.warn(f"{script} has no `if __name__ == \"__main__\":` guard, which worker processes need "
                      f"(they start by running the script again): reading the data in this process instead",
                      stacklevel=3)
        workers = 0
    # num_threads=0: no reader threads (a batch is computed when asked for, in the caller's
    # process or in a worker); the workers are the parallelism.
    pipeline = grain.MapDataset.source(plan).map(_Load(ds, augment, pad_to)).to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=1))
    if workers:
        _absl_flags_parsed()
        pipeline = pipeline.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    iterator = iter(pipeline)
    try:
        for images, labels, real in iterator:
            if workers:  # own the arrays: grain's shared memory is released as soon as it can be
                images, labels = np.array(images), np.array(labels)
            yield images, labels, int(real)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def batches(ds, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
            drop_remainder: bool = False, augment: bool = False, start: int = 0,
            rows: Optional[tuple[int, int]] = None, workers: int = 0
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, labels)``: float32 normalised NHWC images and int32 labels.

    The order is :func:`epoch_order` ``(len(ds), seed, epoch, shuffle)``; with ``augment``
    each batch gets :func:`augment_crop_flip` (the dataset's settings,
    :attr:`~signgd_jax.data.Dataset.augmentation`) seeded by ``(seed, epoch, batch index)``.
    ``start`` skips the first ``start`` batches (for resuming mid-epoch) without reading them.
    ``rows=(lo, hi)``: only those rows of every batch (this process's share, e.g.
    :func:`process_rows`); needs ``drop_remainder``, as a short last batch would leave the
    processes with shares of different sizes. ``workers``: worker processes (0: this one).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if rows is not None and not drop_remainder and len(ds) % batch_size:
        raise ValueError(f"rows {rows} of batches of {batch_size} need drop_remainder: the last of "
                         f"the {len(ds)} examples' batches is short")
    order = epoch_order(len(ds), seed, epoch, shuffle)
    plan = _plan(order, batch_size, num_batches(len(ds), batch_size, drop_remainder), start,
                 rows or (0, batch_size))
    for images, labels, _ in _run(ds, plan, (seed, epoch) if augment else None, None, workers):
        yield images, labels


def padded_batches(ds, batch_size: int, *, first: int = 0, rows: Optional[tuple[int, int]] = None,
                   workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """``(images, labels, n_real)`` over ``ds`` in order, every batch exactly ``batch_size``
    rows (or ``hi - lo`` with ``rows=(lo, hi)``: this process's rows of each): the last one is
    padded with zero images (label -1, which no prediction equals) after its real rows, so a
    jitted evaluation compiles once. ``n_real`` counts the real rows of the whole batch, and
    every process yields the same number of batches, even when its share of the last one is
    all padding. Starts at batch ``first`` (for resuming)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    lo, hi = rows or (0, batch_size)
    plan = _plan(np.arange(len(ds)), batch_size, num_batches(len(ds), batch_size, False), first, (lo, hi))
    yield from _run(ds, plan, None, hi - lo, workers)
