"""`fergate sweep`: a table of runs written beside the paper's numbers, resumed after a kill -9,
split over tasks, refused when changed under finished cells; shared stages trained once."""

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import prepared

#: a narrow MoDuL distance network: the sweep's machinery, not accuracy
TABLE = """
def get_table(arg=None):
    budget = ("train.steps=20", "train.log_every=10", "train.ckpt_every=10", "train.eval_every=0",
              "input.batch_size=8", "eval.batch_size=16")
    config = "configs/modul.py:smoke=True,variant=distances"
    return dict(title="two rows", seeds=2, budgets={"smoke": budget},
                rows=[dict(name="narrow", config=config, overrides=(%r,), paper=88.51, paper_note="CK+"),
                      dict(name="wide", config=config, overrides=("modul.dist_hidden=(32, 16)",), paper=91.16),
                      dict(name="bad", config=config, overrides=("train.no_such_key=1",))])
"""


def _table(path, narrow="modul.dist_hidden=(16,)"):
    with open(path, "w") as f:
        f.write(TABLE % narrow)
    return str(path)


def _sweep(table, workdir, data, *extra):
    return [sys.executable, "-m", "fergate", "sweep", table, "--workdir", str(workdir),
            f"--config.data.dir={data}", *extra]


def _marker(workdir, cell):
    try:
        with open(os.path.join(workdir, cell, "sweep.json")) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def _files(directory):
    """{path: sha1} of every file under `directory`."""
    out = {}
    for p in sorted(glob.glob(os.path.join(directory, "**"), recursive=True)):
        if os.path.isfile(p):
            with open(p, "rb") as f:
                out[p] = hashlib.sha1(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def swept(sample_data, tmp_path_factory):
    """The two-row table (and a row that fails), killed with -9 while its second cell trains,
    then run again to the end: (table file, workdir, the first cell's files at the kill, output)."""
    tmp = tmp_path_factory.mktemp("sweep")
    table, w = _table(tmp / "table.py"), tmp / "W"
    p = subprocess.Popen(_sweep(table, w, sample_data), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while _marker(w, "wide/seed-0").get("status") != "running" and p.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert p.poll() is None, p.stdout.read().decode()[-3000:]
    time.sleep(2)
    first = _files(w / "narrow" / "seed-0")
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert _marker(w, "narrow/seed-0")["status"] == "done" and _marker(w, "wide/seed-0")["status"] == "running"
    r = subprocess.run(_sweep(table, w, sample_data), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return table, w, first, r.stdout


def test_two_rows_two_seeds_resumed_after_kill_9(swept):
    table, w, first, out = swept
    assert _files(w / "narrow" / "seed-0") == first  # a finished cell is never redone
    assert "wide/seed-0/.fergate.lock was left by fergate sweep (cell wide seed 0)" in out  # by the killed sweep
    assert "which is gone: taken over" in out
    with open(w / "table.json") as f:
        t = json.load(f)
    rows = {r["name"]: r for r in t["rows"]}
    for name in ("narrow", "wide"):
        r = rows[name]
        values = []
        for seed in (0, 1):
            with open(w / name / f"seed-{seed}" / "eval.json") as f:
                values.append(json.load(f)["mean_class_accuracy"])
        assert r["values"] == values and r["n"] == 2
        assert [(x["seed"], x["value"], x["workdir"]) for x in r["runs"]] == \
            [(0, values[0], f"{name}/seed-0"), (1, values[1], f"{name}/seed-1")]
        assert r["mean"] == pytest.approx(np.mean(values)) and r["std"] == pytest.approx(np.std(values, ddof=1))
    assert rows["narrow"]["paper"] == 88.51 and t["budget"] == "smoke" and t["metric"] == "mean_class_accuracy"
    # the failing row is listed, never averaged in, and the others finished
    assert rows["bad"]["n"] == 0 and rows["bad"]["mean"] is None and len(rows["bad"]["failed"]) == 2
    assert "train.no_such_key" in rows["bad"]["failed"][0]["error"] and not t["complete"]
    md = (w / "table.md").read_text()
    assert "| narrow | " in md and "88.51" in md and "- [2 failed]" in md and "budget `smoke`" in md
    assert t["chance"] == pytest.approx(1 / 7) and "; chance 14.3." in md  # the sample set's 7 classes
    assert os.path.getsize(w / "table.png") > 0
    # progress: one line per cell started and finished, with the sweep's ETA; TensorBoard hparams per run
    assert "[sweep] 1/5 wide seed 0" in out and "ETA" in out and "4 left" in out
    events = glob.glob(str(w / "narrow" / "seed-1" / "tensorboard" / "events.*"))
    assert any(b"hparams" in open(e, "rb").read() for e in events)


def test_tasks_as_two_processes_write_the_one_process_table(swept, sample_data, tmp_path):
    table, w, _, _ = swept
    one = subprocess.run(_sweep(table, w, sample_data, "--seeds", "1"), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    assert "narrow seed 0 ->" not in one.stdout and "wide seed 0 ->" not in one.stdout  # finished: not redone
    two = tmp_path / "W"
    procs = [subprocess.Popen(_sweep(table, two, sample_data, "--seeds", "1", "--task", str(i), "--tasks", "2"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    outs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "narrow seed 0 ->" in outs[0] and "wide seed 0 ->" in outs[1] and "wide seed 0 ->" not in outs[0]
    with open(w / "table.json") as f, open(two / "table.json") as g:
        assert json.load(f) == json.load(g)


def test_changed_table_under_finished_cells_is_one_line(swept, sample_data, tmp_path):
    _, w, _, _ = swept
    changed = _table(tmp_path / "changed.py", narrow="modul.dist_hidden=(24,)")
    r = subprocess.run(_sweep(changed, w, sample_data), capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "row 'narrow'" in r.stderr and "modul.dist_hidden=(24,)" in r.stderr
    r = subprocess.run(_sweep(changed, w, sample_data, "--budget", "paper"), capture_output=True, text=True)
    assert r.returncode == 2 and "--budget paper" in r.stderr


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return prepared(tmp_path_factory, "digits", "digits_rotated", reader_options={"copies": 1}, workers=1)


def test_thin_table_2_trains_one_exogenous_network_per_seed(digits, tmp_path):
    w = tmp_path / "W"
    r = subprocess.run([sys.executable, "-m", "fergate", "sweep", "configs/tables/thin_table2.py:task=digits_rotated",
                        "--workdir", str(w), "--budget", "smoke", "--rows", "exo_tree_gated,thin", "--seeds", "2",
                        f"--config.data.dir={digits}", "--config.train.steps=8", "--config.pretrain.steps=8",
                        "--config.train.eval_every=4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    trained = [p for p in glob.glob(str(w / "*" / "seed-*" / "pretrain" / "rotation")) if not os.path.islink(p)]
    linked = [p for p in glob.glob(str(w / "*" / "seed-*" / "pretrain" / "rotation")) if os.path.islink(p)]
    assert sorted(os.path.relpath(p, w) for p in trained) == \
        [f"exo_tree_gated/seed-{s}/pretrain/rotation" for s in (0, 1)]
    assert sorted(os.path.relpath(os.path.realpath(p), os.path.realpath(w)) for p in linked) == \
        [f"exo_tree_gated/seed-{s}/pretrain/rotation" for s in (0, 1)]
    logs = "".join(open(p).read() for p in glob.glob(str(w / "*" / "seed-*" / "sweep.log")))
    assert logs.count("[train] earlier stage") == 2  # stage-1 trainings: one per seed
    for s in (0, 1):  # each seed's exogenous network trained under that seed
        with open(w / "exo_tree_gated" / f"seed-{s}" / "pretrain" / "rotation" / "config.json") as f:
            assert json.load(f)["seed"] == s
    with open(w / "table.json") as f:
        t = json.load(f)
    assert [(r["name"], r["n"], r["paper"]) for r in t["rows"]] == [("exo_tree_gated", 2, 98.07), ("thin", 2, 98.26)]
    # the extra column: each run's stage-1 rotation accuracy, the shared stage's eval.json value
    stage = []
    for s in (0, 1):
        with open(w / "exo_tree_gated" / f"seed-{s}" / "pretrain" / "rotation" / "eval.json") as f:
            stage.append(json.load(f)["accuracy"])
    assert t["extras"] == ["stage-1 rotation accuracy"]
    for r in t["rows"]:
        assert [run["extras"]["stage-1 rotation accuracy"] for run in r["runs"]] == stage
    md = (w / "table.md").read_text()
    assert "| paper's setting | stage-1 rotation accuracy |" in md
    assert f"| {', '.join(f'{100 * a:.1f}' for a in stage)} |" in md
