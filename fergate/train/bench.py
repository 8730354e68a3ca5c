"""`fergate bench`: train / inference step time of any config on its family's example batch.

Compile time is reported apart (`compile_s`); the step time is the median of timed steps
after warm-up. FLOPs come from the step's XLA cost analysis (the whole step, before
partitioning), MFU from
`fergate.train.perf` (which says what its peak is: `peak_source`).
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np

from fergate import models
from fergate.errors import UserError
from fergate.train import perf
from fergate.train.data import DataPlan, resolve
from fergate.train.mesh import global_batch
from fergate.train.program import Program


class _Timed:
    """One config's compiled step on an example batch, timed a step at a time."""

    def __init__(self, config, batch: int | None, infer: bool, data: str | None):
        if batch is not None:
            if batch < 1:
                raise UserError(f"--batch {batch}: must be at least 1")
            with config.unlocked():
                config.input.batch_size = batch
                config.eval.batch_size = batch
        self.data = DataPlan.build(config, data=data) if data else None  # the config resolved against it
        if self.data is None:
            resolve(config, None)
        self.config, self.infer, self.times = config, infer, []
        self.prog = prog = Program(config)
        self.state = prog.new_state()
        local = prog.family.example_batch(config, config.input.batch_size // jax.process_count())
        local["label"] = np.random.default_rng(0).integers(0, prog.num_classes, local["label"].shape).astype(np.int32)
        self.batch = global_batch(local, prog.batch_sharding)
        t = time.perf_counter()
        lowered = (prog.predict if infer else prog.train_step).lower(self.state, self.batch)
        self.compiled = lowered.compile()
        self.compile_s = time.perf_counter() - t
        self.flops = perf.step_flops(lowered)

    def step(self, timed: bool) -> None:
        t = time.perf_counter()
        if self.infer:
            jax.block_until_ready(self.compiled(self.state, self.batch))
        else:
            self.state, metrics = self.compiled(self.state, self.batch)
            jax.block_until_ready(metrics)
        if timed:
            self.times.append(time.perf_counter() - t)

    def report(self) -> dict:
        c, b, flops = self.config, self.config.input.batch_size, self.flops
        dtype = models.compute_dtype(c).name
        med, peak = statistics.median(self.times), perf.peak(dtype)
        return {
            "model": f"{c.model}/{c.variant}", "mode": "infer" if self.infer else "train",
            "params": self.prog.n_params(), "batch": b, "examples_per_sec": round(b / med, 2),
            "step_ms": round(1e3 * med, 3), "compile_s": round(self.compile_s, 3),
            "flops_per_example": int(flops * jax.process_count() / b) if flops else None,
            "mfu": round(peak.mfu(flops / med), 4) if flops else None,
            "peak_gflops": round(peak.flops / 1e9, 1), "peak_source": peak.source,
            "backend": jax.default_backend(), "devices": jax.device_count(), "mesh": dict(self.prog.mesh.shape),
            "dtype": dtype,
        }


def bench(config, batch: int | None = None, steps: int = 20, warmup: int = 3, infer: bool = False,
          data: str | None = None, vs=None) -> dict:
    """Times `steps` train (or inference) steps; with `data`, also the input pipeline's rate
    for the same batches from that prepared directory. With `vs` (another config), both
    steps are compiled and timed in alternation, so that the machine's noise hits both
    alike, and `speedup` = vs's median step time / this one's."""
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps {steps} --warmup {warmup}: need at least 1 timed step and no negative warm-up")
    runs = [_Timed(config, batch, infer, data)] + ([_Timed(vs, batch, infer, data)] if vs is not None else [])
    for i in range(warmup + steps):
        for r in runs:
            r.step(timed=i >= warmup)
    res = runs[0].report()
    if vs is not None:
        res["vs"] = runs[1].report()
        res["speedup"] = round(statistics.median(runs[1].times) / statistics.median(runs[0].times), 3)
    if data:
        res["input_examples_per_sec"] = round(input_rate(runs[0].data), 1)
        res["input_over_train"] = round(res["input_examples_per_sec"] / res["examples_per_sec"], 2)
    return res


def pipeline_bench(config, data_dir: str, batch: int | None = None, batches: int = 50) -> dict:
    """The config's training input pipeline alone on a prepared directory (no model): the
    rate to hold against the step's (`bench(..., data=...)` gives both and their ratio)."""
    with config.unlocked():
        if batch is not None:
            config.input.batch_size = batch
    plan = DataPlan.build(config, data=data_dir)
    return {"model": f"{config.model}/{config.variant}", "mode": "pipeline", "batch": config.input.batch_size,
            "examples_per_sec": round(input_rate(plan, batches), 1), "workers": config.data.workers,
            "data": data_dir}


def prep_bench(workers: list[int], size: int = 280) -> dict:
    """`fergate prep` of `size` images of the sample set (its synthesis and the face
    pipeline: detection, landmarks, alignment, patches, identity) with each number of
    worker processes, into a temporary directory: faces/s and the speed-up of the most
    workers over the fewest."""
    import tempfile

    from data_prep import prep

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


def input_rate(data: DataPlan, batches: int = 50) -> float:
    """Examples/s the training input pipeline of `data` delivers (this process)."""
    it = iter(data.input_pipeline(data.config.data.train_split, train=True))
    next(it)
    t = time.perf_counter()
    n = sum(len(next(it)["label"]) for _ in range(batches))
    return n / (time.perf_counter() - t)


def to_json(res: dict) -> str:
    return json.dumps(res)
