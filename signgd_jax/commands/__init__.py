"""The command-line tools, installed as console scripts (``pyproject.toml``):

* ``signgd-train`` (:mod:`signgd_jax.commands.train`): train a classifier into a resumable
  workdir;
* ``signgd-convert`` (:mod:`signgd_jax.commands.evaluate`): convert the workdir's model with
  each dynamics, evaluate it per time-step, write ``results.json`` and the plot.

From the repository root ``python -m train`` and ``python -m convert`` run the same code;
:mod:`signgd_jax.commands.common` holds what the two share.
"""
