"""Sign-gradient-descent (signGD) neuronal dynamics as pure functions over arrays.

A signGD neuron for a nonlinearity ``phi`` keeps two estimates, updated with the step size
``eta_t`` shared by every neuron of the network (the *schedule*):

* input estimate  ``x``:  ``x_0 = A(0)``,   ``x_t = x_{t-1} - eta_t * (2 A(s_t) - A(1) - A(0))``
* output estimate ``v``:  ``v_0 = 0``,      ``spike_t = H(v_{t-1} - phi(x_t))``,
  ``v_t = v_{t-1} - eta_t * (2 spike_t - 1)``

``A`` is the affine sub-network feeding the neuron, ``s_t`` this step's upstream spikes, and
``offset = A(1) + A(0)`` is found once by the converter's probe pass. ``H(0)`` is 1 for relu,
square and exp and 0 for every other kind (the reference implementation's tie rules). Because
all layers share the schedule, ``x_t`` equals ``A(v_t of upstream)``: spikes carry signs, the
schedule carries magnitudes. With ``eta_t = eta0 * gamma**(t-1)`` an output estimate moves at most
``eta0 / (1 - gamma)`` (3.0 with the defaults) from where it starts.

The paper's baseline ("subgradient" dynamics, equivalent to integrate-and-fire neurons with
rate coding) uses ``eta_t = 1/(t+1)``, ``x_t = x_{t-1} - eta_t (x_{t-1} - A(s_t))``,
``spike_t = H(x_t - v_{t-1})`` (no spike on a tie) and ``v_t = v_{t-1} - eta_t (v_{t-1} - spike_t)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from signgd_jax.nn import BINARY_KINDS, UNARY_KINDS

# ----------------------------------------------------------------------------- schedules
SCHEDULES = ("exponential", "inverse", "constant")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step sizes ``eta_t`` for t = 1..T.

    kind: 'exponential' (``eta0 * gamma**(t-1)``, the paper's default), 'inverse'
    (``eta0 / t``), 'constant' (``eta0``), or 'custom' with ``fn`` any optax schedule
    (``fn(t-1)`` gives ``eta_t``). ``eta0`` and ``gamma`` are pytree leaves, so a whole
    simulation can be ``vmap``-ed over them.
    """

    eta0: Any = 0.15
    gamma: Any = 0.95
    kind: str = dataclasses.field(default="exponential", metadata=dict(static=True))
    fn: Callable | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __post_init__(self):
        if self.kind not in SCHEDULES + ("custom",):
            raise ValueError(f"unknown schedule {self.kind!r}; supported: {', '.join(SCHEDULES)} or an optax schedule")

    def step_sizes(self, num_steps: int):
        """``eta_t`` for t = 1..num_steps, float32. Computed in float64 on the host when the
        parameters are concrete (as the reference does), in float32 on device when traced."""
        t = np.arange(1, num_steps + 1)
        if self.kind == "custom":
            return jnp.asarray(jax.vmap(self.fn)(jnp.arange(num_steps)), jnp.float32)
        concrete = not any(isinstance(p, jax.core.Tracer) for p in (self.eta0, self.gamma))
        xp, t = (np, t.astype(np.float64)) if concrete else (jnp, jnp.asarray(t, jnp.float32))
        eta0 = xp.asarray(self.eta0, dtype=t.dtype)
        if self.kind == "exponential":
            etas = eta0 * xp.asarray(self.gamma, dtype=t.dtype) ** (t - 1)
        elif self.kind == "inverse":
            etas = eta0 / t
        else:
            etas = eta0 * xp.ones_like(t)
        return jnp.asarray(etas, jnp.float32)


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


# ----------------------------------------------------------------------------- neurons
def target(kind: str, x, options: dict):
    """``phi`` of a unary neuron: the value its output estimate tracks."""
    if kind == "relu":
        return jnp.maximum(x, 0)
    if kind == "leaky_relu":
        return jnp.where(x >= 0, x, options.get("negative_slope", 0.01) * x)
    if kind == "gelu":
        return x * jax.nn.sigmoid(1.702 * x)
    if kind == "abs":
        return jnp.abs(x)
    if kind == "square":
        return jnp.square(x)
    if kind == "exp":
        return jnp.exp(x)
    raise ValueError(f"no unary neuron for {kind!r}; supported: {', '.join(UNARY_KINDS)}")


FIRES_ON_TIE = ("relu", "square", "exp")


