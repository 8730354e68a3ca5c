"""Where fergate keeps what it prepares once per machine: the built-in datasets (the sample
set, THIN's synthetic benchmarks) (`FERGATE_CACHE`, default ~/.cache/fergate). The peak
FLOP/s that MFU divides by is not kept: it is measured in the run that uses it
(`fergate.train.perf`)."""

from __future__ import annotations

import os

from fergate.data.schema import SCHEMA_VERSION

#: Bumped when data_prep writes other contents for the same options (a new face template, a
#: recalibrated sample set), so that cached built-in datasets are prepared again.
RECIPE = 3


def cache_root() -> str:
    return os.environ.get("FERGATE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fergate")


def builtin_dir(dataset: str, options: dict) -> str:
    """The directory a built-in dataset prepared with these `fergate prep` options has in the
    cache (the offline stage prepares it, reached through `fergate.plugins.prepare_builtin`;
    training only reads it)."""
    tag = "-".join(f"{k}{v}" for k, v in sorted(options.items()))
    return os.path.join(cache_root(), f"{dataset}-v{SCHEMA_VERSION}.{RECIPE}" + (f"-{tag}" if tag else ""))
