"""Multi-process evaluation on JAX's distributed runtime (one process per host, or per GPU).

Every process runs the same command; :func:`start` calls ``jax.distributed.initialize`` with

==================  ====================  ==================================================
flag                environment variable  meaning
==================  ====================  ==================================================
--coordinator-      JAX_COORDINATOR_      ``host:port`` of process 0, which runs the
address             ADDRESS               coordination service (JAX reads this one itself)
--num-processes     JAX_NUM_PROCESSES     how many processes take part (read here only)
--process-id        JAX_PROCESS_ID        this process's index, 0 .. N-1 (read here only)
==================  ====================  ==================================================

(a flag wins over its variable). With none of them set, nothing is initialised and the
evaluation is the single-process one. Without ``--num-processes``/``--process-id`` (and their
variables), JAX's own cluster detection fills them in (SLURM, Open MPI, Kubernetes, Cloud TPU).
JAX itself also reads ``JAX_COORDINATOR_BIND_ADDRESS`` (where process 0 listens; default all
interfaces at the coordinator's port) and ``JAX_LOCAL_DEVICE_IDS`` (the GPUs this process uses,
e.g. one process per GPU). On CPU the cross-process collectives are gloo's.

How the work is split. The evaluation batch of ``B`` rows is one global array over the mesh
of all processes' devices (:class:`~signgd_jax.commands.evaluate.parallel.DataParallel`),
devices ordered by process. Process ``p``, whose devices hold mesh positions
``[first, first + L)`` of ``D``, reads rows ``[i*B + first*B/D, i*B + (first+L)*B/D)`` of the
test split for batch ``i`` (:func:`share_bounds`, :func:`share_positions`) and nothing else, so
every global batch holds the same images in the same order as in a single-process run: the
stochastic codec's noise, the zero-image padding of the last batch and all tallies are those of
the single-process run. (TFDS's per-process split, ``tfds.split_for_jax_process``, gives each
process a contiguous range of the split instead: the batches, hence the stochastic noise and
the padding, would then depend on the number of processes.) The tallies (correct answers per
time-step, spike counts per site) are summed inside the jitted computation and come back as
replicated values, the same on every process. Process 0 alone takes the workdir lock, keeps
the progress files (its saved tallies are broadcast to the others when a run resumes:
:func:`broadcast_bytes`) and writes the results. Calibration is not split: every process reads
the same dozen training batches and converts the same network.

Every process needs the workdir's ``config.json`` and ``checkpoints/`` and the dataset; no
shared file system is needed. Every process must have the same number of devices. When one
process fails, the others stop at their next collective (an error of the collectives or of the
coordinator's heartbeat); the progress process 0 saved until then (every 30 s) lets the same
command resume (also with another number of processes, while the evaluation batch size, rounded
to a multiple of the device count, stays the same; otherwise it starts over).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
from typing import Iterator, Mapping, Optional, Sequence

import jax
import numpy as np

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process's ``index`` among ``count`` processes; process 0 is the writer."""

    index: int = 0
    count: int = 1

    @property
    def is_writer(self) -> bool:
        return self.index == 0

    @property
    def multi(self) -> bool:
        return self.count > 1


def current() -> Processes:
    """The processes of JAX's runtime (one process when it was never initialised)."""
    return Processes(jax.process_index(), jax.process_count())


# ----------------------------------------------------------------------------- start-up


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The three flags of the table above."""
    a = parser.add_argument
    a("--coordinator-address", default=None, metavar="HOST:PORT", help="multi-process run: address of "
      f"process 0's coordination service (default: ${ENV_COORDINATOR}; with neither, one process)")
    a("--num-processes", default=None, metavar="N", help="multi-process run: number of processes "
      f"(default: ${ENV_NUM_PROCESSES}, else JAX's cluster detection)")
    a("--process-id", default=None, metavar="I", help="multi-process run: this process's index 0..N-1; "
      f"process 0 takes the workdir lock and writes progress and results (default: ${ENV_PROCESS_ID}, "
      "else JAX's cluster detection)")


def _config_error(message: str) -> Exception:
    from signgd_jax.commands.evaluate.core import ConvertError  # (core imports this module's users)

    return ConvertError(message)


def _int_setting(value: Optional[str], name: str) -> Optional[int]:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise _config_error(f"{name} must be an integer, got {value!r}") from None


def settings(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Optional[dict]:
    """``jax.distributed.initialize`` keyword arguments from the flags, else the environment;
    ``None`` when neither asks for a multi-process run. ConvertError on malformed values."""
    coordinator = getattr(args, "coordinator_address", None) or environ.get(ENV_COORDINATOR) or None
    count = _int_setting(getattr(args, "num_processes", None) or environ.get(ENV_NUM_PROCESSES),
                         f"--num-processes (${ENV_NUM_PROCESSES})")
    index = _int_setting(getattr(args, "process_id", None) or environ.get(ENV_PROCESS_ID),
                         f"--process-id (${ENV_PROCESS_ID})")
    if coordinator is None and count is None and index is None:
        return None
    if count is not None and count < 1:
        raise _config_error(f"--num-processes must be at least 1, got {count}")
    if index is not None and count is not None and not 0 <= index < count:
        raise _config_error(f"--process-id must be in 0..{count - 1} for {count} processes, got {index}")
    if coordinator is not None and ":" not in coordinator:
        raise _config_error(f"--coordinator-address must be HOST:PORT, got {coordinator!r}")
    return dict(coordinator_address=coordinator, num_processes=count, process_id=index)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> Processes:
    """``jax.distributed.initialize(...)`` (once; gloo collectives on CPU) -> :class:`Processes`.

    Must run before anything touches a JAX device. Errors of the runtime (coordinator not
    reachable within its timeout, JAX already started) become a one-line ConvertError."""
    if jax.distributed.is_initialized():
        return current()
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:  # older jax: none by default
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    except (RuntimeError, ValueError, TypeError) as e:
        raise _config_error(f"cannot start the multi-process run: {' '.join(str(e).split())}") from None
    return current()


def start(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Processes:
    """Initialise JAX's distributed runtime when the flags or the environment ask for it."""
    asked = settings(args, environ)
    return initialize(**asked) if asked is not None else current()


