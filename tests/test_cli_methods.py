"""signgd-convert's --dynamics takes every method of the dynamics table and --spike-levels goes
to the dynamics that have levels; both are checked before anything loads."""
import pytest

from signgd_jax.commands.evaluate import cli, core
from signgd_jax.commands.evaluate.settings import ConvertSettings


def _settings(**changes):
    base = dict(timesteps="1,2", dynamics="improved", batch_size=10, calibration_batch_count=1,
                calibration_batch_size=None, limit=None, codec="float", dtype=None, dataset=None, eta0=0.15,
                gamma=0.95, spike_levels=None)
    return ConvertSettings.create("w", **{**base, **changes})


def test_every_method_is_a_dynamics_name():
    assert core.parse_dynamics("paper,improved,if,qcfs,ecmt") == ("paper", "improved", "if", "qcfs", "ecmt")
    with pytest.raises(core.ConvertError, match="supported: paper, improved, if, qcfs, ecmt"):
        core.parse_dynamics("improved,graded")


def test_spike_levels_are_checked_once():
    assert _settings(spike_levels=3).spike_levels == 3
    assert _settings(dynamics="paper,ecmt", spike_levels=4).spike_levels == 4
    with pytest.raises(core.ConvertError, match="spike-levels must be a positive integer"):
        _settings(spike_levels=0)
    with pytest.raises(core.ConvertError, match="applies to the dynamics improved"):
        _settings(dynamics="paper,if", spike_levels=3)


def test_the_flag_is_parsed_and_documented():
    args = cli.parser().parse_args(["--workdir", "w", "--spike-levels", "7", "--dynamics", "improved,ecmt"])
    assert args.spike_levels == 7
    text = cli.parser().format_help()
    assert "--spike-levels" in text and "ecmt" in text and "qcfs" in text


def test_a_refused_operation_is_reported_by_its_first_line():
    import jax.numpy as jnp

    import signgd_jax as sg

    try:
        sg.convert(lambda v, x: jnp.sin(x) @ v, jnp.ones((3, 2)), jnp.ones((4, 3)))
    except sg.UnsupportedOperation as e:
        error = e
    assert len(str(error).splitlines()) == 2
    reason = core._refusal(error)
    assert reason == str(error).splitlines()[0] and "supported:" not in reason and "'sin'" in reason
