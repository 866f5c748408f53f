"""Shared fixtures: one offline-prepared mnist5k for the whole session."""
import pytest


@pytest.fixture(scope="session")
def mnist5k_dir(tmp_path_factory):
    """A TFDS data dir holding the prepared mnist5k array_record files."""
    from signgd_jax import data

    d = tmp_path_factory.mktemp("tfds")
    data.load("mnist5k", "train", data_dir=str(d))
    return str(d)
