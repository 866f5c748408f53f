"""Data parallelism for evaluation: every batch is split over all devices, of one process or
of all processes of a multi-process run (:mod:`~signgd_jax.commands.evaluate.distributed`).

One 1-D mesh ``("batch",)`` over ``jax.devices()`` (ordered by process); images and labels are
placed with ``NamedSharding(mesh, P("batch"))`` and the network (ANN variables or the SNN
pytree) is replicated with ``NamedSharding(mesh, P())``. XLA then runs each device on its slice
of the batch: the SNN has no interaction between the images of a batch, so no communication
happens except summing the tallies (:meth:`DataParallel.count_correct`,
:meth:`DataParallel.to_host`), which come back as replicated values. On one device this is
plain single-device execution.

In a single process the arrays given to :meth:`DataParallel.shard` are whole batches; in a
multi-process run they are this process's rows of the batch (:meth:`DataParallel.local_size`
of them), as :meth:`DataParallel.padded_batches` yields them.
"""
from __future__ import annotations

import collections
import functools
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from signgd_jax import data
from signgd_jax.commands.evaluate import distributed

BATCH_AXIS = "batch"


class DataParallel:
    """The mesh, the batch and replicated shardings, batch-size rounding, this process's rows
    of every batch, and the tallies brought back to the host."""

    def __init__(self, devices: Optional[Sequence[jax.Device]] = None):
        self.processes = distributed.current()
        devices = list(jax.devices() if devices is None else devices)
        self.devices = distributed.process_devices(devices) if self.processes.multi else devices
        self.mesh = Mesh(np.asarray(self.devices), (BATCH_AXIS,))
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(BATCH_AXIS))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        mine = [i for i, d in enumerate(self.devices) if d.process_index == self.processes.index]
        if not mine or mine != list(range(mine[0], mine[0] + len(mine))):
            raise ValueError(f"process {self.processes.index} holds mesh positions {mine}: "
                             "need a contiguous, non-empty block")
        per_process = collections.Counter(d.process_index for d in self.devices)
        if len(set(per_process.values())) > 1:
            raise ValueError(f"every process needs the same number of devices, got {dict(per_process)}")
        self.local_block = (mine[0], len(mine))  # (first mesh position, number of local devices)

    @property
    def size(self) -> int:
        return len(self.devices)

    def round_up(self, batch_size: int) -> int:
        """The smallest multiple of the device count that is >= ``batch_size``."""
        return -(-int(batch_size) // self.size) * self.size

    def local_rows(self, batch_size: int) -> tuple[int, int]:
        """``(lo, hi)``: the rows of a ``batch_size`` batch that this process holds."""
        return distributed.share_bounds(batch_size, self.size, *self.local_block)

    def local_size(self, batch_size: int) -> int:
        """How many rows of a ``batch_size`` batch this process gives :meth:`shard`."""
        lo, hi = self.local_rows(batch_size)
        return hi - lo

    def padded_batches(self, ds, batch_size: int, first: int = 0
                       ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """:func:`signgd_jax.data.padded_batches` from batch ``first`` on, with the loader's
        worker processes for photos (:func:`signgd_jax.data.default_workers`); in a multi-process
        run this process's rows of each (:meth:`local_rows`), after all processes checked that
        none of their rows holds NaN or Inf."""
        workers = data.default_workers(ds, data.num_batches(len(ds), batch_size, False) - first)
        if not self.processes.multi:
            yield from data.padded_batches(ds, batch_size, first=first, workers=workers)
            return
        for i, (images, labels, k) in enumerate(data.padded_batches(
                ds, batch_size, first=first, rows=self.local_rows(batch_size), workers=workers), start=first):
            finite = distributed.gather_rows(np.isfinite(images.reshape(len(images), -1)).all(axis=1),
                                             self.processes)
            if not finite.all():  # raised on every process alike, so none waits for the others
                from signgd_jax.commands.evaluate.errors import check_finite

                check_finite(np.where(finite, 0.0, np.nan)[:, None],
                             f"test batch {i} (batch size {batch_size}) of {ds.name}")
            yield images, labels, k

    def replicate(self, tree):
        """A copy of ``tree`` (any pytree of arrays, e.g. an SNN) on every device."""
        if not self.processes.multi:
            return jax.device_put(tree, self.replicated)

        def put(leaf):
            value = np.asarray(leaf)
            return jax.make_array_from_callback(value.shape, self.replicated, lambda index: value[index])

        return jax.tree.map(put, tree)

    def shard(self, batch):
        """``batch`` split over the devices: in one process its leading axis is a multiple of
        :attr:`size`; in a multi-process run it holds this process's rows (:meth:`local_size`)."""
        if not self.processes.multi:
            return jax.device_put(batch, self.batch_sharding)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
            self.batch_sharding, np.asarray(x), (len(x) * self.size // self.local_block[1], *np.shape(x)[1:])),
            batch)

    def count_correct(self, predictions, labels) -> jax.Array:
        """How many ``predictions`` (``[..., batch]`` class indices, sharded) equal ``labels``
        (this process's rows, or the batch), summed over the batch on the devices: int32
        ``[...]``, replicated (:meth:`to_host` reads it back, the same on every process).
        Padding rows carry label -1 and never count."""
        return self._count(predictions, self.shard(np.asarray(labels, np.int32)))

    @functools.cached_property
    def _count(self):
        return jax.jit(lambda p, y: jnp.sum(p == y, axis=-1, dtype=jnp.int32), out_shardings=self.replicated)

    def to_host(self, array) -> np.ndarray:
        """A device array (e.g. spike counts summed over the batch) as a host array, the same on
        every process."""
        if getattr(array, "is_fully_addressable", True) or getattr(array, "is_fully_replicated", False):
            return np.asarray(array)
        return np.asarray(self._replicate_array(array))

    @functools.cached_property
    def _replicate_array(self):
        return jax.jit(lambda a: a, out_shardings=self.replicated)
