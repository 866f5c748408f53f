"""signgd_jax.evaluate: accuracy per T equals simulate's on the same images, the ANN's accuracy,
spike statistics per T that add up, and a plot."""
import flax.linen as fnn
import jax
import numpy as np
import pytest

import signgd_jax as sg
from signgd_jax import metrics


class Net(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return fnn.Dense(4)(sg.nn.relu(fnn.Dense(16)(x)))


def test_report_matches_simulate_and_the_ann(tmp_path):
    model = Net()
    x = jax.random.normal(jax.random.key(0), (40, 6))
    variables = model.init(jax.random.key(1), x)
    labels = np.asarray(model.apply(variables, x)).argmax(-1)
    labels[::5] = (labels[::5] + 1) % 4  # the ANN is right on 80% of them
    snn = sg.convert(model, variables, x, dynamics="improved", spike_levels=2)
    report = sg.evaluate(snn, [(x[:25], labels[:25]), (x[25:], labels[25:])], timesteps=(2, 8))
    logits, counts = sg.simulate(snn, x, (2, 8), return_spike_counts=True)
    expected = np.asarray(metrics.accuracy_per_step(logits, labels))
    assert report.accuracy == pytest.approx({2: expected[0], 8: expected[1]})
    assert report.ann_accuracy == pytest.approx(0.8) and report.num_images == 40
    whole = metrics.spike_statistics(snn, counts, 40, 8, x)
    assert report.statistics[8]["sops_per_image_step"] == pytest.approx(whole["sops_per_image_step"], rel=1e-5)
    assert report.energy_uj_per_image[8] == pytest.approx(whole["energy_pj_per_image_step"] * 8 / 1e6, rel=1e-5)
    assert report.dynamics == "improved K=2" and report.bits_per_neuron_step == 2
    fig = report.plot()
    fig.savefig(tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="labels"):
        sg.evaluate(snn, x, timesteps=2)


def test_sweep_returns_its_grid_with_the_best_point():
    model = Net()
    x = jax.random.normal(jax.random.key(2), (24, 6))
    variables = model.init(jax.random.key(3), x)
    labels = np.asarray(model.apply(variables, x)).argmax(-1)
    snn = sg.convert(model, variables, x, dynamics="improved")
    grid = sg.sweep(snn, (x, labels), eta0=[0.05, 0.3], gamma=[0.7, 0.95], timesteps=(2, 8))
    assert grid.shape == (2, 2, 2) and grid.eta0 == (0.05, 0.3) and grid.timesteps == (2, 8)
    for k, t in enumerate((2, 8)):
        e, g, accuracy = grid.best(t)
        i, j = grid.eta0.index(e), grid.gamma.index(g)
        assert accuracy == grid[i, j, k] == np.asarray(grid)[:, :, k].max()
        own = sg.simulate(snn.with_schedule(eta0=e, gamma=g), x, (t,))[0]
        assert accuracy == pytest.approx(float(np.mean(np.asarray(own).argmax(-1) == labels)))
    with pytest.raises(ValueError, match="not a swept time-step"):
        grid.best(4)


def test_a_tuned_schedule_runs_each_t_with_its_own_step_sizes_and_levels():
    """``evaluate(..., schedule=choice)`` equals evaluating each schedule's own SNN at its T's."""
    model = Net()
    x = jax.random.normal(jax.random.key(4), (30, 6))
    variables = model.init(jax.random.key(5), x)
    labels = np.asarray(model.apply(variables, x)).argmax(-1)
    labels[::3] = (labels[::3] + 1) % 4
    snn = sg.convert(model, variables, x, dynamics="improved")
    choice = sg.tune_schedule(snn, [x], timesteps=(1, 2, 4), eta0=(0.1, 0.6), decay=(0.2, 1.0), images=16,
                              spike_levels=(1, 3))
    assert len(choice.groups()) > 1  # else the test would not tell the schedules apart
    report = sg.evaluate(snn, (x, labels), timesteps=(1, 2, 4), schedule=choice)
    for (eta0, gamma, levels), ts in choice.groups().items():
        own = sg.evaluate(snn.with_schedule(eta0=eta0, gamma=gamma).with_spike_levels(levels), (x, labels), ts)
        for t in ts:
            assert report.accuracy[t] == own.accuracy[t]
            for field in ("sops_per_image_step", "energy_pj_per_image_step", "bits_per_neuron_step"):
                assert report.statistics[t][field] == pytest.approx(own.statistics[t][field])
    assert report.schedule == choice.as_dict() and report.dynamics == "improved tuned"
    with pytest.raises(ValueError, match=r"not for \[8\]"):
        sg.evaluate(snn, (x, labels), timesteps=(4, 8), schedule=choice)
