"""What several test modules share: data prepared once per module, the narrow MoDuL they train
through `fergate train` (once per module: `trained`), and the run interrupted and resumed that
must end where an uninterrupted one ends."""

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from fergate import cli
from fergate import config as C
from fergate.train.checkpoint import Checkpointer
from fergate.train.program import Program

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A narrow MoDuL (all gates on) for tests of the machinery, not of accuracy.
SMALL = ["--config.modul.dist_hidden=(64, 32)", "--config.modul.patch_convs=(8, 16, 16)",
         "--config.modul.patch_hidden=(64, 32)", "--config.modul.gate_convs=(4, 8, 8)",
         "--config.modul.gate_hidden=16", "--config.input.batch_size=8", "--config.eval.batch_size=16"]


def prepared(tmp_path_factory, name: str, dataset: str, *args, **kwargs) -> str:
    """`dataset` prepared (`data_prep.prep.run`'s arguments after `out`) into a new temporary
    folder `name`: its path."""
    from data_prep import prep

    out = str(tmp_path_factory.mktemp(name))
    prep.run(dataset, None, out, *args, **kwargs)
    return out


def train_cmd(workdir, data, *extra, config="configs/modul.py:smoke=True") -> list[str]:
    """`fergate train` of the narrow MoDuL on `data` in `workdir`."""
    return [sys.executable, "-m", "fergate", "train", "--config", config, "--workdir", str(workdir),
            f"--config.data.dir={data}", *SMALL, *extra]


def trained(tmp_path_factory, name: str, data, *extra) -> Path:
    """The workdir `name`/w, in a new temporary folder `name`, of a `fergate train` of the narrow
    MoDuL on `data` (`train_cmd`'s `extra` overrides) that must succeed."""
    w = tmp_path_factory.mktemp(name) / "w"
    r = subprocess.run(train_cmd(w, data, *extra), capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return w


def final_params(workdir) -> tuple[int, dict]:
    """(step, parameters) of a workdir's newest checkpoint."""
    state, step = Checkpointer(str(workdir)).restore(Program(C.load_workdir(workdir)).abstract_sharded_state())
    return step, jax.device_get(state.params)


#: The run the interrupted ones are compared with (`uninterrupted` in conftest.py): how often a
#: run logs or checkpoints does not change its parameters.
RESUME_STEPS = 40
#: ... with augmentations drawn in the jitted step: a resumed run must draw the same ones
RESUME_AUGMENT = "--config.data.augment=flip|rotate(10)|brightness_contrast"


def interrupted_run(w, data, extra, ready: Callable[[], bool], sig: int) -> subprocess.Popen:
    """The narrow MoDuL's `RESUME_STEPS`-step run in `w` until `ready()` (at most 240 s), when
    it gets `sig`: the ended process (`.out`, `.err`: its output)."""
    p = subprocess.Popen(train_cmd(w, data, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not ready() and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(sig)
    p.out, p.err = p.communicate(timeout=120)
    return p


def assert_same_final_params(ref, w, steps: int) -> None:
    """Both workdirs end at `steps` with the same parameters."""
    (sa, pa), (sb, pb) = final_params(ref), final_params(w)
    assert sa == sb == steps
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), pa, pb)


def metrics_lines(workdir) -> int:
    """How many lines a workdir's metrics.jsonl has (0 before the first)."""
    path = os.path.join(workdir, "metrics.jsonl")
    return sum(1 for _ in open(path)) if os.path.exists(path) else 0


def run_fergate(*args: str) -> int:
    """`fergate ARGS` in this process, leaving the logging set-up of the command behind (the
    tests after it read the `fergate` loggers' records through pytest's caplog) and malloc's
    settings alone (`fergate.runtime`: they would stay for the rest of the session)."""
    loggers = [logging.getLogger(name) for name in cli.LOGGERS]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    allocator = os.environ.get("FERGATE_HOST_ALLOCATOR")
    os.environ["FERGATE_HOST_ALLOCATOR"] = "0"
    try:
        return cli.main([str(a) for a in args])
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved):
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
        if allocator is None:
            del os.environ["FERGATE_HOST_ALLOCATOR"]
        else:
            os.environ["FERGATE_HOST_ALLOCATOR"] = allocator


HOLD = """
import sys, time
from fergate import lock
with lock.hold(sys.argv[1], "fergate train"):
    print("held", flush=True)
    time.sleep(300)
"""


def holder(directory) -> subprocess.Popen:
    """Another process holding `directory`'s workdir lock, as a running `fergate train` does,
    until it is killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p
