"""Shared fixtures (one offline-prepared mnist5k for the whole session) and the slow checks.

The README's test command runs everything except the tests listed in ``SLOW`` (under 15 minutes
on 2 CPU cores); ``pytest tests -m slow`` runs those: end-to-end runs of whole commands and
notebooks, multi-process and multi-device evaluations, every zoo model converted and simulated,
and every published checkpoint layout against its publisher's logits. Each listed check has a
faster counterpart in the default run.
"""
import pytest

SLOW = (
    "tests/test_notebooks.py::test_notebook_executes[quickstart.ipynb]",
    "tests/test_notebooks.py::test_pretrained_notebook_executes",
    "tests/test_distributed.py::test_two_processes_write_the_single_process_results",
    "tests/test_zoo_conversion.py::",
    "tests/test_cli_pretrained.py::test_two_devices_give_the_same_numbers",
    "tests/test_faults.py::test_a_second_convert_on_a_busy_workdir_stops_and_the_first_is_unharmed",
    "tests/test_train.py::test_stopped_run_resumes_where_it_stopped",
    "tests/test_cli_convert.py::test_four_devices_give_the_same_table",
    "tests/test_checkpoints.py::test_published_logits[timm_convnext_small]",
    "tests/test_checkpoints.py::test_published_logits[torchvision_convnext_small]",
    "tests/test_checkpoints.py::test_published_logits[torchvision_vgg16_bn]",
    "tests/test_checkpoints.py::test_published_logits[timm_resmlp_big_24_224]",
    "tests/test_benchmark.py::test_benchmark_reports_",
    "tests/test_gpu_benchmark.py::test_all_five_zoo_models_run_every_measurement",
    "tests/test_sweep.py::test_four_devices_give_the_same_grid",
    "tests/test_regularize.py::test_penalty_equals_hand_computed_value_and_trains",
    "tests/test_vit.py::test_vit_b16_converts_and_simulates_224x224_images",
    "tests/test_hub.py::test_published_logits_from_the_cache[timm/convnext_small.fb_in1k]",
    "tests/test_hub.py::test_published_logits_from_the_cache[timm/mixer_b16_224.goog_in21k_ft_in1k]",
    "tests/test_hub.py::test_published_logits_from_the_cache[timm/resmlp_big_24_224.fb_in22k_ft_in1k]",
    "tests/test_hub.py::test_published_logits_from_the_cache[timm/vgg16_bn.tv_in1k]",
    "tests/test_hub.py::test_published_logits_from_the_cache[timm/resnet34.a1_in1k]",
    "tests/test_hub.py::test_pretrained_command_end_to_end",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.nodeid.startswith(prefix) for prefix in SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def mnist5k_dir(tmp_path_factory):
    """A TFDS data dir holding the prepared mnist5k array_record files."""
    from signgd_jax import data

    d = tmp_path_factory.mktemp("tfds")
    data.load("mnist5k", "train", data_dir=str(d))
    return str(d)
