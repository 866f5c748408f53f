"""QCFS at training time: the qcfs kind against its formula, the straight-through gradient, the
trainable threshold, the zoo's QCFS variants, and ``signgd-train --activation qcfs`` round trip."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import signgd_jax as sg
from signgd_jax import kinds, models
from signgd_jax.commands import train
from signgd_jax.commands.train import TrainConfig
from signgd_jax.commands.train.cli import main
from signgd_jax.commands.train.config import check_resumable, config_record


def _formula(z, levels):
    """QCFS in threshold units, with numpy: clip(floor(z * L + 1/2) / L, 0, 1)."""
    z = np.asarray(z, np.float32)
    return np.clip(np.floor(z * np.float32(levels) + np.float32(0.5)) / np.float32(levels), 0, 1)


def _grid(levels):
    """Steps, exact ties (k + 1/2) / L, and points below 0 and above 1."""
    ties = (np.arange(-2, levels + 2) + 0.5) / levels
    return np.concatenate([np.linspace(-1.5, 2.5, 401), ties, ties - 1e-6, np.arange(levels + 1) / levels]
                          ).astype(np.float32)


def _paths(tree):
    return {"/".join(str(k.key) for k in p): a for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ----------------------------------------------------------------------------- the kind
@pytest.mark.parametrize("levels", [1, 2, 4, 8, 16])
def test_kind_values_are_the_formula(levels):
    z = _grid(levels)
    want = _formula(z, levels)
    row = kinds.get("qcfs")
    np.testing.assert_array_equal(np.asarray(sg.nn.site("qcfs", z, levels=levels)), want)
    np.testing.assert_array_equal(np.asarray(row.target(jnp.asarray(z), levels=levels)), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda v: sg.nn.site("qcfs", v, levels=levels))(z)), want)
    # L + 1 values, each a multiple of 1/L in the closed output range
    assert set(np.round(want * levels).astype(int)) == set(range(levels + 1))
    assert row.output_range == (0.0, 1.0) and row.fires_on_tie and row.arity == 1 and row.elementwise
    # tie rule: an estimate equal to the target fires (like relu), one just below does not
    phi = jnp.asarray(want)
    assert bool(row.above(phi, [jnp.asarray(z)], {"levels": levels}).all())
    assert not bool(row.above(phi - 1e-3, [jnp.asarray(z)], {"levels": levels}).any())


def test_straight_through_gradient_is_that_of_clip():
    z = _grid(4)
    inside = ((z >= 0) & (z <= 1)).astype(np.float32)
    f = lambda v: jnp.sum(sg.nn.site("qcfs", v, levels=4))  # noqa: E731
    np.testing.assert_array_equal(np.asarray(jax.grad(f)(z)), inside)
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.grad(f))(z)), inside)
    _, tangent = jax.jvp(lambda v: sg.nn.site("qcfs", v, levels=4), (z,), (2 * jnp.ones_like(z),))
    np.testing.assert_array_equal(np.asarray(tangent), 2 * inside)
    per_row = jax.vmap(jax.grad(lambda v: jnp.sum(sg.nn.site("qcfs", v, levels=4))))(z.reshape(-1, 1))
    np.testing.assert_array_equal(np.asarray(per_row).ravel(), inside)


def test_threshold_gets_the_gradient_of_its_formula():
    """d/dlambda [lambda * q(x / lambda)] = q(z) - z * 1[0 <= z <= 1], z = x / lambda (the
    product rule through the straight-through floor)."""
    x = np.asarray(jax.random.normal(jax.random.key(0), (500,)) * 3, np.float32)
    threshold, levels = np.float32(2.5), 8
    y = sg.nn.qcfs(x, threshold, levels)
    np.testing.assert_allclose(np.asarray(y), threshold * _formula(x / threshold, levels), rtol=1e-6)
    z = x / threshold
    want = np.sum(_formula(z, levels) - z * ((z >= 0) & (z <= 1)))
    got = jax.grad(lambda t: jnp.sum(sg.nn.qcfs(x, t, levels)))(threshold)
    np.testing.assert_allclose(float(got), want, rtol=1e-4)
    dx = jax.grad(lambda v: jnp.sum(sg.nn.qcfs(v, threshold, levels)))(x)
    np.testing.assert_array_equal(np.asarray(dx), ((z >= 0) & (z <= 1)).astype(np.float32))
    with pytest.raises(ValueError, match="levels must be a positive integer"):
        sg.nn.qcfs(x, threshold, 0)


def test_module_owns_a_scalar_threshold_and_is_one_site():
    module = sg.nn.QCFS(4, init_threshold=3.0)
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 3)) * 3
    variables = module.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == {"params": {"threshold": ()}}
    assert float(variables["params"]["threshold"]) == 3.0
    np.testing.assert_array_equal(module.apply(variables, x), sg.nn.qcfs(x, 3.0, 4))
    jaxpr = str(jax.make_jaxpr(lambda v: module.apply(variables, v))(x))
    assert jaxpr.count("site[") == 1 and "kind=qcfs" in jaxpr
    grad = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, x)))(variables["params"])
    assert float(grad["threshold"]) != 0.0


# ----------------------------------------------------------------------------- models
def _site_kinds(model, variables, x):
    jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x))
    return [part.split("]")[0].split()[0] for part in jaxpr.split("kind=")[1:]]


@pytest.mark.parametrize("name,sites", [("resnet_mini", 7), ("vgg_mini", 3)])
def test_small_qcfs_variants_build_and_train(name, sites):
    x = jax.random.uniform(jax.random.key(1), (16, 16, 16, 1))  # any size: both end in a global mean
    labels = jnp.arange(16) % 10
    relu_model = models.create(name)
    model = models.create(name, activation="qcfs", qcfs_levels=4)
    relu_vars = relu_model.init(jax.random.key(0), x, train=False)
    variables = model.init(jax.random.key(0), x, train=False)
    # the ReLU variant is the default; the QCFS one adds a threshold per site and nothing else
    assert models.create(name, activation="relu") == relu_model
    params, relu_params = _paths(variables["params"]), _paths(relu_vars["params"])
    thresholds = {k: v for k, v in params.items() if k.endswith("threshold")}
    assert len(thresholds) == sites and all(float(v) == model.qcfs_threshold for v in thresholds.values())
    assert {k: v for k, v in params.items() if k not in thresholds}.keys() == relu_params.keys()
    jax.tree.map(np.testing.assert_array_equal, {k: params[k] for k in relu_params}, relu_params)
    assert _site_kinds(model, variables, x) == ["qcfs"] * sites  # vgg_mini: no max_pool, pooling by averaging
    assert ("max_pool" in _site_kinds(relu_model, relu_vars, x)) == (name == "vgg_mini")
    # a few SGD steps: the loss falls and every threshold moves
    tx = optax.sgd(0.05, momentum=0.9)
    state = train.TrainState.create(variables, tx)
    step = train.make_train_step(model, tx, jax.random.key(2))
    losses = []
    for _ in range(4):
        before = float(state.loss_sum)
        state = step(state, x, labels)
        losses.append(float(state.loss_sum) - before)
    assert losses[-1] < losses[0], losses
    moved = _paths(state.variables["params"])
    assert all(float(moved[k]) != float(v) for k, v in thresholds.items())


@pytest.mark.parametrize("name,sites", [("resnet18", 17), ("vgg16_bn", 15)])
def test_imagenet_qcfs_variants(name, sites):
    model = models.create(name, num_classes=10, activation="qcfs", qcfs_levels=8)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    thresholds = [k for k in _paths(shapes["params"]) if k.endswith("threshold")]
    assert len(thresholds) == sites
    assert _site_kinds(model, shapes, x) == ["qcfs"] * sites  # resnet18's stem pool averages too


def test_activation_option_is_checked_and_the_help_names_the_relu_models():
    from signgd_jax.commands.train.cli import parser

    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        models.create("resnet_mini", activation="gelu").init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert set(models.QCFS_MODELS) == {"resnet_mini", "vgg_mini", "resnet18", "resnet34", "vgg16_bn"}
    (action,) = [a for a in parser()._actions if a.dest == "activation"]
    assert f"({', '.join(sorted(models.QCFS_MODELS, key=lambda n: (not n.endswith('_mini'), n)))})" in action.help


# ----------------------------------------------------------------------------- signgd-train
def test_train_cli_round_trip(tmp_path, mnist5k_dir, capsys):
    workdir = str(tmp_path / "q")
    argv = ["--model", "resnet_mini", "--activation", "qcfs", "--qcfs-levels", "4", "--epochs", "1",
            "--batch-size", "32", "--limit-train", "64", "--limit-test", "32", "--data-dir", mnist5k_dir,
            "--workdir", workdir, "--no-progress"]
    assert main(argv) == 0
    assert "QCFS activations with 4 levels" in capsys.readouterr().out
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert (config["activation"], config["qcfs_levels"]) == ("qcfs", 4)
    model, variables, info = train.load_trained(workdir)
    assert (model.activation, model.qcfs_levels) == ("qcfs", 4)
    thresholds = [v for k, v in _paths(variables["params"]).items() if k.endswith("threshold")]
    assert len(thresholds) == 7 and all(float(t) != model.qcfs_threshold for t in thresholds)
    from signgd_jax.commands.evaluate.core import load_workdir

    again, same, _ = load_workdir(workdir)
    assert again == model
    jax.tree.map(np.testing.assert_array_equal, same, variables)
    # the same command is done; other levels are another run
    assert main(argv) == 0 and "already finished" in capsys.readouterr().out
    assert main([*argv[:5], "8", *argv[6:]]) == 2
    assert "different settings (qcfs_levels: 4 -> 8)" in capsys.readouterr().err


@pytest.mark.parametrize("extra,needle", [
    (["--model", "convnext_mini", "--activation", "qcfs"], "--activation qcfs replaces the ReLUs of a zoo ReLU model"),
    (["--model", "test_train:TinyCNN", "--activation", "qcfs"], "'test_train:TinyCNN' is not one"),
    (["--model", "resnet_mini", "--qcfs-levels", "4"], "--qcfs-levels needs --activation qcfs"),
    (["--model", "resnet_mini", "--activation", "qcfs", "--qcfs-levels", "0"], "qcfs-levels must be a positive"),
])
def test_bad_activation_settings_exit_2_with_one_line(tmp_path, capsys, extra, needle):
    code = main(["--workdir", str(tmp_path / "w"), "--data-dir", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not os.path.exists(tmp_path / "w")


def test_config_records_the_activation_and_old_workdirs_are_relu():
    relu = config_record(TrainConfig(model="resnet_mini", workdir="w"))
    assert (relu["activation"], relu["qcfs_levels"]) == ("relu", None)
    assert config_record(TrainConfig(model="resnet_mini", workdir="w", qcfs_levels=4)) == relu  # levels need qcfs
    qcfs = config_record(TrainConfig(model="vgg_mini", workdir="w", activation="qcfs"))
    assert (qcfs["activation"], qcfs["qcfs_levels"]) == ("qcfs", 8)
    old = {k: v for k, v in relu.items() if k not in ("activation", "qcfs_levels")}
    check_resumable(old, relu)  # a workdir written before the option: the ReLU run
    with pytest.raises(train.ConfigError, match="activation: 'relu' -> 'qcfs'"):
        check_resumable(old, {**relu, "activation": "qcfs", "qcfs_levels": 8})
