"""Shared fixtures: a small prepared sample dataset, built once per test session."""

import os

import pytest

pytest.register_assert_rewrite("helpers")  # its asserts report their values, as a test's do
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """70 images + 7 clips of the built-in sample set, 16 records per shard."""
    from helpers import prepared

    from data_prep import prep

    return prepared(tmp_path_factory, "sample", "sample", prep.PrepOptions(records_per_file=16),
                    {"size": 70, "clips": 7}, workers=2)


@pytest.fixture(scope="session")
def photos():
    """The two real photos every install has (scikit-image's astronaut, matplotlib's
    grace_hopper): {subject: RGB image}."""
    from data_prep import sample

    return {name: sample.read_source(path) for name, path, _ in sample.sample_photos()
            if name in ("astronaut", "grace_hopper")}
