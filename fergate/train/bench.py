"""`fergate bench`: train / inference step time on synthetic batches of the model's shapes.

Compile time is reported apart (`compile_s`); the step time is the median of timed steps
after warm-up. FLOPs come from the compiled step's XLA cost analysis; MFU divides the
achieved FLOP/s by a peak *measured* here: the best of repeated jit-compiled
2048 x 2048 float32 matmuls on the same backend (`peak_flops`, measured once per machine
kind and cached), i.e. what this machine's XLA can actually reach, not a datasheet number.
"""

from __future__ import annotations

import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled function (XLA cost analysis), None if unavailable."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and cost.get("flops") else None


@functools.cache
def peak_flops(n: int = 2048, reps: int = 20) -> float:
    """Practical fp32 peak FLOP/s of all local devices: the best of `reps` jit-compiled
    n x n matmuls, measured once per machine kind and cached (`FERGATE_CACHE/peak.json`),
    so that MFU figures of different runs share one denominator."""
    import os

    from fergate.data.sample import cache_root

    dev = jax.local_devices()[0]
    key = f"{jax.default_backend()}/{dev.device_kind}/{jax.local_device_count()}/{os.cpu_count()}"
    path = os.path.join(cache_root(), "peak.json")
    try:
        with open(path) as f:
            cached = json.load(f)
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return cached[key]
    x = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = min(_time(lambda: f(x).block_until_ready()) for _ in range(reps))
    cached[key] = 2 * n**3 / best * jax.local_device_count()
    try:
        os.makedirs(cache_root(), exist_ok=True)
        with open(path + ".tmp", "w") as fh:
            json.dump(cached, fh)
        os.replace(path + ".tmp", path)
    except OSError:
        pass
    return cached[key]


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class _Timed:
    """One config's compiled step on a synthetic batch, timed a step at a time."""

    def __init__(self, config, batch: int | None, infer: bool, data: str | None):
        from fergate.data.pipeline import read_manifest
        from fergate.train.trainer import Model, example_batch, global_batch, resolve

        if batch:
            with config.unlocked():
                config.input.batch_size = batch
                config.eval.batch_size = batch
        resolve(config, read_manifest(data) if data else None)
        self.config, self.infer, self.times = config, infer, []
        b = config.input.batch_size
        self.model = m = Model(config)
        self.state = m.new_state()
        rng = np.random.default_rng(0)
        local = example_batch(config, b // jax.process_count())
        for k, v in local.items():  # realistic values: finite distances, non-constant images
            if v.dtype == np.uint8:
                local[k] = rng.integers(0, 256, v.shape, np.uint8)
            elif k == "landmarks":
                local[k] = rng.uniform(0, config.input.face_size, v.shape).astype(np.float32)
            elif k == "iod":
                local[k] = np.full(v.shape, 0.4 * config.input.face_size, np.float32)
            elif k == "label":
                local[k] = rng.integers(0, 7, v.shape).astype(np.int32)
        self.batch = global_batch(local, m.batch_sharding)
        t = time.perf_counter()
        self.compiled = (m.predict if infer else m.train_step).lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t
        self.flops = compiled_flops(self.compiled)

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
        med, peak = statistics.median(self.times), peak_flops()
        return {
            "model": f"{c.model}/{c.variant}", "mode": "infer" if self.infer else "train",
            "params": self.model.n_params(), "batch": b, "examples_per_sec": round(b / med, 2),
            "step_ms": round(1e3 * med, 3), "compile_s": round(self.compile_s, 3),
            "flops_per_example": int(flops / b) if flops else None,
            "mfu": round(flops / med / peak, 4) if flops else None,
            "peak_gflops": round(peak / 1e9, 1), "backend": jax.default_backend(), "devices": jax.device_count(),
            "dtype": c.train.dtype,
        }


def bench(config, batch: int | None = None, steps: int = 20, warmup: int = 3, infer: bool = False,
          data: str | None = None, vs=None) -> dict:
    """Times `steps` train (or inference) steps; with `data`, also the input pipeline's rate
    for the same batches from that prepared directory. With `vs` (another config), both
    steps are compiled and timed in alternation, so that the machine's noise hits both
    alike, and `speedup` = vs's median step time / this one's."""
    runs = [_Timed(config, batch, infer, data)] + ([_Timed(vs, batch, infer, data)] if vs is not None else [])
    for i in range(warmup + steps):
        for r in runs:
            r.step(timed=i >= warmup)
    res = runs[0].report()
    if vs is not None:
        res["vs"] = runs[1].report()
        res["speedup"] = round(statistics.median(runs[1].times) / statistics.median(runs[0].times), 3)
    if data:
        res["input_examples_per_sec"] = round(input_rate(config, data, config.input.batch_size), 1)
    return res


def input_rate(config, data_dir: str, batch: int, batches: int = 50) -> float:
    """Examples/s the training input pipeline delivers for this config (one process)."""
    from fergate.data import pipeline
    from fergate.train.trainer import input_transforms

    fields, rand, det = input_transforms(config)
    it = iter(pipeline.make_dataset(data_dir, config.data.train_split, fields, batch, balance=config.data.balance,
                                    random_transforms=rand, transforms=det, workers=config.data.workers))
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t)


def to_json(res: dict) -> str:
    return json.dumps(res)
