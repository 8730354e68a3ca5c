"""Faults a cluster brings, each one line, nothing finished lost, the rerun equal to an
undisturbed run: a second writer on a workdir (refused), a lock left by a dead process (taken
over), a full disk while checkpointing (the partial checkpoint removed, the run resumed)."""

import contextlib
import errno
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import RESUME_AUGMENT, RESUME_STEPS, assert_same_final_params, holder, run_fergate, train_cmd

from fergate import lock
from fergate.errors import DiskFull, UserError
from fergate.files import read_json
from fergate.train import checkpoint


def _lock_file(directory, **info) -> None:
    """A lock file as another process would leave it."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, lock.NAME), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getppid(), "pid_start": None,
                   "since": "2026-01-01 00:00:00", "command": "fergate train", "token": "t", **info}, f)


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(sample_data, tmp_path):
    w = tmp_path / "w"
    p = holder(w)
    try:
        r = subprocess.run(train_cmd(w, sample_data, "--config.train.steps=6"), capture_output=True, text=True)
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert f"is in use by fergate train (pid {p.pid} on {socket.gethostname()} since " in r.stderr
        assert sorted(os.listdir(w)) == [lock.NAME]  # the refused run wrote nothing
    finally:
        p.kill()
        p.wait()


def test_a_dead_or_silent_holders_lock_is_taken_over_with_a_line_and_released_at_the_end(tmp_path, caplog,
                                                                                         monkeypatch):
    w = str(tmp_path / "w")
    p = holder(w)
    p.send_signal(signal.SIGKILL)  # as a killed job leaves it
    p.wait()
    with lock.hold(w, "fergate train") as held:
        assert lock.read(os.path.join(w, lock.NAME))[0] == held.info
    assert f"was left by fergate train (pid {p.pid} on {socket.gethostname()}" in caplog.text
    assert "which is gone: taken over" in caplog.text and not os.path.exists(os.path.join(w, lock.NAME))

    # a parent passes its lock to the child that writes for it (a sweep's cell); no one else gets it so
    child = [sys.executable, "-c", "import sys; from fergate import lock\n"
             "with lock.hold(sys.argv[1], 'x') as held: print(held.owned)", w]
    with lock.hold(w, "fergate sweep") as held:
        r = subprocess.run(child, capture_output=True, text=True, env=lock.child_env(held))
        assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]
        r = subprocess.run(child, capture_output=True, text=True)
        assert "WorkdirBusy" in r.stderr and "in use by fergate sweep" in r.stderr

    _lock_file(w, pid_start=-1)  # this host, a live pid, but another process than the one that took it
    with lock.hold(w, "fergate train"):
        pass
    assert "its pid now runs another process" in caplog.text

    # another host (a multi-host job on a shared filesystem), or a container on this one with pids of its
    # own: the heartbeat says whether it lives
    _lock_file(w, pid=1, pid_ns="pid:[1]")
    with pytest.raises(lock.WorkdirBusy, match=r"\(pid 1 on .* heartbeat \ds ago\)"):
        with lock.hold(w, "fergate train"):
            pass
    _lock_file(w, host="node-7", pid=4242)
    with pytest.raises(lock.WorkdirBusy, match=r"in use by fergate train \(pid 4242 on node-7 since 2026-01-01 "
                                               r"00:00:00, heartbeat \ds ago\)"):
        with lock.hold(w, "fergate train"):
            pass
    old = time.time() - lock.STALE_S - 60
    os.utime(os.path.join(w, lock.NAME), (old, old))
    with pytest.raises(RuntimeError):  # released on the way out of an error too
        with lock.hold(w, "fergate train"):
            raise RuntimeError
    assert "no heartbeat for 6m00s: taken over" in caplog.text and os.listdir(w) == []

    # the holder's heartbeat keeps its lock fresh
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    with lock.hold(w, "fergate train"):
        os.utime(os.path.join(w, lock.NAME), (old, old))
        time.sleep(0.5)
        assert lock.read(os.path.join(w, lock.NAME))[1] < 5


def test_a_second_cv_is_refused_before_it_touches_the_fold(sample_data, tmp_path):
    from fergate.train import cv

    w = tmp_path / "cv"
    p = holder(cv.fold_dir(str(w), 0))
    try:
        with pytest.raises(lock.WorkdirBusy, match="fold-00 is in use by fergate train"):
            cv.run("configs/modul.py:smoke=True", [f"--config.data.dir={sample_data}"], str(w), 2)
        assert not os.path.exists(os.path.join(cv.fold_dir(str(w), 0), "fold.json"))
    finally:
        p.kill()
        p.wait()


def test_features_export_sweep_cells_and_eval_hold_the_lock_of_what_they_write(sample_data, uninterrupted,
                                                                              tmp_path, capsys):
    """Each refused while another process holds the directory it would write, before any work;
    eval only when it writes into the workdir."""
    from test_sweep import _table

    from fergate import export, sweep
    from fergate.train import features

    out, e, w = tmp_path / "features", tmp_path / "E", tmp_path / "W"
    procs = [holder(out), holder(f"{e}.tmp-export"), holder(w / "narrow" / "seed-0"), holder(uninterrupted)]
    try:
        assert run_fergate("eval", "--workdir", uninterrupted) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "in use by fergate train" in err and "evaluate it meanwhile with --out" in err
        with pytest.raises(lock.WorkdirBusy, match=f"^{out} is in use by fergate train"):
            features.extract(str(tmp_path / "nowhere"), sample_data, str(out), "f")
        with pytest.raises(lock.WorkdirBusy, match=f"^--out {e} is in use by fergate train"):
            export.export(str(tmp_path / "nowhere"), str(e))
        with pytest.raises(lock.WorkdirBusy, match="narrow/seed-0 is in use by fergate train"):
            sweep.run(_table(tmp_path / "table.py"), str(w), overrides=[f"--config.data.dir={sample_data}"])
        assert os.listdir(w / "narrow" / "seed-0") == [lock.NAME]  # no marker: the cell is the other run's
    finally:
        for p in procs:
            p.kill()
            p.wait()
        (uninterrupted / lock.NAME).unlink()  # the shared run stays as it was


def test_a_full_disk_while_checkpointing_is_one_line_and_the_rerun_ends_like_an_undisturbed_run(
        sample_data, uninterrupted, tmp_path, monkeypatch, capsys):
    """The iterator state of step 30's checkpoint cannot be written (ENOSPC): one line naming
    the checkpoints, the space a checkpoint takes and step 20 kept; the partial step 30 is
    gone; once there is space, the same command resumes from step 20 and ends like a run
    that never stopped."""
    from etils import epath

    w = tmp_path / "w"
    cls = type(epath.Path(str(tmp_path)))
    write_text = cls.write_text

    def full(self, *a, **k):
        if "30.orbax-checkpoint-tmp" in str(self) and str(self).endswith(".json") and "process_" in str(self):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_text(self, *a, **k)

    monkeypatch.setattr(cls, "write_text", full)
    args = train_cmd(w, sample_data, f"--config.train.steps={RESUME_STEPS}", "--config.train.ckpt_every=10",
                     RESUME_AUGMENT)[3:]
    assert run_fergate(*args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"no space left on the device of {w}/checkpoints saving the checkpoint of step 30 (about " in err
    assert "MB needed, " in err and f"kept: step 20, the newest complete checkpoint in {w}/checkpoints" in err
    assert not glob.glob(str(w / "*" / "*orbax-checkpoint-tmp*"))  # the partial one holds no space
    assert checkpoint.complete_steps(str(w / "checkpoints")) == [20, 10] and not (w / lock.NAME).exists()

    monkeypatch.setattr(cls, "write_text", write_text)  # space freed
    assert run_fergate(*args) == 0
    assert "resumed from step 20" in capsys.readouterr().out
    assert_same_final_params(uninterrupted, w, RESUME_STEPS)
    steps = [json.loads(x)["step"] for x in open(w / "metrics.jsonl") if "loss" in json.loads(x)]
    assert steps == sorted(set(steps))  # each logged step once


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB filesystem (tmpfs, as root); the test is skipped where it cannot be mounted."""
    where = tmp_path / "disk"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({r.stderr.decode().strip()[:100]})")
    yield where
    subprocess.run(["umount", str(where)], check=True)


