"""Neuronal dynamics: one object per conversion method, each neuron a pure ``(init, step)`` pair.

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

The dynamics (``DYNAMICS``; the SNN carries its object, ``SNN.dynamics``):

* ``paper``: the reference implementation: ``o = 0``; ReLUs rescaled to [0, 1] (``r = m``, the
  calibrated maximum); the float codec's estimate of the image is ``c_t * image``; GELU tracked
  as ``x sigmoid(1.702 x)``.
* ``improved``: ``o`` and ``r`` calibrated for every neuron (mean and largest deviation), so no
  target is out of reach; the float codec delivers the image exactly; every neuron tracks the
  ANN's own function. ``spike_levels=K`` makes it graded (:func:`signgd_neuron`).
* ``if``: the paper's baseline ("subgradient" dynamics = integrate-and-fire neurons with rate
  coding), ReLU networks only: ``eta_t = 1/(t+1)``, the image fed as is, ``x_t = x_{t-1} -
  eta_t (x_{t-1} - A(s_t))``, ``spike_t = H(x_t - v_{t-1})`` (no spike on a tie),
  ``v_t = v_{t-1} - eta_t (v_{t-1} - spike_t)``; max-pooling stays a max of spikes and the decoder
  averages the logits.
* ``qcfs``: integrate-and-fire neurons of a QCFS-trained network (:func:`qcfs_neuron`).
* ``ecmt``: expectation compensation and multi-threshold neurons (:func:`expectation_neuron`).

A neuron is made for one converted site, like an optax transformation for its
hyper-parameters: ``neuron = dynamics.neuron(site)``; ``state = neuron.init(batch)``;
``state, out, events = neuron.step(state, inputs, eta)``. Adding a method means adding one
:class:`Dynamics` here; nothing outside this module compares method names.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


def fire(kind: str, value, inputs, options: dict | None = None, dynamics=None):
    """``spike_t = H(v - phi(x))`` (float 0/1) for an output estimate ``value`` in the units of
    ``phi`` and input estimates ``inputs``, with the kind's tie rule; ``phi`` as ``dynamics``
    tracks it (None: the reference's, :attr:`signgd_jax.kinds.Kind.target`)."""
    row = kinds.get(kind)
    phi = None if dynamics is None else get(dynamics).target_of(row)
    return row.above(value, inputs, options or {}, phi).astype(value.dtype)


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
def _reference_target(row: kinds.Kind):
    """The kind's ``phi`` as the reference tracks it (GELU as ``x sigmoid(1.702 x)``)."""
    return row.target


def _ann_target(row: kinds.Kind):
    """The ANN's own function (GELU in the form the network uses: tanh, erf or sigmoid)."""
    return row.ann


def graded_level(gap, levels: int):
    """The graded neuron's step multiplier ``k = clip(floor(|gap| + 1/2), 1, K)`` for the gap
    ``|phi(x_t) - u_{t-1}| / (eta_t r)`` in step units: the nearest whole number of steps, halves
    rounded up, at least one (a signGD neuron always moves) and at most ``K``. A gap that is not
    finite (a ``x1/sqrt(x2)`` neuron with ``x2 <= 0``) moves one step."""
    k = jnp.floor(jnp.where(jnp.isfinite(gap), jnp.abs(gap), 1.0) + 0.5)
    return jnp.clip(k, 1, levels)


def signgd_neuron(site: Site, dynamics: "Dynamics") -> Neuron:
    """A signGD neuron layer; its state is the output estimate ``u = o + r v``.

    Binary (``dynamics.spike_levels == 1``): ``u_t = u_{t-1} - eta_t r (2 s_t - 1)`` with
    ``s_t = H(u_{t-1} - phi(x_t))``. Graded (``K = spike_levels > 1``): the same sign and tie
    rule, moved by ``k_t`` steps, ``u_t = u_{t-1} - eta_t r k_t (2 s_t - 1)`` with ``k_t`` from
    :func:`graded_level`: the neuron sends the integer ``q_t = -k_t (2 s_t - 1)`` in
    ``{-K..-1, 1..K}`` (``2K`` levels, ``log2(2K)`` bits). Its events are counted as the
    accumulations a receiver performs, ``k_t - 1 + s_t`` per synapse (see
    :mod:`signgd_jax.metrics`), which is ``s_t`` for ``K = 1``.
    """
    row, options = kinds.get(site.kind), site.option_dict
    phi = dynamics.target_of(row)
    levels = dynamics.spike_levels
    # the output's shape is the target's (a vector neuron's output need not be input-shaped)
    shape = jax.eval_shape(lambda *a0: row.target(*a0, **options), *site.a0)
    start = jnp.zeros(shape.shape, site.a0[0].dtype) if site.out_offset is None else site.out_offset

    def init(batch):
        return _per_batch(start, batch).astype(site.a0[0].dtype)

    def step(u, inputs, eta):
        spike = row.above(u, inputs, options, phi).astype(u.dtype)
        size = eta if site.out_scale is None else eta * site.out_scale
        if levels == 1:
            u = step_output(u, spike, size)
            return u, u, spike
        k = graded_level((phi(*inputs, **options) - u) / size, levels).astype(u.dtype)
        u = step_output(u, spike, size * k)
        return u, u, k - 1 + spike

    return Neuron(init, step)


def integrate_and_fire_neuron(site: Site, dynamics: "Dynamics" = None) -> Neuron:
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


def qcfs_neuron(site: Site, dynamics: "Dynamics" = None) -> Neuron:
    """A QCFS integrate-and-fire layer (Bu et al. 2022), in threshold units (the site's input is
    ``x / lambda``, its output is multiplied by ``lambda`` outside; :func:`signgd_jax.nn.qcfs`).

    State: membrane ``m`` (``m_0 = 1/2``, half the threshold) and the spike count ``n``;
    ``m <- m + z_t``, ``s_t = H(m - 1)`` (fires on reaching the threshold), ``m <- m - s_t``
    (reset by subtraction). The output is the spike ``s_t``; its estimate, the rate ``n / t``,
    equals ``clip(floor(z t + 1/2) / t, 0, 1)`` for a constant input ``z`` (the QCFS activation
    with ``L = t``)."""

    def init(batch):
        zeros = _per_batch(jnp.zeros_like(site.a0[0]), batch)
        return (zeros + 0.5, zeros, jnp.zeros((), zeros.dtype))

    def step(state, inputs, eta):
        membrane, count, steps = state
        membrane = membrane + inputs[0]
        spike = (membrane >= 1).astype(membrane.dtype)
        return (membrane - spike, count + spike, steps + 1), spike, spike

    def estimate(state):
        return state[1] / jnp.maximum(state[2], 1)

    return Neuron(init, step, estimate)


def multi_threshold(membrane, positive, negative, levels: int):
    """ECMT's multi-threshold neuron: at most one spike per step, of size ``theta 2**i``
    (``i < levels``, ``theta`` = ``positive`` above zero, ``negative`` below), the largest whose
    half-threshold the membrane reaches: fires ``+positive 2**i`` where
    ``m >= positive (2**i - 1/2)``, tried from the largest ``i`` down, else ``-negative 2**i``
    where ``-m >= negative (2**i - 1/2)``, else nothing. Returns ``(emitted value, whether it
    fired)``."""
    emitted = jnp.zeros_like(membrane)
    fired = jnp.zeros(membrane.shape, bool)
    for i in reversed(range(levels)):
        up = ~fired & (membrane >= positive * (2.0 ** i - 0.5))
        down = ~fired & ~up & (-membrane >= negative * (2.0 ** i - 0.5))
        emitted = emitted + jnp.where(up, positive * 2.0 ** i, 0) - jnp.where(down, negative * 2.0 ** i, 0)
        fired = fired | up | down
    return emitted, fired


def expectation_compensation(sums, steps, phi, options: dict, cumulative):
    """ECMT's expectation compensation for a module ``phi``: with ``sums`` the inputs summed over
    the ``steps`` steps so far, the output of this step is ``o_t = C_t - C_{t-1}``,
    ``C_t = t phi(sums / t)``, so the outputs up to step t sum to ``t phi(mean input)``.
    Returns ``(o_t, C_t)``; ``cumulative`` is ``C_{t-1}``."""
    now = steps * phi(*(s / steps for s in sums), **options)
    return now - cumulative, now


def expectation_neuron(site: Site, dynamics: "Dynamics") -> Neuron:
    """ECMT-style layer (Huang et al. 2024): expectation compensation, then a multi-threshold
    neuron with ``dynamics.spike_levels`` levels per sign.

    The module keeps the sum ``S_t`` of each input over the steps and emits
    :func:`expectation_compensation` (for a product of two inputs this is ECMT's attention
    neuron) into the membrane of a multi-threshold neuron, ``m_t = m_{t-1} + o_t - e_t``, which
    sends one power-of-two spike ``e_t`` (:func:`multi_threshold`; its largest spike of each sign
    is ``Site.thresholds``, the calibrated extremes, so ``theta = extreme / 2**(n-1)``).
    State: ``(S, C_t, m, t)``; what was sent so far is ``C_t - m_t``."""
    row, options = kinds.get(site.kind), site.option_dict
    levels = dynamics.spike_levels
    positive, negative = (extreme / 2.0 ** (levels - 1) for extreme in site.thresholds)

    def init(batch):
        sums = tuple(_per_batch(jnp.zeros_like(a), batch) for a in site.a0)
        shape = jax.eval_shape(lambda *a: row.ann(*a, **options), *sums)
        zeros = jnp.zeros(shape.shape, shape.dtype)
        return (sums, zeros, zeros, jnp.zeros((), shape.dtype))

    def step(state, inputs, eta):
        sums, cumulative, membrane, steps = state
        steps = steps + 1
        sums = tuple(s + z for s, z in zip(sums, inputs))
        out, cumulative = expectation_compensation(sums, steps, row.ann, options, cumulative)
        emitted, fired = multi_threshold(membrane + out, positive, negative, levels)
        return (sums, cumulative, membrane + out - emitted, steps), emitted, fired.astype(emitted.dtype)

    def estimate(state):
        sums, cumulative, membrane, steps = state
        return (cumulative - membrane) / jnp.maximum(steps, 1)

    return Neuron(init, step, estimate)


# ----------------------------------------------------------------------------- calibration
def _no_units(kind: str, statistics, spread=None) -> dict:
    return {}


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


def _calibrated_extremes(kind: str, statistics, spread=None) -> dict:
    """Multi-threshold units: the largest spike ``theta 2**(n-1)`` of each sign is the
    calibrated extreme output of that sign at each position (at least 1e-5)."""
    positive = jnp.maximum(statistics.maximum, 1e-5)
    negative = jnp.maximum(-statistics.minimum, 1e-5)
    return dict(thresholds=(positive.astype(jnp.float32), negative.astype(jnp.float32)))


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


# ----------------------------------------------------------------------------- step sizes and decoders
def _schedule_steps(schedule: Schedule, num_steps: int):
    return schedule.step_sizes(num_steps)


def _subgradient_steps(schedule: Schedule, num_steps: int):
    return subgradient_step_sizes(num_steps)


def _mean_steps(schedule: Schedule, num_steps: int):
    """``eta_t = 1/t``: the running average with these steps is the exact mean of t values."""
    return jnp.asarray(1.0 / np.arange(1, num_steps + 1, dtype=np.float64), jnp.float32)


def _signgd_input(codec: str, exact: bool):
    def network_input(f, images, eta, key):
        _, estimate = encode(codec, f, images, eta, key, exact)
        return estimate, estimate

    return network_input


def _image_as_is(state, images, eta, key):
    return images, state


class Decoding(NamedTuple):
    """How the logits are read out: ``init(a0, batch) -> state``;
    ``step(state, outputs, eta) -> (state, logits)``."""

    init: Callable
    step: Callable


def _logits_as_is(state, logits, eta):
    return state, logits


def _averaged_logits(state, logits, eta):
    averaged = average(state, logits, eta)
    return averaged, averaged


AS_IS = Decoding(lambda a0, batch: (), _logits_as_is)
AVERAGED = Decoding(lambda a0, batch: jnp.zeros((batch, *a0.shape[1:]), a0.dtype), _averaged_logits)


# ----------------------------------------------------------------------------- the dynamics table
@dataclasses.dataclass(frozen=True)
class Dynamics:
    """One conversion method: how each site becomes a neuron layer, its units, step sizes,
    network input and decoder. The SNN carries it (``SNN.dynamics``, a static field); nothing
    else compares method names.

    layer(site, dynamics) -> Neuron; site_units(kind, statistics, spread) -> the Site
    fields it calibrates (in_scale, out_scale, out_offset, thresholds); kinds: the site kinds it
    converts (None: all); target_of(kind row) -> the function its neurons track; expands: the
    site kinds taken apart before conversion (:mod:`signgd_jax.expand`); passes_probe(kind):
    whether a site forwards its inputs in the probe pass (a stateless operation);
    step_sizes(schedule, T); encodes: whether the image enters through the signGD codec (and
    neuron inputs carry the A(1)+A(0) correction), else as is every step; network_input(codec) -> fn(state, images, eta, key) -> (network input, state); decoding;
    spike_levels: levels a neuron sends per step on each side (graded signGD ``K``, ECMT's
    ``n``); levels_per_step: distinct values one neuron can send in a step (its bits are the
    log2); takes_spread: whether site_units uses a spread (improved mode's ranges).
    """

    name: str
    layer: Callable
    site_units: Callable
    kinds: tuple | None = None
    kinds_text: str = ""
    target_of: Callable = _reference_target
    expands: tuple = ()
    passes_probe: Callable[[str], bool] = lambda kind: False
    step_sizes_of: Callable = _schedule_steps
    encodes: bool = True
    exact_codec: bool = False
    decoding: Decoding = AS_IS
    spike_levels: int = 1
    levels_per_step: Callable[[int], int] = lambda k: 2
    takes_spread: bool = False
    takes_levels: bool = False  # whether spike_levels may be set (graded signGD, ECMT)

    @property
    def uses_schedule(self) -> bool:
        """Whether the SNN's schedule sets this method's step sizes (else its own, e.g. ``1/t``)."""
        return self.step_sizes_of is _schedule_steps

    @property
    def label(self) -> str:
        """The name, with the levels where they are not the default: 'improved', 'improved K=3'."""
        return self.name if self == self.with_spike_levels(None) else f"{self.name} K={self.spike_levels}"

    @property
    def bits_per_step(self) -> float:
        """``log2`` of the values one neuron can send in a step (1 for binary spikes)."""
        return math.log2(self.levels_per_step(self.spike_levels))

    @property
    def max_events_per_step(self) -> int:
        """The most events one neuron counts in one step (``k - 1 + s <= K`` for graded signGD)."""
        return self.spike_levels if self.layer is signgd_neuron else 1

    def with_spike_levels(self, levels: int | None) -> "Dynamics":
        """This dynamics with ``levels`` per step and side (None: its default); K = 1 for
        improved mode is the binary neuron itself (the same object, the same program)."""
        default = DYNAMICS[self.name].spike_levels if self.name in DYNAMICS else 1
        levels = default if levels is None else check_spike_levels(levels, self)
        if levels == self.spike_levels:
            return self
        changed = dataclasses.replace(self, spike_levels=levels)
        return DYNAMICS[self.name] if changed == DYNAMICS.get(self.name) else changed

    def neuron(self, site: Site) -> Neuron:
        return self.layer(site, self)

    def step_sizes(self, schedule: Schedule, num_steps: int):
        return self.step_sizes_of(schedule, num_steps)

    def network_input(self, codec: str):
        return _signgd_input(codec, self.exact_codec) if self.encodes else _image_as_is

    def decode(self, state, logits, eta):
        return self.decoding.step(state, logits, eta)

    def initial_decoder(self, decoder_a0, batch: int):
        return self.decoding.init(decoder_a0, batch)

    def draws_random(self, codec: str) -> bool:
        return self.encodes and codec == "stochastic"

    def check_kinds(self, site_kinds) -> None:
        unsupported = sorted({k for k in site_kinds if self.kinds is not None and k not in self.kinds})
        if unsupported:
            raise UnsupportedOperation(
                f"the {self.name!r} dynamics converts {self.kinds_text} only ({', '.join(self.kinds)}); "
                f"this network has {', '.join(unsupported)}")


def check_spike_levels(levels, dynamics: Dynamics | None = None) -> int:
    """``levels`` as an int >= 1; a ValueError otherwise, or for a dynamics without levels."""
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"spike_levels must be a positive integer, got {levels!r}")
    if dynamics is not None and not dynamics.takes_levels and levels != 1:
        raise ValueError(f"spike_levels applies to the graded dynamics {', '.join(LEVELLED)} "
                         f"(got spike_levels={levels} with dynamics={dynamics.name!r})")
    return int(levels)


