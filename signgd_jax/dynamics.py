"""Neuronal dynamics: one object per mode, each neuron a pure ``(init, step)`` pair.

A signGD neuron for a nonlinearity ``phi`` (its kind, :mod:`signgd_jax.kinds`) keeps two
estimates, updated with the step size ``eta_t`` shared by every neuron of the network:

* input estimate  ``x``:  ``x_0 = A(0)``,   ``x_t = x_{t-1} - eta_t * (2 A(s_t) - A(1) - A(0))``
* output estimate ``v``:  ``v_0 = 0``,      ``spike_t = H(v_{t-1} - phi(x_t))``,
  ``v_t = v_{t-1} - eta_t * (2 spike_t - 1)``

``A`` is the affine sub-network feeding the neuron and ``s_t`` this step's upstream spikes.
Because all layers share the schedule, ``x_t`` equals ``A`` applied to the upstream output
estimates, so the network step (``signgd_jax.simulate``) evaluates the affine layers on the
estimates and hands each neuron its ``x_t``; a neuron keeps only its output estimate, in the
units of ``phi``: ``u = o + r v`` (``o`` = ``Site.out_offset``, ``r`` = ``Site.out_scale``).

The modes (``DYNAMICS``):

* ``paper``: the reference implementation: ``o = 0``; ReLUs rescaled to [0, 1] (``r = m``, the
  calibrated maximum); the float codec's estimate of the image is ``c_t * image``.
* ``improved``: ``o`` and ``r`` calibrated for every neuron (mean and largest deviation), so no
  target is out of reach, and the float codec delivers the image exactly.
* ``if``: the paper's baseline ("subgradient" dynamics = integrate-and-fire neurons with rate
  coding), ReLU networks only: ``eta_t = 1/(t+1)``, the image fed as is, ``x_t = x_{t-1} -
  eta_t (x_{t-1} - A(s_t))``, ``spike_t = H(x_t - v_{t-1})`` (no spike on a tie),
  ``v_t = v_{t-1} - eta_t (v_{t-1} - spike_t)``; max-pooling stays a max of spikes and the decoder
  averages the logits.

A neuron is made for one converted site, like an optax transformation for its
hyper-parameters: ``neuron = DYNAMICS[mode].neuron(site)``; ``state = neuron.init(batch)``;
``state, out, spikes = neuron.step(state, inputs, eta)``. Adding a dynamics means adding one
:class:`Dynamics` here; nothing outside this module compares mode names.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from signgd_jax import kinds
from signgd_jax.interpret import UnsupportedOperation
from signgd_jax.codecs import CODECS, check_codec, encode  # noqa: F401 (CODECS, check_codec re-exported)
from signgd_jax.schedules import Schedule, make_schedule, subgradient_step_sizes  # noqa: F401
from signgd_jax.types import Site


class Neuron(NamedTuple):
    """A layer of neurons as a pair of pure functions.

    init(batch) -> state;  step(state, inputs, eta) -> (state, output, spikes), ``inputs``
    being this step's input estimates ``x_t`` (signGD) or ``A(s_t)`` (baseline), ``output``
    what flows on to the next layer; estimate(state) -> the output estimate in the units of
    ``phi`` (for signGD the state itself, for the baseline its firing rate).
    """

    init: Callable
    step: Callable
    estimate: Callable = lambda state: state


def _per_batch(a, batch: int):
    return jnp.broadcast_to(a, (batch, *jnp.shape(a)[1:]))


# ----------------------------------------------------------------------------- equations
def target(kind: str, x, options: dict | None = None):
    """``phi`` of a unary neuron: the value its output estimate tracks."""
    return kinds.target(kind, x, options)


def fire(kind: str, value, inputs, options: dict | None = None):
    """``spike_t = H(v - phi(x))`` (float 0/1) for an output estimate ``value`` in the units of
    ``phi`` and input estimates ``inputs``, with the kind's tie rule."""
    return kinds.get(kind).above(value, inputs, options or {}).astype(value.dtype)


def step_output(v, spike, step_size):
    """``v_t = v_{t-1} - eta_t (2 spike_t - 1)``: one sign-gradient step on ``|v - phi(x)|``."""
    return v - step_size * (2 * spike - 1)


def track_input(x, a_now, offset, step_size):
    """``x_t = x_{t-1} - eta_t (2 A(s_t) - (A(1) + A(0)))``: an input estimate (also the decoder)."""
    return x - step_size * (2 * a_now - offset)


def average(x, value, step_size):
    """The baseline's running average ``x_t = x_{t-1} - eta_t (x_{t-1} - value)``."""
    return x - step_size * (x - value)