# ----------------------------------------------------------------------------- the data split


def share_bounds(batch_size: int, device_count: int, first_device: int, local_devices: int) -> tuple[int, int]:
    """``(lo, hi)``: the rows of every global batch that the devices at mesh positions
    ``[first_device, first_device + local_devices)`` hold (``batch_size`` a multiple of
    ``device_count``)."""
    if batch_size % device_count:
        raise ValueError(f"batch size {batch_size} is not a multiple of the {device_count} devices")
    per_device = batch_size // device_count
    return first_device * per_device, (first_device + local_devices) * per_device


def share_positions(n: int, batch_size: int, lo: int, hi: int) -> list[np.ndarray]:
    """Per global batch ``i`` (``ceil(n / batch_size)`` of them), the positions of the real test
    images in rows ``[lo, hi)`` of that batch; empty where the batch ends before ``lo``."""
    return [np.arange(start + lo, min(start + hi, n)) for start in range(0, n, batch_size)]


def _subset(ds, positions: np.ndarray):
    """The view of ``ds`` (a :class:`signgd_jax.data.Dataset`) at ``positions``: only these
    examples are ever read or decoded by this process. (A copy with other indices, so every
    other setting of the view, e.g. a pretrained model's preprocessing, carries over.)"""
    view = copy.copy(ds)
    view._indices = np.asarray(ds._indices)[positions]
    view._cache = None if ds._cache is None else (ds._cache[0][positions], ds._cache[1][positions])
    return view


def local_batches(ds, batch_size: int, lo: int, hi: int, first: int = 0
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """This process's rows ``[lo, hi)`` of every padded global batch from batch ``first`` on:
    ``(images, labels, n_real)`` like :func:`~signgd_jax.commands.common.padded_batches`, with
    zero images and label -1 after the real rows, and ``n_real`` the real rows of the *global*
    batch (every process yields the same number of batches, even when its share of the last
    one is empty)."""
    n = len(ds)
    per_batch = share_positions(n, batch_size, lo, hi)[first:]
    view = _subset(ds, np.concatenate(per_batch)) if per_batch else None
    rows = hi - lo
    offset = 0
    for i, positions in enumerate(per_batch, start=first):
        k = len(positions)
        images = np.zeros((rows, *ds.image_shape), np.float32)
        labels = np.full(rows, -1, np.int32)
        if k:
            images[:k], labels[:k] = view.get(np.arange(offset, offset + k))
        offset += k
        yield images, labels, min(batch_size, n - i * batch_size)


# ----------------------------------------------------------------------------- agreement


def broadcast_bytes(payload: Optional[bytes], processes: Processes) -> bytes:
    """``payload`` of process 0, on every process (process 0's saved progress, on resume)."""
    if not processes.multi:
        return payload
    from jax.experimental import multihost_utils

    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(payload) if processes.is_writer else 0)))
    if size == 0:
        return b""
    buffer = np.frombuffer(payload, np.uint8) if processes.is_writer else np.zeros(size, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes()


def gather_rows(local: np.ndarray, processes: Processes) -> np.ndarray:
    """The per-row values of every process's share, concatenated in process order (the order of
    the rows in the global batch)."""
    if not processes.multi:
        return np.asarray(local)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


def process_devices(devices: Sequence[jax.Device]) -> list:
    """``devices`` ordered by process, then id: each process's rows of a batch are contiguous."""
    return sorted(devices, key=lambda d: (d.process_index, d.id))
