"""Saving and loading a converted SNN with orbax.

An SNN is a pytree whose arrays (weights, calibrated units, corrections, schedule) are its leaves
and whose structure (the network function, the dynamics, the site kinds) is static. Orbax stores
the arrays; the structure comes back from a ``target``: the same model converted again with the
same dynamics (any calibration images of the same shape will do, their values are replaced).

    signgd_jax.save(snn, "ckpt/snn")
    target = signgd_jax.convert(model, variables, some_images, dynamics="improved", spike_levels=3)
    snn = signgd_jax.load("ckpt/snn", target)
"""
from __future__ import annotations

import json
import os

import orbax.checkpoint as ocp

from signgd_jax.simulate import check_snn
from signgd_jax.types import SNN

_DESCRIPTION = "signgd_snn.json"


def describe(snn: SNN) -> dict:
    """What must match between a saved SNN and a target: dynamics, levels, codec and sites."""
    return dict(dynamics=snn.dynamics.name, spike_levels=snn.dynamics.spike_levels, codec=snn.codec,
                schedule=snn.schedule.kind, sites=[[name, site.kind] for name, site in snn.sites.items()])


def save(snn: SNN, path: str) -> str:
    """Writes ``snn``'s arrays to the new directory ``path`` (orbax) with a description of its
    structure; returns the absolute path. A ValueError if ``path`` exists."""
    snn = check_snn(snn)
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise ValueError(f"{path} exists; save an SNN to a new directory")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(path, "arrays"), snn)
    checkpointer.wait_until_finished()
    with open(os.path.join(path, _DESCRIPTION), "w") as f:
        json.dump(describe(snn), f, indent=1)
    return path


def load(path: str, target: SNN) -> SNN:
    """The SNN saved at ``path``, with the structure of ``target`` (see the module docstring); a
    ValueError naming the first difference when the target is of another network or dynamics."""
    target = check_snn(target)
    path = os.path.abspath(path)
    try:
        with open(os.path.join(path, _DESCRIPTION)) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path} holds no SNN saved by signgd_jax.save (no {_DESCRIPTION})") from None
    wanted = describe(target)
    for key in wanted:
        if saved.get(key) != wanted[key]:
            raise ValueError(f"the SNN at {path} differs from the target in its {key}: saved {saved.get(key)!r}, "
                             f"target {wanted[key]!r}; convert the same model with the same dynamics as the target")
    return ocp.StandardCheckpointer().restore(os.path.join(path, "arrays"), target)
