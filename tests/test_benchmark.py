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
