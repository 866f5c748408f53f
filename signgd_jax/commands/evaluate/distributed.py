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
the single-process run; the reading is the loader's (:func:`signgd_jax.data.padded_batches` with
``rows``, photos decoded in its worker processes). (TFDS's per-process split,
``tfds.split_for_jax_process``, and grain's ``ShardByJaxProcess`` give each process a contiguous
range of the split instead: the batches, hence the stochastic noise and the padding, would then
depend on the number of processes.) The tallies (correct answers per
time-step, spike counts per site) are summed inside the jitted computation and come back as
replicated values, the same on every process. Process 0 alone takes the workdir lock, keeps
the progress files (its saved tallies are broadcast to the others when a run resumes:
:func:`broadcast_bytes`) and writes the results. Calibration is not split: every process reads
the same dozen training batches and converts the same network.

Agreement. Before any work every process compares its settings with the others'
(:func:`agree`): first the command's options (:func:`command_settings`: all but the per-host
ones, the workdir, data dir and weights path, progress bars and these three flags) with the
versions of jax and of the signgd_jax code, then, once the model and calibration images are
loaded, its inputs (:func:`input_settings`: the model, a digest of the weights' contents, the
dataset and its test-image count, a digest of the calibration images). Each process contributes
a fixed-size encoding of its settings (:func:`encode_settings`: a digest and a short text per
setting) to ``multihost_utils.process_allgather``, so every process sees all of them and comes to
the same verdict: on a mismatch every process raises the same one-line ConvertError naming the
first setting that differs and each process's value (:func:`disagreement`), and the command exits
with status 2 on every process.

Every process needs the workdir's ``config.json`` and ``checkpoints/`` and the dataset; no
shared file system is needed. Every process must have the same number of devices. When one
process fails, the others stop at their next collective (an error of the collectives or of the
coordinator's heartbeat); the progress process 0 saved until then (every 30 s) lets the same
command resume (also with another number of processes, while the evaluation batch size, rounded
to a multiple of the device count, stays the same; otherwise it starts over).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np

from signgd_jax import data

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
    from signgd_jax.commands.evaluate.errors import ConvertError

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


def local_batches(ds, batch_size: int, lo: int, hi: int, first: int = 0, workers: int = 0
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """This process's rows ``[lo, hi)`` of every padded global batch from batch ``first`` on:
    :func:`signgd_jax.data.padded_batches` with ``rows=(lo, hi)`` (zero images and label -1
    after the real rows; ``n_real`` the real rows of the *global* batch; every process yields
    the same number of batches, even when its share of the last one is empty). Only the
    positions of :func:`share_positions` are read."""
    return data.padded_batches(ds, batch_size, first=first, rows=(lo, hi), workers=workers)


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


# ----------------------------------------------------------------------------- same settings everywhere

SETTING_ROWS = 64  # settings an encoding holds, its first row the list of names
DIGEST_BYTES = 16
TEXT_BYTES = 48  # the start of each value's text, for the message
ROW_BYTES = DIGEST_BYTES + TEXT_BYTES

# Options that legitimately differ between hosts: where things are on this host (the contents of
# the weights and data are compared by input_settings), display, and the process's own place.
PER_HOST_OPTIONS = frozenset({"workdir", "data_dir", "weights", "progress", "coordinator_address",
                              "num_processes", "process_id"})


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, default=repr).encode()


def _text(value: Any) -> bytes:
    """The start of ``value``'s text, at most :data:`TEXT_BYTES` bytes (cut ones end in ...)."""
    text = (value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=repr)).encode()
    if len(text) > TEXT_BYTES:
        text = text[:TEXT_BYTES - 3].decode(errors="ignore").encode() + b"..."
    return text


def encode_settings(items: Sequence[tuple[str, Any]]) -> np.ndarray:
    """``[SETTING_ROWS, ROW_BYTES]`` uint8, the same size for every list of settings: row 0 holds
    a digest of the names in order, row ``i + 1`` a digest of setting ``i``'s name and value
    (JSON) and the start of the value's text; the rest is zero."""
    if len(items) >= SETTING_ROWS:
        raise ValueError(f"{len(items)} settings: an encoding holds at most {SETTING_ROWS - 1}")
    out = np.zeros((SETTING_ROWS, ROW_BYTES), np.uint8)
    names = [name for name, _ in items]
    out[0, :DIGEST_BYTES] = np.frombuffer(_digest(_canonical(names)), np.uint8)
    for row, (name, value) in enumerate(items, start=1):
        out[row, :DIGEST_BYTES] = np.frombuffer(_digest(_canonical([name, value])), np.uint8)
        text = _text(value)
        out[row, DIGEST_BYTES:DIGEST_BYTES + len(text)] = np.frombuffer(text, np.uint8)
    return out


