"""`fergate bench`: train / inference step time of any config on its family's example batch.

Compile time is reported apart (`compile_s`); the step time is the median of timed steps
after warm-up. FLOPs come from the step's XLA cost analysis (the whole step, before
partitioning), MFU from `fergate.train.perf`'s peak, which the line names (`peak_source`):
a datasheet's, or matmul rounds measured in alternation with the timed steps
(`peak_rounds`), so that whatever else loads the machine slows both alike.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np

from fergate import models
from fergate.data import augment
from fergate.data.pipeline import num_records
from fergate.errors import UserError
from fergate.train import perf
from fergate.train.data import DataPlan, resolve
from fergate.train.mesh import global_batch
from fergate.train.program import Program

#: `bench` measures a peak without a datasheet figure in a matmul round before its timed steps
#: and one after each of (at most) this many blocks of them
PEAK_BLOCKS = 4


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
        self.batch = global_batch(local if infer else augment.host_batch(local, prog.ops), prog.batch_sharding)
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

    @property
    def dtype(self) -> str:
        return models.compute_dtype(self.config).name

    def report(self, peak: perf.Peak) -> dict:
        c, b, flops = self.config, self.config.input.batch_size, self.flops
        med = statistics.median(self.times)
        return {
            "model": f"{c.model}/{c.variant}", "mode": "infer" if self.infer else "train",
            "params": self.prog.n_params(), "batch": b, "examples_per_sec": round(b / med, 2),
            "step_ms": round(1e3 * med, 3), "compile_s": round(self.compile_s, 3),
            "flops_per_example": int(flops * jax.process_count() / b) if flops else None,
            "mfu": round(peak.mfu(flops / med), 4) if flops else None,
            "peak_gflops": round(peak.flops / 1e9, 1), "peak_source": peak.source,
            "peak_rounds": [round(r / 1e9, 1) for r in peak.rounds],
            "backend": jax.default_backend(), "devices": jax.device_count(), "mesh": dict(self.prog.mesh.shape),
            "dtype": self.dtype,
        }


def bench(config, batch: int | None = None, steps: int = 20, warmup: int = 3, infer: bool = False,
          data: str | None = None, vs=None) -> dict:
    """Times `steps` train (or inference) steps; with `data`, also the input pipeline's rate
    for the same batches from that prepared directory. With `vs` (another config), both
    steps are compiled and timed in alternation, so that the machine's noise hits both
    alike, and `speedup` = vs's median step time / this one's. A peak without a datasheet
    figure is measured the same way: a matmul round before the timed steps and one after
    each of `PEAK_BLOCKS` blocks of them (one per step with fewer steps)."""
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps {steps} --warmup {warmup}: need at least 1 timed step and no negative warm-up")
    runs = [_Timed(config, batch, infer, data)] + ([_Timed(vs, batch, infer, data)] if vs is not None else [])
    sheets = {r.dtype: perf.datasheet(r.dtype) for r in runs}
    probes = [perf.MatmulProbe(d) for d, sheet in sheets.items() if sheet is None]
    blocks = min(steps, PEAK_BLOCKS)
    rounds_after = {warmup + round(steps * (k + 1) / blocks) for k in range(blocks)}  # steps run before a round

    def peak_round():
        for p in probes:
            p.round()

    for i in range(warmup + steps):
        if i == warmup:
            peak_round()
        for r in runs:
            r.step(timed=i >= warmup)
        if i + 1 in rounds_after:
            peak_round()
    peaks = {**sheets, **{p.dtype: p.peak("in this run, alternated with the timed steps") for p in probes}}
    res = runs[0].report(peaks[runs[0].dtype])
    if vs is not None:
        res["vs"] = runs[1].report(peaks[runs[1].dtype])
        res["speedup"] = round(statistics.median(runs[1].times) / statistics.median(runs[0].times), 3)
    if data:
        res["input_examples_per_sec"] = round(input_rate(runs[0].data)[0], 1)
        res["input_over_train"] = round(res["input_examples_per_sec"] / res["examples_per_sec"], 2)
    return res


def pipeline_bench(config, data_dir: str, batch: int | None = None, batches: int = 50) -> dict:
    """The config's training input pipeline alone on a prepared directory (no model): the
    rate to hold against the step's (`bench(..., data=...)` gives both and their ratio), and
    what it sends to the devices (`bytes_per_example`, `mb_per_sec`: uint8 where the data
    is; the augmentations that run in the step, `device_ops`, are not in it)."""
    with config.unlocked():
        if batch is not None:
            config.input.batch_size = batch
    plan = DataPlan.build(config, data=data_dir)
    epoch = -(-num_records(data_dir, config.data.train_split) // config.input.batch_size)
    first, _ = input_rate(plan, epoch)  # the first epoch: every record read and decoded
    rate, nbytes = input_rate(plan, batches, warm=epoch)  # after it: what the cache holds is served
    ops = [op.name for op in models.family(config.model).device_ops(config)]
    return {"model": f"{config.model}/{config.variant}", "mode": "pipeline", "batch": config.input.batch_size,
            "examples_per_sec": round(rate, 1), "first_epoch_examples_per_sec": round(first, 1),
            "bytes_per_example": nbytes,
            "mb_per_sec": round(rate * nbytes / 1e6, 2), "device_ops": ops, "workers": config.data.workers,
            "cache_mb": config.data.get("cache_mb", 0), "data": data_dir}


def input_rate(data: DataPlan, batches: int = 50, warm: int = 1) -> tuple[float, int]:
    """(examples/s, bytes per example) the training input pipeline of `data` delivers (this
    process), timed over `batches` batches after `warm` untimed ones."""
    it = iter(data.input_pipeline(data.config.data.train_split, train=True))
    first = next(it)
    for _ in range(warm - 1):
        next(it)
    t = time.perf_counter()
    n = sum(len(next(it)["label"]) for _ in range(batches))
    rate = n / (time.perf_counter() - t)
    return rate, int(sum(v.nbytes for v in first.values()) // len(first["label"]))


def to_json(res: dict) -> str:
    return json.dumps(res)
