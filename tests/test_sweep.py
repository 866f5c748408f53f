"""signgd_jax.sweep: the compiled (eta0, gamma) grid against separate simulate runs."""
import json
import os
import subprocess
import sys
import textwrap

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import signgd_jax as sg
from signgd_jax.nn import gelu, max_pool, relu
from signgd_jax.sweep import grid_chunk_size, grid_point_bytes, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETA0 = [0.1, 0.15, 0.25]
GAMMA = [0.9, 0.95]
TIMESTEPS = (4, 16, 64)


class SmallCNN(fnn.Module):
    """Convolution, ReLU, max-pooling, LayerNorm, GELU: every kind of site a small model has."""

    @fnn.compact
    def __call__(self, x):
        x = max_pool(relu(fnn.Conv(4, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = fnn.Dense(12)(x.reshape(x.shape[0], -1))
        x = gelu(sg.nn.LayerNorm()(x))
        return fnn.Dense(4)(x)


def _network(dynamics="paper", **kwargs):
    x = jax.random.uniform(jax.random.PRNGKey(0), (22, 6, 6, 1))
    model = SmallCNN()
    variables = model.init(jax.random.PRNGKey(1), x)
    labels = np.array(jnp.argmax(model.apply(variables, x), -1))
    labels[::3] = (labels[::3] + 1) % 4  # some wrong labels, so accuracies are not all 1
    return sg.convert(model, variables, [x], dynamics=dynamics, **kwargs), np.asarray(x), labels


@pytest.fixture(scope="module")
def paper():
    return _network("paper")


def test_grid_equals_separate_simulate_runs(paper):
    snn, x, y = paper
    # unequal batches: the second is padded to the first's size and its padding not counted
    batches = [x[:14], x[14:]]
    assert sg.sweep is sweep
    accuracy, logits = sweep(snn, batches, y, eta0=ETA0, gamma=GAMMA, timesteps=TIMESTEPS, return_logits=True)
    assert accuracy.shape == (3, 2, 3) and logits.shape == (3, 2, 3, len(x), 4)
    for i, eta0 in enumerate(ETA0):
        for j, gamma in enumerate(GAMMA):
            separate = np.asarray(sg.simulate(snn.with_schedule(eta0=eta0, gamma=gamma), x, TIMESTEPS))
            np.testing.assert_allclose(logits[i, j], separate, rtol=0, atol=1e-6, err_msg=f"{eta0}, {gamma}")
            expected = np.mean(np.argmax(separate, -1) == y[None], axis=-1)
            np.testing.assert_array_equal(accuracy[i, j], expected)
    # the settings matter: not every grid point has the same logits
    assert np.abs(logits[0, 0] - logits[2, 1]).max() > 1e-2


def test_improved_mode_grid_equals_separate_runs():
    snn, x, y = _network("improved", codec="spike")
    accuracy, logits = sweep(snn, (x, y), eta0=[0.05, 0.2], gamma=[0.97], timesteps=(8, 32), return_logits=True)
    for i, eta0 in enumerate([0.05, 0.2]):
        separate = np.asarray(sg.simulate(snn.with_schedule(eta0=eta0, gamma=0.97), x, (8, 32)))
        np.testing.assert_allclose(logits[i, 0], separate, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(accuracy[i, 0], np.mean(np.argmax(separate, -1) == y[None], axis=-1))


def test_chunked_grid_equals_the_whole_grid(paper):
    snn, x, y = paper
    whole, whole_logits = sweep(snn, [x], y, eta0=ETA0, gamma=GAMMA, timesteps=TIMESTEPS, return_logits=True,
                                chunk_size=6)
    for chunk in (1, 4):  # 4: two equal chunks of 3
        acc, logits = sweep(snn, [x], y, eta0=ETA0, gamma=GAMMA, timesteps=TIMESTEPS, return_logits=True,
                            chunk_size=chunk)
        np.testing.assert_array_equal(acc, whole)
        np.testing.assert_allclose(logits, whole_logits, rtol=0, atol=1e-6)
    # 5 points in chunks of 2: the last chunk repeats its last point, which is counted once
    five = [0.1, 0.12, 0.15, 0.2, 0.25]
    acc5 = sweep(snn, [x], y, eta0=five, gamma=[0.95], timesteps=TIMESTEPS, chunk_size=2)
    np.testing.assert_array_equal(acc5, sweep(snn, [x], y, eta0=five, gamma=[0.95], timesteps=TIMESTEPS,
                                              chunk_size=5))
    np.testing.assert_array_equal(acc5[[0, 2, 4], 0], whole[:, 1])  # the points shared with the 6-point grid
    # a memory limit that holds one grid point's state only: chunks of 1, same grid
    one_point = grid_point_bytes(snn, x)
    assert grid_chunk_size(snn, x, 6, memory_bytes=one_point * 4) == 1
    assert grid_chunk_size(snn, x, 6, memory_bytes=one_point * 4 * 100) == 6
    np.testing.assert_array_equal(sweep(snn, [x], y, eta0=ETA0, gamma=GAMMA, timesteps=TIMESTEPS,
                                        memory_bytes=one_point * 4), whole)
    # by default on CPU a chunk's state stays within CPU_CHUNK_BYTES (cache-sized)
    from signgd_jax.sweep import CPU_CHUNK_BYTES

    big = np.zeros((4000, *x.shape[1:]), np.float32)
    assert grid_chunk_size(snn, big, 6) == max(1, min(6, CPU_CHUNK_BYTES // grid_point_bytes(snn, big)))
    assert grid_chunk_size(snn, x[:1], 6) == min(6, CPU_CHUNK_BYTES // grid_point_bytes(snn, x[:1]))


def test_state_size_estimate_counts_every_neuron(paper):
    snn, x, _ = paper
    from signgd_jax.simulate import initial_state

    state = initial_state(snn, jnp.asarray(x[:5]))
    expected = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(state))
    assert grid_point_bytes(snn, x[:5]) == 4 * expected


def test_every_batch_form_gives_the_same_grid(paper):
    snn, x, y = paper
    kw = dict(eta0=[0.15, 0.2], gamma=[0.95], timesteps=(8,))
    reference = sweep(snn, x, y, **kw)
    forms = {
        "pairs": ([(x[:10], y[:10]), (x[10:], y[10:])], None),
        "dicts": ([{"image": x[:10], "label": y[:10]}, {"image": x[10:], "label": y[10:]}], None),
        "iterator of arrays, labels per batch": (iter([x[:10], x[10:]]), [y[:10], y[10:]]),
        "arrays, one label array": ([x[:10], x[10:]], y),
    }
    for name, (batches, labels) in forms.items():
        np.testing.assert_array_equal(sweep(snn, batches, labels, **kw), reference, err_msg=name)
    assert reference.shape == (2, 1, 1)
    np.testing.assert_array_equal(sweep(snn, x, y, timesteps=(8,))[0, 0],
                                  reference[0, 0])  # None: the SNN's own eta0=0.15, gamma=0.95


@pytest.mark.parametrize("kwargs,labels,message", [
    (dict(eta0=[]), "y", "eta0 must be a non-empty list"),
    (dict(eta0=[0.1, -0.2]), "y", "eta0 values must be > 0"),
    (dict(eta0=[0.1, float("nan")]), "y", "eta0 values must be finite"),
    (dict(gamma=[0.9, 1.5]), "y", r"gamma values must be in \(0, 1\]"),
    (dict(gamma="fast"), "y", "gamma must be a list of numbers"),
    (dict(chunk_size=0), "y", "chunk_size must be a positive integer"),
    (dict(timesteps=(0, 4)), "y", "time(stamp|step)s must be positive integers"),
    (dict(), None, "batch 0 has no labels"),
    (dict(), "short", "labels has 21 entries for 22 images|fewer than the images"),
    (dict(), "float", "must be 22 integers"),
])
def test_bad_arguments_are_refused_by_name(paper, kwargs, labels, message):
    snn, x, y = paper
    labels = {"y": y, None: None, "short": y[:-1], "float": y.astype(np.float32)}[labels]
    with pytest.raises(ValueError, match=message):
        sweep(snn, x, labels, **kwargs)


def test_bad_batches_and_schedules_are_refused(paper):
    snn, x, y = paper
    with pytest.raises(ValueError, match="carries its labels and labels were passed too"):
        sweep(snn, [(x, y)], y)
    with pytest.raises(ValueError, match="batches is empty"):
        sweep(snn, [], y)
    with pytest.raises(TypeError, match="dict without an image entry"):
        sweep(snn, [{"pixels": x, "label": y}])
    with pytest.raises(ValueError, match="NaN or Inf"):
        sweep(snn, np.full_like(x, np.nan), y)
    with pytest.raises(ValueError, match="labels has 1 entries \\(one per batch\\)"):
        sweep(snn, [x[:10], x[10:]], [y[:10]])
    inverse = snn.replace(schedule=sg.make_schedule("inverse", 0.5))
    with pytest.raises(ValueError, match="'inverse' schedule does not use gamma"):
        sweep(inverse, x, y, gamma=[0.9, 0.95])
    with pytest.raises(ValueError, match="optax function, which ignores eta0 and gamma"):
        sweep(snn.replace(schedule=sg.make_schedule(lambda t: 0.1 * 0.9 ** t)), x, y, eta0=[0.1])


def test_integrate_and_fire_has_no_schedule_to_sweep():
    class ReluNet(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Dense(3)(relu(fnn.Dense(5)(x.reshape(x.shape[0], -1))))

    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 6))
    model = ReluNet()
    snn = sg.convert(model, model.init(jax.random.PRNGKey(1), x), [x], dynamics="if")
    with pytest.raises(ValueError, match="'if' dynamics uses its own step sizes"):
        sweep(snn, x, np.zeros(4, np.int32), eta0=[0.1, 0.2])
    # nothing swept: the one point of the SNN as it is, the baseline included
    labels = np.asarray([0, 1, 2, 1], np.int32)
    separate = np.asarray(sg.simulate(snn, x, (4, 32)))
    np.testing.assert_array_equal(sweep(snn, x, labels, timesteps=(4, 32))[0, 0],
                                  np.mean(np.argmax(separate, -1) == labels[None], axis=-1))


_FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_sweep import _network, sweep
    snn, x, y = _network("paper")
    assert jax.local_device_count() == 4
    acc, logits = sweep(snn, [x[:14], x[14:]], y, eta0={eta0!r}, gamma={gamma!r}, timesteps=(4, 16),
                        return_logits=True)
    print(json.dumps(dict(accuracy=acc.tolist(), logits=logits.tolist())))
""")


def test_four_devices_give_the_same_grid(paper):
    snn, x, y = paper
    acc, logits = sweep(snn, [x[:14], x[14:]], y, eta0=ETA0, gamma=GAMMA, timesteps=(4, 16), return_logits=True)
    script = _FOUR_DEVICES.format(tests=os.path.join(REPO, "tests"), eta0=ETA0, gamma=GAMMA)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    four = json.loads(proc.stdout.strip().splitlines()[-1])
    # 14 images on 4 devices: padded to 16, and the 8 real images of the second batch to 16 too
    np.testing.assert_array_equal(np.asarray(four["accuracy"]), acc)
    np.testing.assert_allclose(np.asarray(four["logits"], np.float32), logits, rtol=0, atol=1e-6)


def test_plot_sweep_writes_one_heatmap_per_timestep(tmp_path):
    from signgd_jax.plots import plot_sweep

    grid = np.linspace(0, 1, 3 * 2 * 2).reshape(3, 2, 2)
    paths = plot_sweep(grid, ETA0, GAMMA, (8, 32), str(tmp_path), title="net")
    assert [os.path.basename(p) for p in paths] == ["sweep_T8.png", "sweep_T32.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="expected \\(3, 2, 3\\)"):
        plot_sweep(grid, ETA0, GAMMA, (8, 32, 64), str(tmp_path))
