"""FLOP and MFU accounting: FLOPs of a compiled step from XLA's cost analysis, divided by a
peak that says what it is.

- FLOPs: XLA's count of the whole step before partitioning, this process's share.
- GPU / TPU: the datasheet's dense peak of the device kind for the compute dtype
  (`DATASHEET`; float32 matmuls run as TF32 on NVIDIA and as bfloat16 passes on TPU at
  JAX's default matmul precision, so they get those peaks), times the local devices.
- CPU (and an accelerator or dtype not in the table: one device's rate x the local
  devices): the rate of jit-compiled 2048 x 2048 matmuls of the compute dtype, measured in
  the same run as the steps it is the peak for, never cached: a figure measured under
  another load than the steps' misstates MFU (a busy machine's peak read 172 GFLOP/s
  where the idle one gives ~460, and MFU read 2.6x high). `fergate bench` alternates the
  matmul rounds with its timed steps (`MatmulProbe`), so that load hits both; training
  measures a few rounds as it starts, and again if a step beats that figure. MFU is capped
  at 1, since XLA's FLOP count can overstate a step's work. Emulated CPU devices share the
  machine's cores, so the CPU peak is the machine's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

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
#: Below this share of the cores during the matmuls, other work held the machine: said in the source.
IDLE_UTILISATION = 0.8
#: Matmul rounds (of two matmuls) training measures as it starts: ~0.2 s on an idle 2-core machine.
START_ROUNDS = 2


@dataclasses.dataclass
class Peak:
    flops: float  #: FLOP/s of all local devices together
    source: str  #: what the figure is and how it was had, for reports: "datasheet: ..." or "measured ..."
    dtype: str = "float32"
    rounds: tuple[float, ...] = ()  #: a measured peak: each matmul round's FLOP/s (all local devices)
    #: a measured peak taken before the steps: measures it afresh, once (a step beat it: it was taken under load)
    remeasure: Callable[[], Peak] | None = None

    @property
    def measured(self) -> bool:
        return bool(self.rounds)

    def mfu(self, achieved: float) -> float:
        """achieved / peak, at most 1; a peak that can be measured again and that the achieved
        rate beats is measured again first, once (the higher figure kept)."""
        if achieved > self.flops and self.remeasure is not None:
            again, self.remeasure = self.remeasure(), None
            if again.flops > self.flops:
                self.flops, self.rounds, self.source = again.flops, again.rounds, again.source
                log.info(f"[perf] a step beat the measured peak: measured again, {again.flops / 1e9:.1f} GFLOP/s")
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


def datasheet(dtype: str = "float32") -> Peak | None:
    """The datasheet peak of the default backend's devices for `dtype`, None where there is
    none (CPU, a device kind or dtype not in `DATASHEET`): that peak is measured."""
    dev, n = jax.local_devices()[0], jax.local_device_count()
    if dev.platform == "cpu":
        return None
    for prefix in sorted(DATASHEET, key=len, reverse=True):
        if dev.device_kind.startswith(prefix) and dtype in DATASHEET[prefix]:
            return Peak(DATASHEET[prefix][dtype] * n, f"datasheet: {prefix} dense {dtype} x {n} devices", dtype)
    return None


def peak(dtype: str = "float32", how: str = "as this run started") -> Peak:
    """The peak a training run's MFU is measured against, for the default backend and compute
    `dtype`: the datasheet's, else `START_ROUNDS` matmul rounds measured now (and again, once,
    when a step beats them)."""
    sheet = datasheet(dtype)
    if sheet is not None:
        return sheet
    probe = MatmulProbe(dtype, reps=2)
    for _ in range(START_ROUNDS):
        probe.round()
    p = probe.peak(how)
    p.remeasure = lambda: peak(dtype, "again when a step beat the figure taken as this run started")
    return p


class MatmulProbe:
    """A measured peak: rounds of `reps` back-to-back jit-compiled n x n matmuls of `dtype` on
    the default device, each round's FLOP/s (times the local devices off CPU, where emulated
    devices share the cores) and the share of the machine's cores the process had during it
    (~1 when nothing else runs). `fergate bench` runs a round between blocks of its timed
    steps, so that the peak is measured under the steps' load; its figure is the median round,
    as the step time is the median step."""

    def __init__(self, dtype: str = "float32", n: int = 2048, reps: int = 4):
        dev = jax.local_devices()[0]
        self.dtype, self.n, self.reps, self.cpu = dtype, n, reps, dev.platform == "cpu"
        self.devices = 1 if self.cpu else jax.local_device_count()
        self.where = "this machine" if self.cpu else f"one {dev.device_kind} x {self.devices} devices"
        self.x = jnp.ones((n, n), dtype)
        self.f = jax.jit(lambda a: a @ a)
        self.f(self.x).block_until_ready()  # compiled and warm: not in a round
        self.rates: list[float] = []
        self.utils: list[float] = []

    def round(self) -> float:
        """Measures one round; returns its FLOP/s."""
        t, c = time.perf_counter(), time.process_time()  # process time: all threads
        for _ in range(self.reps):
            self.f(self.x).block_until_ready()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        self.rates.append(2 * self.n**3 * self.reps / wall * self.devices)
        self.utils.append(cpu / (wall * len(os.sched_getaffinity(0))))
        return self.rates[-1]

    def peak(self, how: str) -> Peak:
        """The median round as a `Peak` whose source says how it was measured (`how`), the
        rounds' range and the share of the cores the process had."""
        if not self.rates:
            raise ValueError("no matmul round measured")
        flops, util = statistics.median(self.rates), statistics.median(self.utils)
        lo, hi = min(self.rates) / 1e9, max(self.rates) / 1e9
        cores = (f"; the process had {util:.0%} of the cores"
                 f"{'' if util >= IDLE_UTILISATION else ', other work held the rest'}") if self.cpu else ""
        return Peak(flops, f"measured {how}: median of {len(self.rates)} rounds of {self.reps} {self.dtype} "
                           f"{self.n}^3 matmuls on {self.where} ({lo:.1f}-{hi:.1f} GFLOP/s{cores})", self.dtype,
                    tuple(self.rates))
