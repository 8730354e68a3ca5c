"""MFU says what it is: a datasheet peak on accelerators; on CPU a measured peak that is
cached only from an idle machine and raised when a step beats it."""

import json
import os
from types import SimpleNamespace

import pytest

from fergate.train import perf


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERGATE_CACHE", str(tmp_path))
    return tmp_path / "peak.json"


def test_cpu_peak_from_a_busy_machine_is_not_cached(cache, monkeypatch):
    monkeypatch.setattr(perf, "measure_matmul", lambda dtype: (100e9, 0.6))  # other work held 40% of the cores
    p = perf.peak("float32")
    assert p.flops == 100e9 and p.measured and "BUSY" in p.source and not cache.exists()
    monkeypatch.setattr(perf, "measure_matmul", lambda dtype: (180e9, 0.97))
    p = perf.peak("float32")
    assert p.flops == 180e9 and "idle" in p.source and list(json.load(open(cache)).values()) == [180e9]
    monkeypatch.setattr(perf, "measure_matmul", lambda dtype: pytest.fail("the cached peak is measured again"))
    assert perf.peak("float32").flops == 180e9 and "cached" in perf.peak("float32").source


def test_a_step_faster_than_the_peak_has_it_measured_again(cache, monkeypatch):
    rates = iter([(100e9, 0.95), (120e9, 0.95)])
    monkeypatch.setattr(perf, "measure_matmul", lambda dtype: next(rates))
    p = perf.peak("float32")
    assert p.mfu(50e9) == pytest.approx(0.5)
    assert p.mfu(150e9) == 1.0  # measured again (120); XLA's FLOP count may overstate: capped
    assert p.flops == 120e9 and list(json.load(open(cache)).values()) == [120e9]


def test_accelerators_use_the_datasheet(monkeypatch, cache):
    for kind, dtype, expected in [("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
                                  ("NVIDIA H100 PCIe", "float32", 378e12),  # TF32: JAX's default f32 precision
                                  ("TPU v5 lite", "bfloat16", 197e12), ("TPU v4", "float32", 275e12)]:
        dev = SimpleNamespace(platform="gpu" if "NVIDIA" in kind else "tpu", device_kind=kind)
        monkeypatch.setattr(perf.jax, "local_devices", lambda dev=dev: [dev])
        monkeypatch.setattr(perf.jax, "local_device_count", lambda: 4)
        p = perf.peak(dtype)
        assert p.flops == 4 * expected and p.source.startswith("datasheet") and not p.measured
    assert not os.path.exists(cache)


def test_the_real_measurement_reports_the_share_of_cores(cache):
    flops, util = perf.measure_matmul("float32", n=256, rounds=2, reps=2)
    assert flops > 1e8 and 0 < util <= 1.5


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
