"""``python -m train`` from the repository root: the ``signgd-train`` command.

The code lives in :mod:`signgd_jax.commands.train`; this folder only forwards to it, so that
the installed distribution has no top-level ``train`` module.
"""
from signgd_jax.commands.train import *  # noqa: F401,F403
from signgd_jax.commands.train import __all__  # noqa: F401