def _shown(row: np.ndarray) -> str:
    return bytes(row[DIGEST_BYTES:]).rstrip(b"\0").decode(errors="replace")


def disagreement(encodings: np.ndarray, names: Sequence[str], what: str = "settings") -> Optional[str]:
    """None when every process's encoding (``[processes, SETTING_ROWS, ROW_BYTES]``, from
    :func:`encode_settings` with the settings ``names``) is the same; else one line naming the
    first setting that differs and what each process has."""
    encodings = np.asarray(encodings, np.uint8)
    if (encodings[:, 0] != encodings[0, 0]).any():
        return (f"the processes compare different lists of {what} (another version of signgd-jax on some "
                "host?): run the same version everywhere")
    for row, name in enumerate(names, start=1):
        digests = encodings[:, row, :DIGEST_BYTES]
        if (digests != digests[0]).any():
            groups: dict[bytes, list[int]] = {}
            for p in range(len(encodings)):
                groups.setdefault(bytes(digests[p]), []).append(p)
            shown = "; ".join(f"process{'es' if len(ps) > 1 else ''} {', '.join(map(str, ps))}: "
                              f"{_shown(encodings[ps[0], row])}" for ps in groups.values())
            return (f"the processes disagree on {name} ({shown}): start every process with the same "
                    f"{what}")
    return None


def _gather(encoding: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(encoding))  # [processes, rows, bytes]


def agree(items: Sequence[tuple[str, Any]], processes: Processes, what: str = "settings",
          gather: Callable[[np.ndarray], np.ndarray] = _gather) -> None:
    """Every process of a multi-process run compares ``items`` (``(name, value)`` pairs, the same
    names in the same order on every process) with the others'; on any difference every process
    raises the same one-line ConvertError (:func:`disagreement`). Nothing to do in one process."""
    if not processes.multi:
        return
    message = disagreement(gather(encode_settings(items)), [name for name, _ in items], what)
    if message is not None:
        raise _config_error(message)


@functools.lru_cache(maxsize=None)
def code_digest() -> str:
    """A digest of the signgd_jax package's Python files: the same on hosts that run the same code."""
    import signgd_jax

    root = os.path.dirname(os.path.abspath(signgd_jax.__file__))
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read() + b"\0")
    return h.hexdigest()


def command_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[str, Any]]:
    """What must be the same on every process of a run before anything is loaded: every option
    of ``parser`` as parsed into ``args`` (named by its flag, in ``--help`` order) except
    :data:`PER_HOST_OPTIONS`, then the jax version and the signgd_jax code."""
    items = [(action.option_strings[-1], getattr(args, action.dest))
             for action in parser._actions
             if action.option_strings and action.dest not in PER_HOST_OPTIONS and hasattr(args, action.dest)
             and action.dest != "help"]
    return [*items, ("the jax version", jax.__version__), ("the signgd_jax code", code_digest())]


def tree_digest(tree) -> str:
    """A digest of a pytree of arrays: its structure, and each leaf's path, dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    h.update(str(treedef).encode())
    for path, leaf in leaves:
        value = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{value.dtype}|{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def input_settings(identity: Mapping[str, Any], variables, test_ds, calibration: Sequence[np.ndarray]
                   ) -> list[tuple[str, Any]]:
    """What must be the same on every process once the inputs are loaded: the model (name, and a
    published checkpoint's layout and preprocessing), the weights' contents (not their path or
    file time, which differ between hosts), the dataset and its number of test images, and the
    calibration images."""
    items = [("the model", identity.get("model"))]
    for key in ("checkpoint_step", "source", "preprocessing"):
        if key in identity:
            items.append((f"the model's {key.replace('_', ' ')}", identity[key]))
    return [*items, ("the weights (digest of their values)", tree_digest(variables)),
            ("the dataset", getattr(test_ds, "name", None)), ("the number of test images", len(test_ds)),
            ("the calibration images (digest)", tree_digest(list(calibration)))]


def agree_on_inputs(processes: Processes, identity: Mapping[str, Any], variables, test_ds,
                    calibration: Sequence[np.ndarray]) -> None:
    """:func:`agree` on :func:`input_settings` (its digests computed in multi-process runs only)."""
    if processes.multi:
        agree(input_settings(identity, variables, test_ds, calibration), processes, "inputs")