# ----------------------------------------------------------------------------- neurons
def signgd_neuron(site: Site) -> Neuron:
    """A signGD neuron layer; its state is the output estimate ``u = o + r v``."""
    row, options = kinds.get(site.kind), site.option_dict
    # the output's shape is the target's (a vector neuron's output need not be input-shaped)
    shape = jax.eval_shape(lambda *a0: row.target(*a0, **options), *site.a0)
    start = jnp.zeros(shape.shape, site.a0[0].dtype) if site.out_offset is None else site.out_offset

    def init(batch):
        return _per_batch(start, batch).astype(site.a0[0].dtype)

    def step(u, inputs, eta):
        spike = row.above(u, inputs, options).astype(u.dtype)
        u = step_output(u, spike, eta if site.out_scale is None else eta * site.out_scale)
        return u, u, spike

    return Neuron(init, step)


def integrate_and_fire_neuron(site: Site) -> Neuron:
    """A baseline neuron layer: state ``(x, v)``; a max-pooling site is a stateless max of
    spikes, whose output (nonzero where a spike wins) counts as its spikes."""

    def scaled(inputs):
        return [z * site.in_scale for z in inputs] if site.in_scale is not None else list(inputs)

    if site.kind == "maximum":
        def max_step(state, inputs, eta):
            out = jnp.maximum(*scaled(inputs))
            return state, out, (out != 0).astype(out.dtype)

        return Neuron(lambda batch: (), max_step, lambda state: None)

    def init(batch):
        x = _per_batch(site.a0[0], batch)
        return (x, jnp.zeros_like(x))

    def step(state, inputs, eta):
        x, v = state
        x = average(x, scaled(inputs)[0], eta)
        spike = (x > v).astype(x.dtype)
        v = average(v, spike, eta)
        return (x, v), spike if site.out_scale is None else spike * site.out_scale, spike

    def estimate(state):
        return state[1] if site.out_scale is None else state[1] * site.out_scale

    return Neuron(init, step, estimate)


# ----------------------------------------------------------------------------- calibration
def _relu_scaling(kind: str, statistics, spread=None) -> dict:
    """Paper-mode units: ``relu(z) = relu(z s) / s`` with ``s = 1/m`` (1 where ``m <= 1e-5``)."""
    if kind != "relu":
        return {}
    scale = (1.0 / jnp.where(statistics.maximum <= 1e-5, 1.0, statistics.maximum)).astype(jnp.float32)
    return dict(in_scale=scale, out_scale=1.0 / scale)


def _calibrated_range(kind: str, statistics, spread=None) -> dict:
    """Improved-mode units: ``u = o + r v`` with ``o`` the mean over the calibration images and
    ``r`` their largest deviation from it (``spread=None``), or ``spread`` standard deviations
    (robust to outliers: a range set by one extreme image makes every step ``r eta_t`` coarse)."""
    if spread is None:
        r = jnp.maximum(statistics.maximum - statistics.mean, statistics.mean - statistics.minimum)
    else:
        r = spread * statistics.deviation
    return dict(out_offset=statistics.mean, out_scale=jnp.where(r <= 1e-5, 1.0, r))


class Statistics(NamedTuple):
    """Per-position calibration statistics of one site's ANN output."""

    maximum: Any
    minimum: Any
    mean: Any
    mean_square: Any = None

    @property
    def deviation(self):
        """The standard deviation over the calibration images (from the mean and mean square)."""
        return jnp.sqrt(jnp.maximum(self.mean_square - jnp.square(self.mean), 0.0))


# ----------------------------------------------------------------------------- modes
def _signgd_input(codec: str, exact: bool):
    def network_input(f, images, eta, key):
        _, estimate = encode(codec, f, images, eta, key, exact)
        return estimate, estimate

    return network_input


def _image_as_is(state, images, eta, key):
    return images, state


def _logits_as_is(state, logits, eta):
    return state, logits


def _averaged_logits(state, logits, eta):
    averaged = average(state, logits, eta)
    return averaged, averaged


