"""Shared fixtures: a small prepared sample dataset, built once per test session."""

import os
import shutil
import tempfile

import pytest

pytest.register_assert_rewrite("helpers")  # its asserts report their values, as a test's do
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
# The XLA programs the tests' many `fergate` processes compile alike (the narrow MoDuL's steps),
# compiled once per session: a cache of this session's own, so that every run of the suite
# starts cold and its time says what a fresh machine takes.
OWN_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = OWN_XLA_CACHE = tempfile.mkdtemp(prefix="fergate-xla-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")


def pytest_sessionfinish(session, exitstatus):
    if OWN_XLA_CACHE:
        shutil.rmtree(OWN_XLA_CACHE, ignore_errors=True)


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


@pytest.fixture(scope="session")
def uninterrupted(sample_data, tmp_path_factory):
    """The narrow MoDuL trained `RESUME_STEPS` steps without a stop: what every killed,
    signalled and resumed run must end equal to (trained once for all of them)."""
    from helpers import RESUME_AUGMENT, RESUME_STEPS, trained

    return trained(tmp_path_factory, "uninterrupted", sample_data, f"--config.train.steps={RESUME_STEPS}",
                   RESUME_AUGMENT)
