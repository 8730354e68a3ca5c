"""FLOP and MFU accounting: FLOPs of a compiled step from XLA's cost analysis, divided by a
peak that says what it is.

- FLOPs: XLA's count of the whole step before partitioning, this process's share.
- GPU / TPU: the datasheet's dense peak of the device kind for the compute dtype
  (`DATASHEET`; float32 matmuls run as TF32 on NVIDIA and as bfloat16 passes on TPU at
  JAX's default matmul precision, so they get those peaks), times the local devices.
- CPU: the best rate of jit-compiled 2048 x 2048 matmuls of the compute dtype, measured
  here. It is cached (`FERGATE_CACHE/peak.json`) only when the machine was idle, i.e. when
  the matmul's threads got the cores (process CPU time >= 80% of wall time x the cores this
  process may use): on a busy machine a peak reads low and MFU high. A step faster than the
  peak has it measured again (the better figure is kept, the cache only raised by a
  measurement); MFU is capped at 1, since XLA's FLOP count can overstate a step's work.
  Emulated CPU devices share the machine's cores, so the CPU peak is the machine's.
- An accelerator (or dtype) not in the table: the matmul rate of one device, measured and
  cached, times the local devices.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import jax.numpy as jnp

from fergate.data.cache import cache_root

log = logging.getLogger(__name__)

#: Dense peak FLOP/s per device by device-kind prefix (vendor datasheets; longest prefix wins).
DATASHEET: dict[str, dict[str, float]] = {
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12},  # v5p
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12},
    "TPU v6e": {"bfloat16": 918e12, "float32": 918e12},
    "NVIDIA H100 PCIe": {"bfloat16": 756e12, "float32": 378e12},
    "NVIDIA H100": {"bfloat16": 989e12, "float32": 495e12},  # SXM; float32 = TF32
    "NVIDIA H200": {"bfloat16": 989e12, "float32": 495e12},
    "NVIDIA A100": {"bfloat16": 312e12, "float32": 156e12},
    "NVIDIA L4": {"bfloat16": 121e12, "float32": 60e12},
    "Tesla V100": {"float16": 125e12, "float32": 15.7e12},  # no bfloat16 units: measured instead
}
#: A measurement is cached only if the matmul's threads had the cores to themselves.
IDLE_UTILISATION = 0.8


@dataclasses.dataclass
class Peak:
    flops: float  #: FLOP/s of all local devices together
    source: str  #: what the figure is, for reports: "datasheet: ..." or "measured: ..."
    dtype: str = "float32"
    measured: bool = False  #: a matmul rate of this machine (raised when a step beats it)

    def mfu(self, achieved: float) -> float:
        """achieved / peak, at most 1; a measured peak that the achieved rate beats is
        measured again first (and cached if the machine is idle now)."""
        if achieved > self.flops and self.measured:
            flops, util = measure_matmul(self.dtype)
            if flops > self.flops:
                self.flops = flops
                if util >= IDLE_UTILISATION:
                    _store(_key(self.dtype), flops)
                log.info(f"[perf] a step beat the measured peak: measured again, {flops / 1e9:.1f} GFLOP/s")
        return min(1.0, achieved / self.flops)


def step_flops(lowered) -> float | None:
    """FLOPs of one call of a jitted step on this process's devices, None if unavailable:
    XLA's cost analysis of the lowered, not yet partitioned, program (the whole step,
    whatever the mesh), this process's share of it. The compiled program's figure is one
    device's share, and a device on a model axis repeats the replicated work around the
    sharded layers: scaled by the devices it reads 1.0 / 1.8 / 3.3x the whole step on
    mesh (4, 1) / (2, 2) / (1, 4) (measured on THIN's experts)."""
    try:
        cost = lowered.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) / jax.process_count() if cost and cost.get("flops") else None


def peak(dtype: str = "float32") -> Peak:
    """The peak MFU is measured against, for the default backend and compute `dtype`."""
    dev, n = jax.local_devices()[0], jax.local_device_count()
    if dev.platform != "cpu":
        for prefix in sorted(DATASHEET, key=len, reverse=True):
            if dev.device_kind.startswith(prefix) and dtype in DATASHEET[prefix]:
                return Peak(DATASHEET[prefix][dtype] * n, f"datasheet: {prefix} dense {dtype} x {n} devices", dtype)
        # not in the table: one device's matmul rate (the CPU's load does not slow it) x the devices
        flops = _cache().get(_key(dtype)) or _store(_key(dtype), measure_matmul(dtype)[0])
        return Peak(flops * n, f"measured: best {dtype} 2048^3 matmul on one {dev.device_kind} x {n} devices", dtype)
    what = f"measured: best {dtype} 2048^3 matmul on this machine"
    cached = _cache().get(_key(dtype))
    if cached:
        return Peak(cached, f"{what} (idle, cached)", dtype, measured=True)
    flops, util = measure_matmul(dtype)
    if util >= IDLE_UTILISATION:
        _store(_key(dtype), flops)
        return Peak(flops, f"{what} (idle)", dtype, measured=True)
    return Peak(flops, f"{what} (BUSY: {util:.0%} of the cores, not cached; MFU reads high)", dtype, measured=True)


def measure_matmul(dtype: str = "float32", n: int = 2048, rounds: int = 5, reps: int = 8) -> tuple[float, float]:
    """(best FLOP/s of an n x n matmul on the default device, the share of the machine's
    cores the process used during that best round: ~1 when nothing else runs)."""
    x = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best, util = float("inf"), 0.0
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()  # process time: all threads
        for _ in range(reps):
            f(x).block_until_ready()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if wall / reps < best:
            best, util = wall / reps, cpu / (wall * len(os.sched_getaffinity(0)))
    return 2 * n**3 / best, util


def _key(dtype: str) -> str:
    dev = jax.local_devices()[0]
    return f"{dev.platform}/{dev.device_kind}/{os.cpu_count()}cpu/{dtype}"


def _path() -> str:
    return os.path.join(cache_root(), "peak.json")


def _cache() -> dict:
    try:
        with open(_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _store(key: str, flops: float) -> float:
    """Keeps the best figure ever measured for `key`; returns `flops`."""
    cached = _cache()
    cached[key] = max(flops, cached.get(key, 0.0))
    try:
        os.makedirs(cache_root(), exist_ok=True)
        with open(_path() + ".tmp", "w") as fh:
            json.dump(cached, fh)
        os.replace(_path() + ".tmp", _path())
    except OSError:
        pass
    return flops