def test_orbax_on_a_really_full_disk_is_recognised_and_its_partial_checkpoint_removed(small_disk):
    """Not an injected error: tensorstore's own ("RESOURCE_EXHAUSTED ... Failed writing")."""
    import numpy as np

    w = str(small_disk / "w")
    ckpt = checkpoint.Checkpointer(w, writes=True)
    ckpt.save(1, {"x": np.zeros(1000, np.float32)})
    ckpt.wait()
    try:
        ckpt.save(2, {"x": np.random.default_rng(0).random(1 << 19, np.float32)})  # 2 MB, incompressible
        ckpt.wait()
    except Exception as e:  # noqa: BLE001 - whatever orbax raises for it
        error = checkpoint.disk_full(e, w)
    else:
        pytest.fail("a 2 MB checkpoint was saved on a 1 MB disk")
    with contextlib.suppress(Exception):
        ckpt.close()
    line = str(error)
    assert isinstance(error, DiskFull) and "\n" not in line
    assert line.startswith(f"no space left on the device of {w}/checkpoints saving the checkpoint of step 2")
    assert "kept: step 1, the newest complete checkpoint" in line and "partial 2.orbax-checkpoint-tmp" in line
    assert os.listdir(os.path.join(w, "checkpoints")) == ["1"]


def test_a_features_claim_is_whole_or_absent_after_a_kill(tmp_path):
    """`fergate features` killed while it marked its output: the rerun reads no half file."""
    from fergate.train import features

    out = tmp_path / "f"
    out.mkdir()
    (out / ".features.json").write_text('{"workdir": "/w", "st')  # as an older fergate could leave it
    (out / "train-00000-of-00001.array_record").write_text("shard")
    owner = {"workdir": "/w", "step": 6, "field": "f", "source_data": "/d"}
    with pytest.raises(UserError, match="holds features of an unknown workdir"):
        features._claim(str(out), owner, replace_stale=False)
    with lock.hold(str(out), "fergate features"):
        features._claim(str(out), owner, replace_stale=True)
        assert sorted(os.listdir(out)) == sorted([".features.json", lock.NAME])  # redone, the lock kept
    assert read_json(str(out / ".features.json")) == owner

