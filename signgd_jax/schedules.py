"""Step-size schedules ``eta_t``, t = 1..T, shared by every neuron, the codec and the decoder.

One rule computes them, whether the parameters are Python numbers, arrays, or traced values
(``jax.vmap`` over ``snn.with_schedule(eta0=...)``): each parameter is taken as a float32 value
and read as the shortest decimal that rounds to it (``0.15`` stays ``0.15`` whether it was
passed as a Python float or a float32 array), ``eta_t`` is evaluated in float64 on the host
(``eta0 * gamma**(t-1)`` as the reference implementation computes it) and rounded to float32
(subnormal results, from t ~ 1670 with the defaults, to 0).
Traced parameters reach the host through ``jax.pure_callback``, so a swept schedule gives the
same numbers as a separate run with the same values.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("exponential", "inverse", "constant")


def _as_decimal(values) -> np.ndarray:
    """float64 values of the shortest decimals that round to ``float32(values)``."""
    as32 = np.asarray(values, np.float32)
    return np.array([float(str(v)) for v in as32.ravel()], np.float64).reshape(as32.shape)


def _host_step_sizes(kind: str, num_steps: int, eta0, gamma) -> np.ndarray:
    """``eta_t`` in float64 from the decimal parameters, as float32; shape ``[..., num_steps]``."""
    eta0, gamma = np.broadcast_arrays(_as_decimal(eta0), _as_decimal(gamma))
    t = np.arange(1, num_steps + 1, dtype=np.float64)
    eta0, gamma = eta0[..., None], gamma[..., None]
    if kind == "exponential":
        etas = eta0 * gamma ** (t - 1)
    elif kind == "inverse":
        etas = eta0 / t
    else:
        etas = eta0 * np.ones_like(t)
    etas = etas.astype(np.float32)
    # float32 subnormals become 0, as on accelerators (and XLA:CPU) that flush them
    return np.where(np.abs(etas) < np.finfo(np.float32).tiny, np.float32(0), etas)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step sizes ``eta_t`` for t = 1..T.

    kind: 'exponential' (``eta0 * gamma**(t-1)``, the paper's default), 'inverse'
    (``eta0 / t``), 'constant' (``eta0``), or 'custom' with ``fn`` any optax schedule
    (``fn(t-1)`` gives ``eta_t``). ``eta0`` and ``gamma`` are pytree leaves, so a whole
    simulation can be ``vmap``-ed over them; see the module docstring for how they are read.
    """

    eta0: Any = 0.15
    gamma: Any = 0.95
    kind: str = dataclasses.field(default="exponential", metadata=dict(static=True))
    fn: Callable | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __post_init__(self):
        if self.kind not in SCHEDULES + ("custom",):
            raise ValueError(f"unknown schedule {self.kind!r}; supported: {', '.join(SCHEDULES)} or an optax schedule")

    def step_sizes(self, num_steps: int):
        """``eta_t`` for t = 1..num_steps, float32, shape ``[num_steps]``."""
        if self.kind == "custom":
            return jnp.asarray(jax.vmap(self.fn)(jnp.arange(num_steps)), jnp.float32)
        params = (self.eta0, self.gamma)
        if not any(isinstance(p, jax.core.Tracer) for p in params):
            return jnp.asarray(_host_step_sizes(self.kind, num_steps, *params))
        eta0, gamma = (jnp.asarray(p, jnp.float32) for p in params)
        shape = jax.ShapeDtypeStruct((*jnp.broadcast_shapes(eta0.shape, gamma.shape), num_steps), jnp.float32)
        return jax.pure_callback(lambda e, g: _host_step_sizes(self.kind, num_steps, e, g), shape, eta0, gamma,
                                 vmap_method="broadcast_all")


def make_schedule(schedule="exponential", eta0=0.15, gamma=0.95) -> Schedule:
    """A :class:`Schedule` from a name, an existing Schedule, or an optax schedule callable."""
    if isinstance(schedule, Schedule):
        return schedule
    if callable(schedule):
        return Schedule(eta0=eta0, gamma=gamma, kind="custom", fn=schedule)
    return Schedule(eta0=eta0, gamma=gamma, kind=schedule)


def subgradient_step_sizes(num_steps: int):
    """The integrate-and-fire baseline's ``eta_t = 1/(t+1)``."""
    return jnp.asarray(1.0 / (np.arange(1, num_steps + 1, dtype=np.float64) + 1.0), jnp.float32)