def fire(kind: str, v, xs, options: dict | None = None, out_offset=None, out_scale=None):
    """``spike_t`` (float 0/1) of a neuron with output estimate ``v`` and input estimates ``xs``.

    In improved mode the output estimate is kept in calibrated units: the represented value
    is ``out_offset + out_scale * v``, compared here as ``v`` against ``(phi - offset)/scale``.
    """
    options = options or {}
    if kind in UNARY_KINDS:
        goal = target(kind, xs[0], options)
        if out_offset is not None:
            goal = (goal - out_offset) / out_scale
        above = v >= goal if kind in FIRES_ON_TIE else v > goal
        return above.astype(v.dtype)
    x1, x2 = xs
    value = v if out_offset is None else out_offset + out_scale * v
    if kind == "maximum":
        above = value > jnp.maximum(x1, x2)
    elif kind == "product":
        above = value > x1 * x2
    elif kind == "rsqrt_mul":
        # compare sqrt(x2) * v with x1 (no division); where x2 <= 0 the neuron stays silent
        above = (x2 > 0) & (jnp.sqrt(jnp.maximum(x2, 0)) * value - x1 > 0)
    elif kind == "divide":
        above = x2 * value - x1 > 0
    else:
        raise ValueError(f"no neuron for {kind!r}; supported: {', '.join(UNARY_KINDS + BINARY_KINDS)}")
    return above.astype(v.dtype)


def track_input(x, a_now, offset, step_size):
    """``x_t = x_{t-1} - eta_t (2 A(s_t) - (A(1) + A(0)))``: an input estimate (also the decoder)."""
    return x - step_size * (2 * a_now - offset)


def step_output(v, spike, step_size):
    """``v_t = v_{t-1} - eta_t (2 spike_t - 1)``: one sign-gradient step on ``|v - phi(x)|``."""
    return v - step_size * (2 * spike - 1)


def average(x, value, step_size):
    """The baseline's running average ``x_t = x_{t-1} - eta_t (x_{t-1} - value)``."""
    return x - step_size * (x - value)


# ----------------------------------------------------------------------------- codecs
CODECS = ("float", "spike", "stochastic")


def encode(codec: str, f, image, step_size, key=None, exact=False):
    """One encoder step. State ``f`` (``f_0 = 0``) estimates the image; ``g = f - image``.

    'float' emits ``(1 + g)/2`` and steps ``f -= eta g``; 'spike' emits ``H(g)`` and steps
    with its sign; 'stochastic' emits ``Bernoulli(sigmoid(g))``. With ``exact`` (improved
    mode, float codec) ``g`` is divided by ``eta_t`` so that ``f_t`` equals the image from the
    first step on, instead of ``c_t * image`` with ``c_t = 1 - prod(1 - eta_k)`` <= 0.956.
    Returns ``(emitted, new_f)``.
    """
    g = f - image
    if codec == "float":
        if exact:
            g = g / step_size
        return (1 + g) / 2, f - step_size * g
    if codec == "spike":
        spike = (g > 0).astype(image.dtype)
    elif codec == "stochastic":
        spike = jax.random.bernoulli(key, jax.nn.sigmoid(g)).astype(image.dtype)
    else:
        raise ValueError(f"unknown codec {codec!r}; supported: {', '.join(CODECS)}")
    return spike, f - step_size * (2 * spike - 1)


# ----------------------------------------------------------------------------- one neuron
def neuron_trajectory(kind: str, x, num_steps: int, *, mode: str = "paper", schedule="exponential",
                      eta0: float = 0.15, gamma: float = 0.95, out_offset=None, out_scale=None, **options):
    """Output estimates ``v_t``, t = 1..num_steps, of one neuron whose input estimate is held
    at the constant array ``x`` (shape ``[num_steps, *x.shape]``).

    kind: 'relu', 'leaky_relu' (option ``negative_slope``), 'gelu' (tracks
    ``x*sigmoid(1.702x)``), 'abs', 'square', 'exp'. mode: 'paper' (signGD, ``v_0 = 0``),
    'improved' (signGD whose output is represented as ``out_offset + out_scale * v``; the
    defaults calibrate them from ``x`` itself, so any target is reached), or 'if'
    (integrate-and-fire rate neuron of the baseline, relu only). ``schedule``: a name, a
    :class:`Schedule` or an optax schedule. The returned values are in the units of ``phi``.
    """
    if kind not in UNARY_KINDS:
        raise ValueError(f"no single-input neuron {kind!r}; supported: {', '.join(UNARY_KINDS)}")
    x = jnp.asarray(x, jnp.float32)
    if mode == "if":
        if kind != "relu":
            raise ValueError("the integrate-and-fire baseline exists for relu only")
        etas = subgradient_step_sizes(num_steps)

        def if_step(v, eta):
            spike = (x > v).astype(x.dtype)
            v = average(v, spike, eta)
            return v, v

        return jax.lax.scan(if_step, jnp.zeros_like(x), etas)[1]
    if mode not in ("paper", "improved"):
        raise ValueError(f"unknown mode {mode!r}; supported: paper, improved, if")
    etas = make_schedule(schedule, eta0, gamma).step_sizes(num_steps)
    if mode == "improved" and out_offset is None:
        phi = target(kind, x, options)
        out_offset, out_scale = phi / 2, jnp.maximum(jnp.abs(phi) / 2, 1e-5)
    elif mode == "paper":
        out_offset = out_scale = None

    def step(v, eta):
        spike = fire(kind, v, (x,), options, out_offset, out_scale)
        v = step_output(v, spike, eta)
        shown = v if out_offset is None else out_offset + out_scale * v
        return v, shown

    return jax.lax.scan(step, jnp.zeros_like(x), etas)[1]
