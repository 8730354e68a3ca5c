"""Best-checkpoint selection: a validation split carved from training subjects, and the
checkpoint with the best validation metric evaluated, not the last.

This module is also a model family (`config.model = "test_selection"`) and its config:
one parameter w grows by the learning rate every step (the loss is -w), and an example is
classified correctly exactly while 0.25 < w < 0.75, so the validation accuracy peaks
mid-way through training and falls again.
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fergate.config import load_module
from fergate.data import pipeline
from fergate.models import Family
from fergate.train.data import portions

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def get_config(arg=None):
    c = load_module(os.path.join(REPO, "configs", "common.py")).base("test_selection", "peak")
    c.input.batch_size, c.eval.batch_size = 8, 16
    c.optim.name, c.optim.b1, c.optim.lr, c.optim.end_lr = "sgd", 0.0, 0.05, 0.05  # w = 0.05 x step
    c.train.steps, c.train.log_every, c.train.eval_every = 20, 2, 2
    c.data.val_split, c.data.val_fraction, c.train.select = "val", 0.3, "accuracy"
    c.peak = dict(num_classes=7)
    return c


class Peak(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, batch, train=False):
        w = self.param("w", nn.initializers.zeros, ())
        margin = 0.25 - jnp.abs(w - 0.5)  # > 0 exactly while 0.25 < w < 0.75
        onehot = nn.one_hot(batch["label"], self.num_classes)
        return {"logits": (2 * onehot - 1) * margin, "losses": {"grow": -w - 0 * batch["iod"].sum()}}


class FAMILY(Family):
    name, section = "test_selection", "peak"

    def build(self, config):
        return Peak(**config.peak)

    def inputs(self, config):
        return {"iod": ((), np.float32)}

    def loss(self, config, outputs, batch):
        return outputs["losses"]["grow"], {}


def test_the_best_validation_step_is_evaluated_not_the_last(sample_data, tmp_path):
    w = tmp_path / "w"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "fergate", "train", "--config", __file__, "--workdir", str(w),
                        f"--config.data.dir={sample_data}"], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in open(w / "metrics.jsonl")]
    val = {r["step"]: r["val_accuracy"] for r in rows if "val_accuracy" in r}
    assert list(val) == list(range(2, 21, 2)) and val[6] == 1.0 and val[20] < 0.5  # peaks mid-way, then falls
    best = json.load(open(w / "best.json"))
    assert best["step"] == 6 and best["metric"] == "accuracy" and best["value"] == 1.0  # the first of the best
    ev = json.load(open(w / "eval.json"))
    assert ev["step"] == 6 and ev["accuracy"] == 1.0 and ev["selected"]["step"] == 6
    assert "the selected checkpoint: step 6" in r.stdout
    # metrics.jsonl logs the final evaluation at the step evaluated, not the last one trained
    assert [(x["step"], x["eval_accuracy"]) for x in rows if x.get("final")] == [(6, 1.0)]
    assert "[eval] test at step 6: accuracy 1.000" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fergate", "eval", "--workdir", str(w), "--out", str(tmp_path / "ev")],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0 and "the selected checkpoint: step 6" in r.stdout, r.stderr[-2000:]
    assert json.load(open(tmp_path / "ev" / "eval.json"))["accuracy"] == 1.0


def test_validation_subjects_are_held_out_of_training(sample_data):
    from fergate import config as C

    cfg = C.load(__file__, [f"--config.data.dir={sample_data}"])
    manifest = pipeline.read_manifest(sample_data)
    p = portions(cfg, sample_data, manifest)
    subjects = pipeline.split_subjects(pipeline.split_files(sample_data, "train"))
    assert p.val.split == p.train.split == "train" and p.held and set(subjects[p.val.records]) == set(p.held)
    assert not set(subjects[p.train.records]) & set(p.held)
    assert len(p.val.records) + len(p.train.records) == len(subjects)


def test_a_run_resumed_after_its_end_logs_its_final_evaluation_once(tmp_path):
    """Running a finished command again evaluates again: the earlier final row goes, the
    training rows up to the checkpoint stay."""
    from fergate.train.metrics import MetricsWriter, read_metrics

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 10, "loss": 1.0}, {"step": 20, "loss": 0.5}, {"step": 20, "val_accuracy": 0.5},
        {"step": 10, "eval_accuracy": 0.7, "final": True}, {"step": 30, "loss": 0.4})))  # 30: after the checkpoint
    w = MetricsWriter(str(tmp_path), start=20)
    w.write(10, {"eval_accuracy": 0.7}, final=True)
    w.tb.close()
    assert read_metrics(str(tmp_path)) == [{"step": 10, "loss": 1.0}, {"step": 20, "loss": 0.5},
                                           {"step": 20, "val_accuracy": 0.5},
                                           {"step": 10, "eval_accuracy": 0.7, "final": True}]
