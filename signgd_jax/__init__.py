"""signgd-jax: ANN-to-SNN conversion with sign-gradient-descent neuronal dynamics.

    snn = signgd_jax.convert(model, variables, calibration_batches, dynamics="paper")
    logits = signgd_jax.simulate(snn, images, timesteps=(8, 32, 128))   # [3, batch, classes]
"""
from signgd_jax import nn
from signgd_jax.__about__ import __version__
from signgd_jax.convert import convert
from signgd_jax.diagnose import layer_errors
from signgd_jax.evaluation import Report, evaluate
from signgd_jax.plots import accuracy_against_timesteps, plot_layer_errors, plot_sweep
from signgd_jax.dynamics import DYNAMICS, Dynamics, neuron_trajectory
from signgd_jax.interpret import UnsupportedOperation
from signgd_jax.schedules import Schedule, make_schedule
from signgd_jax.saving import load, save
from signgd_jax.simulate import simulate
from signgd_jax.sweep import sweep
from signgd_jax.tune import ScheduleChoice, simulate_tuned, tune_schedule
from signgd_jax.types import SNN, Site

__all__ = ["__version__", "nn", "save", "load", "convert", "simulate", "neuron_trajectory", "SNN", "Site", "Schedule", "make_schedule",
           "UnsupportedOperation", "DYNAMICS", "Dynamics", "sweep", "layer_errors", "plot_layer_errors", "plot_sweep", "accuracy_against_timesteps", "evaluate", "Report", "tune_schedule", "simulate_tuned", "ScheduleChoice"]
