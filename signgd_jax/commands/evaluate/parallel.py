"""Data parallelism for evaluation: every batch is split over all local devices.

One 1-D mesh ``("batch",)`` over ``jax.devices()``; images and labels are placed with
``NamedSharding(mesh, P("batch"))`` and the network (ANN variables or the SNN pytree) is
replicated with ``NamedSharding(mesh, P())``. XLA then runs each device on its slice of the
batch: the SNN has no interaction between the images of a batch, so no communication happens
except gathering the results. On one device this is plain single-device execution.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


class DataParallel:
    """The mesh, the batch and replicated shardings, and batch-size rounding."""

    def __init__(self, devices: Optional[Sequence[jax.Device]] = None):
        self.devices = list(jax.devices() if devices is None else devices)
        self.mesh = Mesh(np.asarray(self.devices), (BATCH_AXIS,))
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(BATCH_AXIS))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def size(self) -> int:
        return len(self.devices)

    def round_up(self, batch_size: int) -> int:
        """The smallest multiple of the device count that is >= ``batch_size``."""
        return -(-int(batch_size) // self.size) * self.size

    def replicate(self, tree):
        """A copy of ``tree`` (any pytree of arrays, e.g. an SNN) on every device."""
        return jax.device_put(tree, self.replicated)

    def shard(self, batch):
        """``batch`` (leading axis a multiple of :attr:`size`) split over the devices."""
        return jax.device_put(batch, self.batch_sharding)
