"""Evaluate a trained workdir as spiking networks: ``signgd-convert --workdir DIR``
(``python -m convert`` from the repository root).

Loads the model a ``signgd-train`` workdir holds, calibrates on a dozen fixed-seed batches of
the training split, converts it once per dynamics (``paper``, ``improved``, ``if``) with
:func:`signgd_jax.convert`, runs the test split through each SNN (every batch sharded over all
local devices), and writes ``DIR/results.json`` and ``DIR/accuracy_vs_timesteps.png``
(atomically).

Library use::

    from signgd_jax.commands.evaluate import evaluate_workdir, accuracy_table, write_results
    results = evaluate_workdir("runs/vgg_mini", timesteps=(8, 32, 128), limit=500)
    print(accuracy_table(results))
    write_results(results, "runs/vgg_mini")

or, with the settings made once (:class:`ConvertSettings`, as the command builds them)::

    settings = ConvertSettings.create("runs/vgg_mini", timesteps="8,32,128", dynamics="improved")
    results = evaluate(settings)

Bad input raises :class:`ConvertError` (one-line message); the command turns it into exit
status 2.
"""
from signgd_jax.commands.common import atomic_outputs
from signgd_jax.data import padded_batches
from signgd_jax.commands.evaluate.core import ConvertError, evaluate, evaluate_workdir, machine_info
from signgd_jax.commands.evaluate.parallel import DataParallel
from signgd_jax.commands.evaluate.report import (PLOT_FILE, RESULTS_FILE, accuracy_figure,
                                                 accuracy_table, percent, write_results)
from signgd_jax.commands.evaluate.settings import (DEFAULT_DYNAMICS, DEFAULT_TIMESTEPS, ConvertSettings,
                                                   parse_dynamics, parse_timesteps)

__all__ = ["evaluate", "evaluate_workdir", "ConvertSettings", "ConvertError", "accuracy_table", "accuracy_figure",
           "write_results", "atomic_outputs", "parse_timesteps", "parse_dynamics", "machine_info", "DataParallel",
           "padded_batches", "percent", "DEFAULT_TIMESTEPS", "DEFAULT_DYNAMICS", "RESULTS_FILE",
           "PLOT_FILE"]
