"""A user's first hour: their own photos train, interrupted runs resume, schedules do not
jump, and every mistake is a one-line error (exit 2, no traceback) before anything costly."""

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from helpers import (
    RESUME_AUGMENT,
    RESUME_STEPS,
    SMALL,
    assert_same_final_params,
    interrupted_run,
    metrics_lines,
    train_cmd,
)

from fergate.train.checkpoint import Checkpointer


def fergate(*args, **kw):
    return subprocess.run([sys.executable, "-m", "fergate", *map(str, args)], capture_output=True, text=True, **kw)


def one_line_error(r, message):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def own_folder(tmp_path_factory):
    """What a user brings: photos/<class>/<person>__<n>.jpg, 3 classes (expressions made by
    the sample generator on the installed packages' photos)."""
    from data_prep import sample

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    subjects = [sample.Subject(n, p, i) for n, p, i in sample.sample_photos()]
    for expression in ("happiness", "surprise", "neutral"):
        (root / expression).mkdir()
        for s in subjects:
            for k in range(max(2, 12 // len(subjects))):
                img = sample.synthesize(s, expression, 1.2 if expression != "neutral" else 0.0, rng)
                cv2.imwrite(str(root / expression / f"{s.name}__{k}.jpg"), img[..., ::-1])
    return root


def test_training_on_your_own_photos_as_the_readme_says(own_folder, tmp_path):
    data, w = tmp_path / "data", tmp_path / "run"
    r = fergate("prep", own_folder, "--dataset", "folder", "--out", data)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "held out as `test`" in r.stdout
    m = json.load(open(data / "manifest.json"))
    assert m["classes"] == ["happiness", "neutral", "surprise"]
    tr, te = m["splits"]["train"]["subjects"], m["splits"]["test"]["subjects"]
    assert te and not set(tr) & set(te)  # a subject-independent held-out split
    r = fergate("train", "--config", "configs/modul.py", "--workdir", w, f"--config.data.dir={data}",
                "--config.train.steps=20", "--config.train.log_every=10", *SMALL)
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.load(open(w / "eval.json"))
    assert ev["classes"] == m["classes"] and np.shape(ev["confusion_matrix"]) == (3, 3)
    assert json.load(open(w / "config.json"))["modul"]["num_classes"] == 3  # from the data
    rows = [json.loads(x) for x in open(w / "metrics.jsonl")]
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]  # 10 evals
    assert (w / "curves.png").exists() and os.listdir(w / "tensorboard")
    r = fergate("eval", "--workdir", w, "--split", "train", "--out", tmp_path / "ev")
    assert r.returncode == 0, r.stderr[-2000:]
    # a config that fixes another number of classes: refused before training, naming both
    r = fergate("train", "--config", "configs/modul.py", "--workdir", tmp_path / "seven", f"--config.data.dir={data}",
                "--config.modul.num_classes=7", *SMALL)
    one_line_error(r, "config modul.num_classes=7 but the data has 3 classes (happiness, neutral, surprise)")
    # no held-out split: said at the start, with the way out
    r = fergate("prep", own_folder, "--dataset", "folder", "--out", tmp_path / "all", "--test_fraction", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    t = time.time()
    r = fergate("train", "--config", "configs/modul.py", "--workdir", tmp_path / "w2",
                f"--config.data.dir={tmp_path / 'all'}")
    one_line_error(r, "split 'test' is not in the data (it has train)")
    assert "--test_fraction" in r.stderr and time.time() - t < 60


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_where_the_run_is_and_the_rerun_ends_like_an_uninterrupted_one(sample_data, uninterrupted,
                                                                                     tmp_path, sig):
    extra = (f"--config.train.steps={RESUME_STEPS}", "--config.train.ckpt_every=1000", "--config.train.log_every=2",
             RESUME_AUGMENT)
    w = tmp_path / "w"
    p = interrupted_run(w, sample_data, extra, lambda: metrics_lines(w) >= 5, sig)
    err = p.err
    assert p.returncode == 128 + sig, err[-2000:]
    assert f"{signal.Signals(sig).name} at step" in err and "run the same command again to resume" in err
    stopped = int(err.split(" at step ")[1].split(":")[0])
    assert 10 <= stopped < RESUME_STEPS and Checkpointer(str(w)).steps() == [stopped]
    assert not (w / ".fergate.lock").exists()  # released on the way out
    r = subprocess.run(train_cmd(w, sample_data, *extra), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from step {stopped}" in r.stdout and f"done: {RESUME_STEPS - stopped} steps run here" in r.stdout
    steps = [json.loads(x)["step"] for x in open(w / "metrics.jsonl") if "loss" in json.loads(x)]
    # each step once, in order
    assert steps == sorted(set(steps)) and set(steps) == {*range(2, RESUME_STEPS + 1, 2), stopped}
    assert_same_final_params(uninterrupted, w, RESUME_STEPS)


def test_a_new_run_says_it_starts_fresh_and_more_steps_do_not_move_the_schedule(sample_data, tmp_path):
    w = tmp_path / "w"
    r = subprocess.run(train_cmd(w, sample_data, "--config.train.steps=10"), capture_output=True, text=True)
    assert r.returncode == 0 and "no checkpoint in" in r.stdout and "starting fresh" in r.stdout
    r = subprocess.run(train_cmd(w, sample_data, "--config.train.steps=20"), capture_output=True, text=True)
    one_line_error(r, "its learning rate decays over 10 steps, this config's over 20")
    assert "--config.optim.decay_steps=10" in r.stderr
    r = subprocess.run(train_cmd(w, sample_data, "--config.train.steps=20", "--config.optim.decay_steps=10"),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    lrs = {x["step"]: x["lr"] for x in map(json.loads, open(w / "metrics.jsonl")) if "lr" in x}
    assert lrs[10] > 0 and lrs[20] == 0.0  # past the horizon: end_lr, no jump back up


@pytest.mark.parametrize("args, message", [
    (("train", "--config", "configs/modul.py", "--workdir", "FILE"), "--workdir FILE is a file"),
    (("prep", "--dataset", "sample", "--out", "FILE"), "--out FILE is a file"),
    (("train", "--config", "configs/modul.py", "--workdir", "W", "--config.train.steps=0"),
     "config train.steps=0: must be at least 1"),
    (("train", "--config", "configs/modul.py", "--workdir", "W", "--config.train.steps=-1"),
     "config train.steps=-1: must be at least 1"),
    (("train", "--config", "configs/modul.py", "--workdir", "W", "--config.input.batch_size=0"),
     "config input.batch_size=0: must be at least 1"),
    (("bench", "--config", "configs/modul.py", "--steps", "0"), "--steps 0"),
    (("bench", "--config", "configs/modul.py", "--batch", "0"), "--batch 0: must be at least 1"),
    (("prep", "--dataset", "sample", "--out", "W", "--test_fraction", "1"), "--test_fraction 1.0: must be in [0, 1)"),
    (("predict", "--model", "W", "FILE", "--frames"), "--frames writes annotated video frames: give --annotate DIR"),
    (("predict", "--model", "W", "W"), "W: no such file or folder"),
])
def test_mistakes_are_one_line_errors_before_any_work(tmp_path, args, message):
    (tmp_path / "FILE").write_text("not a directory")
    args = [str(tmp_path / a) if a in ("FILE", "W") else a for a in args]
    t = time.time()
    r = fergate(*args, env={**os.environ, "FERGATE_CACHE": str(tmp_path / "cache")})
    one_line_error(r, message.replace("FILE", str(tmp_path / "FILE")))
    assert time.time() - t < 30 and not (tmp_path / "cache").exists()  # nothing prepared


def test_version_and_launcher_python(tmp_path):
    r = fergate("--version")
    assert r.returncode == 0 and r.stdout.startswith("fergate ")
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    venv = os.path.dirname(os.path.dirname(sys.executable))
    r = subprocess.run(["bash", "launch/local_multiprocess.sh", "1", "1", "--version"], capture_output=True,
                       text=True, env={**env, "VIRTUAL_ENV": venv})
    assert r.returncode == 0 and f"launch: 1 processes x 1 CPU devices, {venv}/bin/python" in r.stdout
    assert "[p0] fergate " in r.stdout
    r = subprocess.run(["bash", "launch/local_multiprocess.sh", "1", "1", "--version"], capture_output=True,
                       text=True, env={**env, "PYTHON": "/usr/bin/false"})
    assert r.returncode == 2 and "cannot import fergate" in r.stderr


def test_a_script_beside_a_clone_named_fergate_imports_the_library(tmp_path):
    """A script in the folder that holds a clone (`git clone ... fergate`) imports the library,
    not the clone's folder as an empty namespace package (`module 'fergate' has no attribute
    'load'`): the repository root's __init__.py hands over to the package inside it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "fergate").symlink_to(repo, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user runs a script
    r = subprocess.run([sys.executable, "-c", "import fergate; print(fergate.load.__module__, fergate.__file__)"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["fergate", str(tmp_path / "fergate" / "fergate" / "__init__.py")]
    r = fergate("--version", cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.startswith("fergate "), r.stderr[-2000:]
