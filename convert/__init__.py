"""Evaluate a trained workdir as spiking networks: ``python -m convert --workdir DIR``.

Loads the model a ``python -m train`` workdir holds, calibrates on a dozen fixed-seed batches
of the training split, converts it once per dynamics (``paper``, ``improved``, ``if``), runs
the test split through each SNN (every batch sharded over all local devices), and writes
``DIR/results.json`` and ``DIR/accuracy_vs_timesteps.png`` (atomically).

Library use::

    from convert import evaluate_workdir, accuracy_table, write_results
    results = evaluate_workdir("runs/vgg_mini", timesteps=(8, 32, 128), limit=500)
    print(accuracy_table(results))
    write_results(results, "runs/vgg_mini")

Bad input raises :class:`ConvertError` (one-line message); the CLI turns it into exit status 2.
"""
from convert.core import (DEFAULT_DYNAMICS, DEFAULT_TIMESTEPS, ConvertError, evaluate_workdir, machine_info,
                          parse_dynamics, parse_timesteps)
from convert.parallel import DataParallel, padded_batches
from convert.report import (PLOT_FILE, RESULTS_FILE, accuracy_figure, accuracy_table, atomic_outputs,
                            write_results)

__all__ = ["evaluate_workdir", "ConvertError", "accuracy_table", "accuracy_figure", "write_results",
           "atomic_outputs", "parse_timesteps", "parse_dynamics", "machine_info", "DataParallel",
           "padded_batches", "DEFAULT_TIMESTEPS", "DEFAULT_DYNAMICS", "RESULTS_FILE", "PLOT_FILE"]
