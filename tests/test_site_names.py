"""Site names: evaluation index, kind and the Flax module path (``signgd_jax.types.site_name``)."""
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import signgd_jax as sg
from signgd_jax import diagnose, interpret, metrics
from signgd_jax.program import module_path
from signgd_jax.types import site_name, site_path

X = jax.random.normal(jax.random.PRNGKey(1), (6, 4))


class Mlp(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return fnn.LayerNorm()(jax.nn.gelu(fnn.Dense(4)(x)))


class Block(fnn.Module):
    @fnn.compact
    def __call__(self, x, _=None):
        return Mlp()(x) + x, None


class TwoBlocks(fnn.Module):
    """Two blocks whose inner modules have the same names: only the path tells them apart."""

    @fnn.compact
    def __call__(self, x):
        x = Block()(x)[0]
        x = Block()(x)[0]
        return fnn.Dense(3)(jax.nn.relu(x))


class Scanned(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        layers = fnn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        x, _ = layers(name="layers")(x, None)
        return fnn.Dense(3)(x)


def converted(model, dynamics="improved"):
    return sg.convert(model, model.init(jax.random.PRNGKey(0), X), [X], dynamics=dynamics)


def test_nested_linen_blocks_are_told_apart_by_their_path():
    assert list(converted(TwoBlocks()).sites) == [
        "000_gelu@TwoBlocks/Block_0/Mlp_0", "001_layer_norm@TwoBlocks/Block_0/Mlp_0/LayerNorm_0",
        "002_gelu@TwoBlocks/Block_1/Mlp_0", "003_layer_norm@TwoBlocks/Block_1/Mlp_0/LayerNorm_0",
        "004_relu@TwoBlocks"]


def test_a_site_taken_apart_keeps_its_path():
    """Paper mode decomposes the LayerNorm (signgd_jax.expand): its parts stay in LayerNorm_0."""
    names = list(converted(TwoBlocks(), "paper").sites)
    assert names[:3] == ["000_gelu@TwoBlocks/Block_0/Mlp_0", "001_square@TwoBlocks/Block_0/Mlp_0/LayerNorm_0",
                         "002_rsqrt_mul@TwoBlocks/Block_0/Mlp_0/LayerNorm_0"]
    assert names[-1] == "006_relu@TwoBlocks"


def test_each_iteration_of_a_scanned_block_has_its_own_sites_and_index():
    assert list(converted(Scanned()).sites) == [
        name for i in range(3) for name in (f"{2 * i:03d}_gelu@Scanned/layers/{i}/Mlp_0",
                                            f"{2 * i + 1:03d}_layer_norm@Scanned/layers/{i}/Mlp_0/LayerNorm_0")]


def test_names_are_the_keys_of_every_measurement_and_stable():
    model = TwoBlocks()
    snn, again = converted(model), converted(model)
    assert list(snn.sites) == list(again.sites)
    _, counts = sg.simulate(snn, X, (2,), return_spike_counts=True)
    assert list(counts) == list(snn.sites)
    assert set(metrics.fan_out(snn, X)) == set(snn.sites) | {"input"}
    assert list(diagnose.layer_errors(snn, X, (1, 2)).absolute) == [*snn.sites, diagnose.LOGITS]


def test_a_saved_snn_with_module_paths_loads_back(tmp_path):
    snn = converted(Scanned())
    path = sg.save(snn, str(tmp_path / "snn"))
    loaded = sg.load(path, converted(Scanned()))
    assert list(loaded.sites) == list(snn.sites)
    name = "002_gelu@Scanned/layers/1/Mlp_0"
    np.testing.assert_array_equal(loaded.sites[name].out_scale, snn.sites[name].out_scale)


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        return jax.nn.gelu(self.linear(x))


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.first, self.second = NNXBlock(rngs), NNXBlock(rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(self.second(self.first(x)))


def test_nnx_and_plain_functions_have_no_module_path():
    """NNX pushes no module names onto JAX's name stack: the names are index and kind."""
    assert list(sg.convert(NNXNet(nnx.Rngs(0)), None, [X]).sites) == ["000_gelu", "001_gelu"]
    w = jax.random.normal(jax.random.PRNGKey(2), (4, 4))
    assert list(sg.convert(lambda v, x: jax.nn.relu(x @ v) @ v, w, [X]).sites) == ["000_relu"]


def test_plain_loops_name_their_iterations():
    """A loop iteration is a path component of its own, nested loops outermost first."""
    w = jax.random.normal(jax.random.PRNGKey(2), (4, 4)) / 2

    def nested(v, x):
        def inner(h, _):
            return jax.nn.relu(h @ v), None

        return jax.lax.scan(lambda h, _: (jax.lax.scan(inner, h, length=2)[0], None), x, length=2)[0]

    assert list(sg.convert(nested, w, [X]).sites) == ["000_relu@0/0", "001_relu@0/1", "002_relu@1/0",
                                                      "003_relu@1/1"]


@pytest.mark.parametrize("name,path", [("my block@1.x", "my_block_1_x"), ("a b/c", "a_b/c")])
def test_unsafe_module_names_are_made_safe(name, path):
    class Relu(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return jax.nn.relu(fnn.Dense(4)(x))

    class Outer(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Dense(3)(Relu(name=name)(x))

    assert list(converted(Outer()).sites) == [f"000_relu@Outer/{path}"]


@pytest.mark.parametrize("stack,expected", [
    ("", ()), ("Net/Block_0/Dense_0", ("Net", "Block_0", "Dense_0")), ("/a/b", ("a", "b")),
    ("Net/vmap(Dense_0)", ("Net", "Dense_0")), ("jvp(transpose(Net))/x", ("Net", "x")), ("vmap()", ()),
    ("my block@1/a.b", ("my_block_1", "a_b")),
])
def test_module_path_of_a_name_stack(stack, expected):
    assert module_path(stack) == expected


def test_site_name_and_site_path():
    assert site_name(2, "gelu") == "002_gelu" and site_path("002_gelu") == ""
    name = site_name(12, "layer_norm", ("Net", "layers", "3", "LayerNorm_0"))
    assert name == "012_layer_norm@Net/layers/3/LayerNorm_0"
    assert site_path(name) == "Net/layers/3/LayerNorm_0"


def two_outputs(v, x):
    return jax.nn.relu(x @ v), x


@pytest.mark.parametrize("call", [
    lambda: sg.convert(two_outputs, jnp.eye(4), [X], dynamics="improved"),
    lambda: sg.convert(two_outputs, jnp.eye(4), [X], dynamics="paper"),  # expand.ExpandedApply
    lambda: interpret.evaluate(two_outputs, jnp.eye(4), X, interpret.ann_site),
])
def test_the_network_must_return_one_array_of_logits(call):
    with pytest.raises(ValueError, match="^the network must return one array of logits, got 2 outputs"):
        call()


def test_traced_runs_the_trace_on_other_inputs():
    w = jax.random.normal(jax.random.PRNGKey(2), (4, 4))
    found = []

    def on_site(name, kind, options, inputs):
        found.append(name)
        return interpret.ann_site(name, kind, options, inputs)

    run, leaves = interpret.traced(lambda v, x: jax.nn.relu(x @ v), w, X)
    np.testing.assert_allclose(run(leaves, -X, on_site), jax.nn.relu(-X @ w), rtol=1e-6)
    assert found == ["000_relu"]


def test_a_refused_operation_is_placed_by_its_whole_path():
    """Inside a loop body JAX's own name stack is relative to the loop ('layers'); the message
    gives the path of the site names."""
    class Wave(fnn.Module):
        @fnn.compact
        def __call__(self, x, _=None):
            return jnp.sin(fnn.Dense(4)(x)), None

    class Waves(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            layers = fnn.scan(Wave, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
            return layers(name="layers")(x, None)[0]

    with pytest.raises(interpret.UnsupportedOperation, match="'sin' .* in module 'Waves/layers/0' at "):
        converted(Waves())