@dataclasses.dataclass(frozen=True)
class Dynamics:
    """One mode of simulation (see the module docstring).

    neuron(site) -> Neuron; kinds: the site kinds it converts (None: all);
    site_units(kind, statistics, spread) -> the Site fields (in_scale, out_scale, out_offset);
    spread: improved mode's range in standard deviations (None: the largest deviation);
    expands: the site kinds it converts as their decomposition (paper mode: a LayerNorm as the
    reference's square and x1/sqrt(x2) neurons, max-pooling as binary max neurons; the baseline
    the latter too; :mod:`signgd_jax.expand`);
    passes_probe(kind): whether a site forwards its inputs in the probe pass (a stateless
    operation) instead of emitting ones/zeros; step_sizes(schedule, T);
    network_input(codec) -> fn(state, images, eta, key) -> (network input, state) (the codec,
    or the image as is); decode(state, logits, eta) -> (state, logits) (as is, or averaged).
    """

    name: str
    neuron: Callable[[Site], Neuron]
    site_units: Callable
    kinds: tuple | None = None
    encodes: bool = True
    exact_codec: bool = False
    averages_logits: bool = False
    passes_probe: Callable[[str], bool] = lambda kind: False
    kinds_text: str = ""
    expands: tuple = ()  # site kinds taken apart before conversion (signgd_jax.expand)
    takes_spread: bool = False  # whether site_units uses a spread (improved mode's ranges)

    @property
    def uses_schedule(self) -> bool:
        """Whether the SNN's schedule sets this mode's step sizes (not the baseline's ``1/(t+1)``)."""
        return not self.averages_logits

    def step_sizes(self, schedule: Schedule, num_steps: int):
        return subgradient_step_sizes(num_steps) if self.averages_logits else schedule.step_sizes(num_steps)

    def network_input(self, codec: str):
        return _signgd_input(codec, self.exact_codec) if self.encodes else _image_as_is

    def decode(self, state, logits, eta):
        return (_averaged_logits if self.averages_logits else _logits_as_is)(state, logits, eta)

    def initial_decoder(self, decoder_a0, batch: int):
        return jnp.zeros((batch, *decoder_a0.shape[1:]), decoder_a0.dtype) if self.averages_logits else ()

    def draws_random(self, codec: str) -> bool:
        return self.encodes and codec == "stochastic"

    def check_kinds(self, site_kinds) -> None:
        unsupported = sorted({k for k in site_kinds if self.kinds is not None and k not in self.kinds})
        if unsupported:
            raise UnsupportedOperation(
                f"the {self.name!r} dynamics converts {self.kinds_text} only ({', '.join(self.kinds)}); "
                f"this network has {', '.join(unsupported)}")


PAPER = Dynamics("paper", signgd_neuron, _relu_scaling, kinds=kinds.ELEMENTWISE_KINDS, kinds_text="elementwise neurons "
                 "(for the vector neurons softmax, layer_norm and bilinear use dynamics='improved')",
                 expands=("layer_norm", "max_pool"))
IMPROVED = Dynamics("improved", signgd_neuron, _calibrated_range, exact_codec=True, takes_spread=True)
INTEGRATE_AND_FIRE = Dynamics("if", integrate_and_fire_neuron, _relu_scaling, kinds=("relu", "maximum"),
                              encodes=False, averages_logits=True, passes_probe=lambda kind: kind == "maximum",
                              kinds_text="ReLU networks", expands=("max_pool",))
DYNAMICS = {d.name: d for d in (PAPER, IMPROVED, INTEGRATE_AND_FIRE)}
MODES = tuple(DYNAMICS)


def get(mode: str) -> Dynamics:
    try:
        return DYNAMICS[mode]
    except KeyError:
        raise ValueError(f"unknown dynamics {mode!r}; supported: {', '.join(MODES)}") from None


# ----------------------------------------------------------------------------- one neuron
def neuron_trajectory(kind: str, x, num_steps: int, *, mode: str = "paper", schedule="exponential",
                      eta0: float = 0.15, gamma: float = 0.95, out_offset=None, out_scale=None, **options):
    """Output estimates ``u_t``, t = 1..num_steps, of one neuron whose input estimate is held
    at the constant array ``x`` (shape ``[num_steps, *x.shape]``), in the units of ``phi``.

    kind: a unary kind of :mod:`signgd_jax.kinds` (options such as ``negative_slope``).
    mode: 'paper' (``v_0 = 0``), 'improved' (output ``out_offset + out_scale * v``; by default
    calibrated from ``x`` itself, ``o = phi/2``, ``r = max(|phi|/2, 1e-5)``, so any target is
    reached) or 'if' (relu only). ``schedule``: a name, a Schedule or an optax schedule.
    It runs the same neuron ``step`` as :func:`signgd_jax.simulate`.
    """
    dynamics = get(mode)
    if kinds.get(kind).arity != 1:
        raise ValueError(f"no single-input neuron {kind!r}; supported: {', '.join(kinds.UNARY_KINDS)}")
    dynamics.check_kinds([kind])
    x = jnp.asarray(x, jnp.float32)[None]
    site = Site(kind=kind, options=tuple(sorted(options.items())), a0=(x,), offset=(2 * x,))
    if dynamics is IMPROVED:
        if out_offset is None:
            phi = target(kind, x, options)
            out_offset, out_scale = phi / 2, jnp.maximum(jnp.abs(phi) / 2, 1e-5)
        site = site.replace(out_offset=jnp.broadcast_to(jnp.asarray(out_offset, jnp.float32), x.shape),
                            out_scale=jnp.broadcast_to(jnp.asarray(out_scale, jnp.float32), x.shape))
    neuron = dynamics.neuron(site)
    etas = dynamics.step_sizes(make_schedule(schedule, eta0, gamma), num_steps)

    def one_step(state, eta):
        state, _, _ = neuron.step(state, (x,), eta)
        return state, neuron.estimate(state)[0]

    return jax.lax.scan(one_step, neuron.init(1), etas)[1]