PAPER = Dynamics("paper", signgd_neuron, _relu_scaling, kinds=kinds.ELEMENTWISE_KINDS, kinds_text="elementwise neurons "
                 "(for the vector neurons softmax, layer_norm and bilinear use dynamics='improved')",
                 expands=("layer_norm", "max_pool"))
IMPROVED = Dynamics("improved", signgd_neuron, _calibrated_range, target_of=_ann_target, exact_codec=True,
                    takes_spread=True, takes_levels=True, levels_per_step=lambda k: 2 * k)
INTEGRATE_AND_FIRE = Dynamics("if", integrate_and_fire_neuron, _relu_scaling, kinds=("relu", "maximum"),
                              kinds_text="ReLU networks", expands=("max_pool",),
                              passes_probe=lambda kind: kind == "maximum", step_sizes_of=_subgradient_steps,
                              encodes=False, decoding=AVERAGED)
QCFS = Dynamics("qcfs", qcfs_neuron, _no_units, kinds=("qcfs",), kinds_text="QCFS-trained networks "
                "(signgd_jax.nn.qcfs activations; train with --activation qcfs)", step_sizes_of=_mean_steps,
                encodes=False, decoding=AVERAGED)
ECMT = Dynamics("ecmt", expectation_neuron, _calibrated_extremes, target_of=_ann_target,
                step_sizes_of=_mean_steps, encodes=False, decoding=AVERAGED, spike_levels=8, takes_levels=True, levels_per_step=lambda n: 2 * n + 1)
