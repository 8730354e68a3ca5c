"""Built-in datasets (the sample set, THIN's synthetic benchmarks), prepared on first use
into a cache directory.

fergate does not import `data_prep` at training time: the cache is filled by running
`fergate prep --dataset sample` in a subprocess, under a file lock so that concurrent
runs (tests, several processes of one job) prepare it once.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

from fergate.data.schema import SCHEMA_VERSION
from fergate.errors import UserError


def cache_root() -> str:
    return os.environ.get("FERGATE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fergate")


def prepared_dir(dataset: str = "sample", log=print, **options) -> str:
    """Directory of a built-in dataset prepared with these `fergate prep` options (prepared
    by a `fergate prep` subprocess if absent)."""
    tag = "-".join(f"{k}{v}" for k, v in sorted(options.items()))
    out = os.path.join(cache_root(), f"{dataset}-v{SCHEMA_VERSION}" + (f"-{tag}" if tag else ""))
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):
        return out
    os.makedirs(cache_root(), exist_ok=True)
    with open(out + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(manifest):
            log(f"[data] preparing the built-in {dataset} dataset into {out} (once)")
            cmd = [sys.executable, "-m", "fergate", "prep", "--dataset", dataset, "--out", out]
            for k, v in sorted(options.items()):
                cmd += [f"--{k}", str(v)]
            if subprocess.run(cmd).returncode != 0 or not os.path.exists(manifest):
                raise UserError(f"preparing the {dataset} dataset into {out} failed (see above)")
    return out
