"""The built-in sample dataset, prepared on first use into a cache directory.

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


def sample_dir(size: int = 2800, clips: int = 140, seed: int = 0, log=print) -> str:
    """Directory of the prepared sample dataset with these options (prepared if absent)."""
    out = os.path.join(cache_root(), f"sample-v{SCHEMA_VERSION}-n{size}-c{clips}-s{seed}")
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):
        return out
    os.makedirs(cache_root(), exist_ok=True)
    with open(out + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(manifest):
            log(f"[data] preparing the built-in sample dataset into {out} (once; a few minutes on 2 cores)")
            cmd = [sys.executable, "-m", "fergate", "prep", "--dataset", "sample", "--out", out,
                   "--size", str(size), "--clips", str(clips), "--seed", str(seed)]
            if subprocess.run(cmd).returncode != 0 or not os.path.exists(manifest):
                raise UserError(f"preparing the sample dataset into {out} failed (see above)")
    return out