DYNAMICS = {d.name: d for d in (PAPER, IMPROVED, INTEGRATE_AND_FIRE, QCFS, ECMT)}
NAMES = tuple(DYNAMICS)
LEVELLED = tuple(name for name, d in DYNAMICS.items() if d.takes_levels)


def get(dynamics, spike_levels: int | None = None) -> Dynamics:
    """The :class:`Dynamics` named ``dynamics`` (or the object itself), with ``spike_levels``
    where given; a ValueError naming the supported dynamics otherwise."""
    if isinstance(dynamics, Dynamics):
        chosen = dynamics
    else:
        try:
            chosen = DYNAMICS[dynamics]
        except (KeyError, TypeError):
            raise ValueError(f"unknown dynamics {dynamics!r}; supported: {', '.join(NAMES)}") from None
    return chosen if spike_levels is None else chosen.with_spike_levels(spike_levels)


# ----------------------------------------------------------------------------- one neuron
def neuron_trajectory(kind: str, x, num_steps: int, *, dynamics="paper", spike_levels: int | None = None,
                      schedule="exponential", eta0: float = 0.15, gamma: float = 0.95, out_offset=None,
                      out_scale=None, **options):
    """Output estimates ``u_t``, t = 1..num_steps, of one neuron whose input estimate is held
    at the constant array ``x`` (shape ``[num_steps, *x.shape]``), in the units of ``phi``.

    kind: a unary kind of :mod:`signgd_jax.kinds` (options such as ``negative_slope``).
    dynamics: 'paper' (``v_0 = 0``), 'improved' (output ``out_offset + out_scale * v``; by
    default calibrated from ``x`` itself, ``o = phi/2``, ``r = max(|phi|/2, 1e-5)``, so any
    target is reached; ``spike_levels`` K for the graded neuron), 'if' (relu only), 'qcfs' (the
    qcfs kind; its spike rate) or 'ecmt' (the mean of its outputs; thresholds from ``|phi(x)|``).
    ``schedule``: a name, a Schedule or an optax schedule. It runs the same neuron ``step`` as
    :func:`signgd_jax.simulate`.
    """
    chosen = get(dynamics, spike_levels)
    if kinds.get(kind).arity != 1:
        raise ValueError(f"no single-input neuron {kind!r}; supported: {', '.join(kinds.UNARY_KINDS)}")
    chosen.check_kinds([kind])
    x = jnp.asarray(x, jnp.float32)[None]
    site = Site(kind=kind, options=tuple(sorted(options.items())), a0=(x,), a1_plus_a0=(2 * x,))
    phi = chosen.target_of(kinds.get(kind))(x, **options)
    if chosen.site_units is _calibrated_range:
        if out_offset is None:
            out_offset, out_scale = phi / 2, jnp.maximum(jnp.abs(phi) / 2, 1e-5)
        site = site.replace(out_offset=jnp.broadcast_to(jnp.asarray(out_offset, jnp.float32), x.shape),
                            out_scale=jnp.broadcast_to(jnp.asarray(out_scale, jnp.float32), x.shape))
    elif chosen.site_units is _calibrated_extremes:
        site = site.replace(**chosen.site_units(kind, Statistics(phi, phi, phi, phi * phi)))
    neuron = chosen.neuron(site)
    etas = chosen.step_sizes(make_schedule(schedule, eta0, gamma), num_steps)

    def one_step(state, eta):
        state, _, _ = neuron.step(state, (x,), eta)
        return state, neuron.estimate(state)[0]

    return jax.lax.scan(one_step, neuron.init(1), etas)[1]
