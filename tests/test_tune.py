"""signgd_jax.tune_schedule: the chosen step sizes against a brute-force search of the same grid."""
import flax.linen as fnn
import jax
import numpy as np
import pytest

import signgd_jax as sg
from signgd_jax.nn import gelu, relu
from signgd_jax.tune import ScheduleChoice, gamma_for, simulate_tuned, tune_schedule

ETA0 = (0.1, 0.3, 0.7)
DECAY = (0.1, 0.6)
TIMESTEPS = (4, 9)


class SmallMLP(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = relu(fnn.Dense(16)(x.reshape(x.shape[0], -1)))
        x = gelu(fnn.Dense(12)(x))
        return fnn.Dense(5)(x)


@pytest.fixture(scope="module")
def network():
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (40, 3, 4)), np.float32)
    model = SmallMLP()
    variables = model.init(jax.random.PRNGKey(1), x)
    snn = sg.convert(model, variables, [x[:20], x[20:]], dynamics="improved")
    return snn, x, np.asarray(model.apply(variables, x))


def test_gamma_for_gives_the_last_step_size():
    assert gamma_for(0.1, 9) ** 8 == pytest.approx(0.1, rel=1e-12)
    assert gamma_for(0.5, 1) == 1.0


def test_the_chosen_point_is_the_best_of_separate_runs(network):
    snn, x, ann = network
    choice = tune_schedule(snn, [x[:20], x[20:]], TIMESTEPS, eta0=ETA0, decay=DECAY, images=32)
    assert isinstance(choice, ScheduleChoice) and choice.timesteps == TIMESTEPS and choice.images == 32
    for k, t in enumerate(TIMESTEPS):
        scores = {}
        for e in ETA0:
            for d in DECAY:
                g = gamma_for(d, t)
                logits = np.asarray(sg.simulate(snn.with_schedule(eta0=e, gamma=g), x[:32], timesteps=(t,)))[0]
                agree = np.mean(logits.argmax(-1) == ann[:32].argmax(-1))
                scores[(e, g)] = (-agree, np.mean(np.square(logits - ann[:32])))
        best = min(scores, key=scores.get)
        assert choice.point(t) == pytest.approx(best, rel=1e-12), (t, scores)
        assert choice.agreement[k] == pytest.approx(-scores[best][0])
        assert choice.logit_error[k] == pytest.approx(scores[best][1], rel=1e-4)
        # the default schedule is not better on the tuning images than what was chosen
        default = np.asarray(sg.simulate(snn, x[:32], timesteps=(t,)))[0]
        assert choice.agreement[k] >= np.mean(default.argmax(-1) == ann[:32].argmax(-1))
    assert choice.as_dict()[str(TIMESTEPS[0])]["eta0"] == choice.eta0[0]
    # a budget above max_timesteps keeps the SNN's own schedule, unscored
    longer = tune_schedule(snn, x, (4, 9), eta0=ETA0, decay=DECAY, images=32, max_timesteps=4)
    assert longer.point(4) == choice.point(4) and longer.point(9) == pytest.approx((0.15, 0.95))
    assert np.isnan(longer.agreement[1])


def test_simulate_tuned_runs_each_budget_with_its_own_schedule(network):
    snn, x, _ = network
    choice = ScheduleChoice(timesteps=(4, 6, 9), eta0=(0.3, 0.1, 0.3), gamma=(0.8, 0.9, 0.8),
                            agreement=(1.0,) * 3, logit_error=(0.0,) * 3, images=1)
    assert choice.groups() == {(0.3, 0.8, None): (4, 9), (0.1, 0.9, None): (6,)}
    logits = np.asarray(simulate_tuned(snn, choice, x[:8]))
    assert logits.shape == (3, 8, 5)
    for k, t in enumerate(choice.timesteps):
        e, g = choice.point(t)
        separate = np.asarray(sg.simulate(snn.with_schedule(eta0=e, gamma=g), x[:8], timesteps=(t,)))[0]
        np.testing.assert_array_equal(logits[k], separate)
    with pytest.raises(ValueError, match="no schedule was tuned for T=5"):
        choice.point(5)


def test_bad_arguments_are_refused(network):
    snn, x, _ = network
    with pytest.raises(ValueError, match="images must be a positive integer"):
        tune_schedule(snn, x, (4,), images=0)
    with pytest.raises(ValueError, match="decay values must lie in"):
        tune_schedule(snn, x, (4,), decay=(0.0,))
    with pytest.raises(ValueError, match="exponential schedule"):
        tune_schedule(snn.replace(schedule=sg.make_schedule("constant", 0.1)), x, (4,))
