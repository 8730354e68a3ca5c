"""`fergate bench --prep`: the offline stage's face pipeline timed with several worker counts
(fergate reaches it through the `fergate.prep_bench` entry point)."""

from __future__ import annotations

import time

from data_prep import prep
from fergate.errors import UserError


def prep_bench(workers: list[int], size: int = 280) -> dict:
    """`fergate prep` of `size` images of the sample set (its synthesis and the face
    pipeline: detection, landmarks, alignment, patches, identity) with each number of
    worker processes, into a temporary directory: faces/s and the speed-up of the most
    workers over the fewest."""
    import tempfile

    if not workers or min(workers) < 1 or size < 1:
        raise UserError(f"--prep_workers {workers} --prep_size {size}: at least one worker count >= 1, size >= 1")
    rates = {}
    for n in workers:
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            m = prep.run("sample", None, out, prep.PrepOptions(), {"size": size, "clips": 0}, workers=n)
            rates[n] = sum(v["records"] for v in m["splits"].values()) / (time.perf_counter() - t)
    lo, hi = min(workers), max(workers)
    return {"mode": "prep", "dataset": "sample", "images": size, "faces_per_sec": {str(n): round(r, 2)
                                                                                   for n, r in rates.items()},
            "speedup": round(rates[hi] / rates[lo], 3), "speedup_of": f"{hi} workers over {lo}"}
