"""benchmarks/simulate.py runs end to end and reports what it claims to (tiny sizes; no timing asserted)."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", os.path.join(ROOT, "benchmarks", "simulate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_reports_ratios_memory_and_state(bench, tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--models", "resnet_mini", "--batch-sizes", "2", "--timesteps", "3", "--memory-timesteps", "2,5",
                "--repeats", "1", "--out", str(out)])
    (result,) = json.loads(out.read_text())["results"]
    (row,) = result["rows"]
    assert (row["batch"], row["T"]) == (2, 3)
    assert row["overhead_ratio"] == pytest.approx(row["snn_s"] / (3 * row["ann_forward_s"]))
    assert row["best_ann_forward_s"] == min(row["ann_forward_s_by_compilation"].values())
    assert row["overhead_ratio_vs_best_ann"] >= row["overhead_ratio"]
    assert set(result["peak_memory_bytes"]) == {"2", "5"}
    # resnet_mini's ReLU outputs per image: 28x28x16 (stem), 2 x 14x14x16, 2 x 7x7x32, 2 x 4x4x64
    assert result["neuron_state_bytes"] == 2 * 4 * (28 * 28 * 16 + 2 * 14 * 14 * 16 + 2 * 7 * 7 * 32 + 2 * 4 * 4 * 64)


def test_benchmark_reports_the_vit_in_improved_mode_and_merges(bench, tmp_path):
    out = tmp_path / "bench.json"
    out.write_text(json.dumps(dict(command="earlier", dynamics="paper", results=[dict(model="resnet_mini", rows=[])])))
    bench.main(["--models", "vit_mini", "--batch-sizes", "2", "--timesteps", "2", "--memory-timesteps", "2,3",
                "--repeats", "1", "--out", str(out), "--merge"])
    report = json.loads(out.read_text())
    assert report["command"] == "earlier" and [r["model"] for r in report["results"]] == ["resnet_mini", "vit_mini"]
    vit = report["results"][1]
    assert vit["dynamics"] == "improved" and vit["command"].endswith("--merge")
    (row,) = vit["rows"]
    assert row["overhead_ratio"] == pytest.approx(row["snn_s"] / (2 * row["ann_forward_s"]))
    # results/vit_state_sizes.md (scripts/vit_state_sizes.py): vector neurons and ANN values per image
    assert (vit["neuron_state_per_image"], vit["ann_values_per_image"]) == (111_200, 433_470)
    assert vit["neuron_state_bytes"] == 2 * 4 * 111_200


def test_vit_state_per_image_from_shapes(bench):
    """The default-suite counterpart of the ViT benchmark row (shapes only: no compilation)."""
    import jax
    import jax.numpy as jnp

    import signgd_jax as sg
    from signgd_jax import models

    assert bench.default_dynamics("vit_mini") == "improved" and bench.default_dynamics("resnet_mini") == "paper"
    model, x = models.create("vit_mini"), jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    variables = jax.eval_shape(lambda img: model.init(jax.random.PRNGKey(0), img), x)
    snn = jax.eval_shape(lambda v, img: sg.convert(model, v, [img], dynamics="improved"), variables, x)
    # results/vit_state_sizes.md: 111,200 vector-neuron states against 433,470 ANN values per image
    assert bench.state_per_image(model.apply, variables, snn, (28, 28, 1)) == (111_200, 433_470)
