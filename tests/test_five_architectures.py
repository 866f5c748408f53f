"""The five-architecture script, smoke-sized: trains with the range penalty, tabulates, validates."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import five_architectures  # noqa: E402


def test_smoke_run_with_range_penalty(tmp_path, mnist5k_dir, capsys):
    argv = ["--models", "resmlp_mini", "--epochs", "1", "--limit-train", "256", "--limit", "40",
            "--timesteps", "4", "--table-timesteps", "4", "--dynamics", "paper",
            "--calibration-batches", "1", "--batch-size", "40", "--range-penalty", "resmlp_mini=0.1",
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"),
            "--data-dir", mnist5k_dir, "--no-progress"]
    assert five_architectures.main(argv) == 0
    config = json.loads((tmp_path / "runs" / "resmlp_mini" / "config.json").read_text())
    assert (config["range_penalty"], config["range_bound"]) == (0.1, 2.0)
    table = (tmp_path / "results" / "five_architectures.md").read_text()
    assert "resmlp_mini with range penalty 0.1 (bound 2.0" in table and "| resmlp_mini |" in table
    summary = json.loads((tmp_path / "results" / "five_architectures.json").read_text())
    result = summary["models"]["resmlp_mini"]
    paper = result["dynamics"]["paper"]
    assert set(paper["accuracy"]) == {"4"}
    # accuracies are counts over the 40 test images, and the table shows exactly those
    assert result["num_test_images"] == 40
    assert result["ann"]["accuracy"] == result["ann"]["correct"] / 40
    assert paper["accuracy"]["4"] == paper["correct"]["4"] / 40
    row = f"| resmlp_mini | {100 * result['ann']['accuracy']:.2f} | paper | {100 * paper['accuracy']['4']:.2f} |"
    assert row in table
    # one GELU neuron per token and hidden channel (49 tokens x 96 * 2), each spike reaching the
    # 96 outputs of fc2: synaptic operations = firing rate x neurons x 96
    layers = paper["spike_statistics"]["layers"]
    assert sorted(layers) == [f"{i:03d}_gelu@ResMLP/blocks_{i}/mlp" for i in range(4)]
    for layer in layers.values():
        assert layer["neurons"] == 49 * 96 * 2
        assert abs(layer["sops_per_image_step"] - layer["firing_rate"] * layer["neurons"] * 96) <= 1e-6 * layer["sops_per_image_step"]
    capsys.readouterr()
    assert five_architectures.main(argv[:-1] + ["--range-penalty", "resmlp_mini", "--no-progress"]) == 2
    assert "expected MODEL=LAMBDA" in capsys.readouterr().err
