"""``python -m convert`` from the repository root: the ``signgd-convert`` command.

The code lives in :mod:`signgd_jax.commands.evaluate`; this folder only forwards to it, so that
the installed distribution has no top-level ``convert`` module.
"""
from signgd_jax.commands.evaluate import *  # noqa: F401,F403
from signgd_jax.commands.evaluate import __all__  # noqa: F401
