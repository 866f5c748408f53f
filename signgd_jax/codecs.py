"""Input codecs: how the image enters the network as a spike train.

Encoder state ``f`` (``f_0 = 0``) is the network's running estimate of the image; each step
``g_t = f_{t-1} - image``:

* 'float' (default) emits ``(1 + g_t)/2`` and steps ``f_t = f_{t-1} - eta_t g_t``; its estimate
  is ``c_t * image`` with ``c_t = 1 - prod_{k<=t}(1 - eta_k)`` (0.956 at most);
* 'exact float' (improved mode's float codec) divides ``g_t`` by ``eta_t``, so ``f_t`` is the
  image from the first step on; once ``eta_t`` has underflowed to 0 it emits ``1/2`` and keeps
  ``f`` (no 0/0);
* 'spike' emits ``H(g_t)`` and steps with its sign;
* 'stochastic' emits ``Bernoulli(sigmoid(g_t))`` and steps with its sign.

Each codec is ``encode(f, image, eta, key) -> (emitted, f_t)``. The network reads ``f_t``
(spikes carry signs, the schedule carries magnitudes); ``emitted`` is what a neuromorphic
input layer would send.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _float(f, image, eta, key):
    g = f - image
    return (1 + g) / 2, f - eta * g


def _exact_float(f, image, eta, key):
    g = f - image
    positive = eta > 0
    scaled = jnp.where(positive, g / jnp.where(positive, eta, 1), 0)
    return (1 + scaled) / 2, f - eta * scaled


def _sign_step(f, spike, eta):
    return f - eta * (2 * spike - 1)


def _spike(f, image, eta, key):
    spike = (f - image > 0).astype(image.dtype)
    return spike, _sign_step(f, spike, eta)


def _stochastic(f, image, eta, key):
    spike = jax.random.bernoulli(key, jax.nn.sigmoid(f - image)).astype(image.dtype)
    return spike, _sign_step(f, spike, eta)


ENCODERS = {"float": _float, "spike": _spike, "stochastic": _stochastic}
EXACT_ENCODERS = {**ENCODERS, "float": _exact_float}
CODECS = tuple(ENCODERS)


def check_codec(codec: str) -> str:
    if codec not in ENCODERS:
        raise ValueError(f"unknown codec {codec!r}; supported: {', '.join(CODECS)}")
    return codec


def encode(codec: str, f, image, step_size, key=None, exact=False):
    """One encoder step of ``codec``; returns ``(emitted, new_f)`` (see the module docstring)."""
    return (EXACT_ENCODERS if exact else ENCODERS)[check_codec(codec)](f, image, step_size, key)
