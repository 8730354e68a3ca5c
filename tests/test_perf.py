"""MFU says what it is: a datasheet peak on accelerators; on CPU a peak measured in the run
that uses it (bench: alternated with its timed steps), never cached, and measured again when
a training step beats it."""

import json
import os
from types import SimpleNamespace

import pytest

from fergate.train import perf


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A FERGATE_CACHE holding a peak.json as older fergate wrote it, with a figure no
    measurement here gives."""
    monkeypatch.setenv("FERGATE_CACHE", str(tmp_path))
    path = tmp_path / "peak.json"
    path.write_text(json.dumps({"cpu/cpu/2cpu/float32": 9e15}))
    return path


@pytest.fixture
def matmuls(monkeypatch):
    """Matmul rounds without matmuls: each measures the next (FLOP/s, share of the cores the
    process had) of `matmuls.rates` and logs "peak" in `matmuls.log`."""
    fake = SimpleNamespace(rates=[], log=[])

    class Probe(perf.MatmulProbe):
        def __init__(self, dtype="float32", n=2048, reps=4):
            self.dtype, self.n, self.reps, self.cpu, self.devices, self.where = dtype, n, reps, True, 1, "this machine"
            self.rates, self.utils = [], []

        def round(self):
            rate, util = fake.rates.pop(0)
            self.rates.append(rate)
            self.utils.append(util)
            fake.log.append("peak")
            return rate

    monkeypatch.setattr(perf, "MatmulProbe", Probe)
    return fake


def test_the_cpu_peak_is_measured_in_the_run_and_never_cached(cache, matmuls):
    """A busy machine once gave a peak of 172 GFLOP/s that stayed cached and made MFU read
    2.6x high: the peak is measured by the run that uses it, and a cached figure is never
    read nor written."""
    before = cache.read_text()
    matmuls.rates += [(100e9, 0.5), (120e9, 0.5)]  # other work held half the cores
    p = perf.peak("float32")
    assert p.flops == 110e9 and p.rounds == (100e9, 120e9) and p.measured
    assert p.source.startswith("measured as this run started: median of 2 rounds") and "other work held" in p.source
    assert cache.read_text() == before and len(os.listdir(cache.parent)) == 1


def test_a_step_faster_than_the_peak_has_it_measured_again_once(cache, matmuls):
    matmuls.rates += [(100e9, 0.95)] * 2 + [(120e9, 0.95)] * 2
    p = perf.peak("float32")
    assert p.mfu(50e9) == pytest.approx(0.5) and len(matmuls.rates) == 2  # slower than the peak: not measured
    assert p.mfu(150e9) == 1.0  # measured again (120); XLA's FLOP count may overstate: capped
    assert p.flops == 120e9 and "again when a step beat" in p.source
    assert p.mfu(150e9) == 1.0 and p.flops == 120e9  # once: no round left to measure


def test_bench_alternates_the_peak_rounds_with_the_timed_steps(cache, matmuls, monkeypatch):
    """`fergate bench` measures the peak in matmul rounds before, between and after its timed
    steps (after warm-up; both configs' steps with --vs), so that load hits the steps and the
    peak alike, and says so in its line; a cached peak is not read."""
    from fergate import config as C
    from fergate.train import bench

    class Timed(bench._Timed):  # the timing loop and the report, without compiling a model
        def __init__(self, config, batch, infer, data):
            self.config, self.infer, self.times, self.compile_s, self.flops = config, infer, [], 0.0, 2e9
            self.prog = SimpleNamespace(n_params=lambda: 1, mesh=SimpleNamespace(shape={"data": 1}))

        def step(self, timed):
            matmuls.log.append(self.config.variant + ("" if timed else " warm-up"))
            if timed:
                self.times.append(0.1)  # 20 GFLOP/s

    monkeypatch.setattr(bench, "_Timed", Timed)
    matmuls.rates += [(40e9, 1.0), (50e9, 1.0), (30e9, 0.4), (40e9, 0.6), (45e9, 1.0)]
    res = bench.bench(C.load("configs/modul.py:variant=joint"), steps=8, warmup=1,
                      vs=C.load("configs/modul.py:variant=distances"))
    two = ["joint", "distances"] * 2
    assert matmuls.log == ["joint warm-up", "distances warm-up", "peak", *two, "peak", *two, "peak", *two, "peak",
                           *two, "peak"]
    assert res["peak_rounds"] == [40.0, 50.0, 30.0, 40.0, 45.0] and res["peak_gflops"] == 40.0
    assert res["peak_source"].startswith("measured in this run, alternated with the timed steps: median of 5 rounds")
    assert res["mfu"] == 0.5 and res["vs"]["mfu"] == 0.5 and res["vs"]["peak_rounds"] == res["peak_rounds"]
    matmuls.rates += [(40e9, 1.0), (50e9, 1.0)]  # one timed step: a round before it and one after
    assert bench.bench(C.load("configs/modul.py"), steps=1, warmup=0)["peak_rounds"] == [40.0, 50.0]


def test_accelerators_use_the_datasheet(monkeypatch):
    for kind, dtype, expected in [("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
                                  ("NVIDIA H100 PCIe", "float32", 378e12),  # TF32: JAX's default f32 precision
                                  ("TPU v5 lite", "bfloat16", 197e12), ("TPU v4", "float32", 275e12)]:
        dev = SimpleNamespace(platform="gpu" if "NVIDIA" in kind else "tpu", device_kind=kind)
        monkeypatch.setattr(perf.jax, "local_devices", lambda dev=dev: [dev])
        monkeypatch.setattr(perf.jax, "local_device_count", lambda: 4)
        p = perf.peak(dtype)
        assert p.flops == 4 * expected and p.source.startswith("datasheet") and not p.measured


def test_the_real_measurement_reports_the_share_of_cores(cache):
    probe = perf.MatmulProbe("float32", n=256, reps=2)
    assert probe.round() > 1e8 and probe.round() > 1e8 and 0 < probe.utils[0] <= 1.5
    assert "median of 2 rounds of 2 float32 256^3 matmuls on this machine" in probe.peak("here").source
    assert "% of the cores" in probe.peak("here").source


def test_flops_per_example_do_not_depend_on_the_device_count():
    """FLOPs are XLA's count of the whole step before partitioning: the same on 1 device, 2,
    and a 2 x 2 mesh with THIN's experts on the model axis (the compiled program's
    per-device count, scaled by the devices, counted the model axis's replicated work twice)."""
    import subprocess
    import sys

    def flops(n, model=1):
        r = subprocess.run([sys.executable, "-m", "fergate", "bench", "--config",
                            "configs/thin.py:task=digits_rotated,variant=ensemble", "--batch", "32", "--steps", "1",
                            "--warmup", "0", "--cpu_devices", str(n), f"--config.mesh.model={model}"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])["flops_per_example"]

    one = flops(1)
    assert one > 0 and flops(2) == one and flops(4, model=2) == one


def test_bench_times_the_input_pipeline_and_data_prep_alone(sample_data):
    """`fergate bench --pipeline` (no model) and `--prep` (the face pipeline with N workers)
    report their rates in the one-line JSON; rates are for benchmarks, not asserted here."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "fergate", "bench", "--config", "configs/modul.py", "--pipeline",
                        "--data", sample_data, "--batch", "8"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["mode"] == "pipeline" and line["batch"] == 8 and line["examples_per_sec"] > 0
    # without --data the config's own data; a stage's features exist only in a trained workdir
    r = subprocess.run([sys.executable, "-m", "fergate", "bench", "--pipeline", "--config",
                        "configs/vshnn.py:variant=c3d_sagru_b"], capture_output=True, text=True)
    assert r.returncode == 2 and "add --data W/pretrain/frames/features" in r.stderr
    from fergate import plugins

    res = plugins.prep_bench([1, 2], size=14)  # the offline stage's, through its entry point
    assert set(res["faces_per_sec"]) == {"1", "2"} and all(v > 0 for v in res["faces_per_sec"].values())
    assert res["speedup_of"] == "2 workers over 1"
