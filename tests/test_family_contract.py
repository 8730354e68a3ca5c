"""The family contract is complete: a family defined in this file, outside fergate, with
its own squared-hinge loss, its own flip rule for a 2-d point field and its own report
file, trains, evaluates and benches through the `fergate` command.

This module is at once the family (`config.model = "test_family_contract"`, importable
with tests/ on PYTHONPATH), its config file (`get_config`) and its test.
"""

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np

from fergate.config import load_module
from fergate.data import pipeline
from fergate.models import masked_mean

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
POINT = 36  #: the image-left corner of the left eye: well left of the face's centre


# ----------------------------------------------------------------------------- the family
def get_config(arg=None):
    c = load_module(os.path.join(REPO, "configs", "common.py")).base("test_family_contract", "tiny")
    c.input.batch_size = 8
    c.input.face_size = 16
    c.tiny = dict(num_classes=7, hidden=16)
    c.optim.lr = c.optim.end_lr = 3e-3
    c.train.steps = 30
    c.train.log_every = 5
    c.eval.batch_size = 16
    return c


class Tiny(nn.Module):
    num_classes: int
    hidden: int

    @nn.compact
    def __call__(self, batch, train=False):
        x = batch["face"].astype(jnp.float32).reshape(batch["face"].shape[0], -1) / 255.0
        h = nn.relu(nn.Dense(self.hidden)(jnp.concatenate([x, batch["point"]], -1)))
        return {"logits": nn.Dense(self.num_classes)(h), "introspect": {"point_x": batch["point"][:, 0]}}


def build(config):
    return Tiny(**config.tiny)


def inputs(config):
    s = config.input.face_size
    return {"face": ((s, s, 1), np.uint8), "point": ((2,), np.float32)}


def record_fields(config):
    return ("face", "landmarks")  # `point` is made from the landmarks by `transforms`


@dataclasses.dataclass
class AddPoint(grain.transforms.Map):
    """`point`: landmark POINT in [-1, 1] face coordinates (x = 0 on the vertical midline)."""

    def map(self, rec):
        w, h = rec["face"].shape[1], rec["face"].shape[0]
        return {**rec, "point": (rec["landmarks"][POINT] / np.float32([w - 1, h - 1]) * 2 - 1).astype(np.float32)}


def flip_point(x, rec):
    """This family's own flip rule: a point in centred coordinates has its x negated."""
    return x * np.float32([-1, 1])


def transforms(config, train):
    # always flipped in training, so the training batches' point x has the other sign
    return [AddPoint(), pipeline.RandomFlip({"face": pipeline.flip_image, "point": flip_point}, p=1.0),
            pipeline.ResizeFace((config.input.face_size,) * 2, grey=True)]


def loss(config, outputs, batch):
    """Squared one-vs-all hinge: sum_k max(0, 1 - y_k z_k)^2, y_k = +1 for the label, else -1."""
    y = 2 * jax.nn.one_hot(batch["label"], outputs["logits"].shape[-1]) - 1
    hinge = masked_mean(jnp.sum(jnp.maximum(0.0, 1 - y * outputs["logits"]) ** 2, -1), batch["mask"])
    return hinge, {"hinge": hinge, "point_x": masked_mean(batch["point"][:, 0], batch["mask"])}


def reports(results, outdir):
    x = results.introspect["point_x"]
    with open(os.path.join(outdir, "tiny_report.json"), "w") as f:
        json.dump({"mean_point_x": float(x.mean()), "examples": len(x)}, f)
    return {"tiny_mean_point_x": float(x.mean())}


# ----------------------------------------------------------------------------- the test
def _fergate(*args, check=True):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "fergate", *args], capture_output=True, text=True, env=env, cwd=REPO)
    assert not check or r.returncode == 0, r.stderr[-3000:]
    return r


def test_a_family_outside_fergate_trains_evaluates_and_benches(sample_data, tmp_path):
    w = tmp_path / "w"
    _fergate("train", "--config", __file__, "--workdir", str(w), f"--config.data.dir={sample_data}")
    rows = [r for r in map(json.loads, open(w / "metrics.jsonl")) if "loss" in r]  # training rows
    assert all("hinge" in r and "ce" not in r and r["loss"] == r["hinge"] for r in rows)  # its own loss
    assert np.mean([r["loss"] for r in rows[-2:]]) < np.mean([r["loss"] for r in rows[:2]])
    report = json.load(open(w / "tiny_report.json"))  # its own report, on the test split
    ev = json.load(open(w / "eval.json"))
    assert report["examples"] == ev["examples"] and ev["tiny_mean_point_x"] == report["mean_point_x"]
    # its own flip rule ran in training (every batch flipped) and not in evaluation
    assert report["mean_point_x"] < -0.2 and all(r["point_x"] > 0.2 for r in rows)

    _fergate("eval", "--workdir", str(w), "--split", "train", "--out", str(tmp_path / "ev"))
    assert json.load(open(tmp_path / "ev" / "tiny_report.json"))["examples"] == \
        json.load(open(tmp_path / "ev" / "eval.json"))["examples"]

    r = _fergate("bench", "--config", __file__, "--batch", "4", "--steps", "2")
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["model"] == "test_family_contract/tiny" and line["batch"] == 4 and line["step_ms"] > 0

    r = _fergate("eval", "--workdir", str(w), "--compare", str(w), check=False)
    assert r.returncode == 2 and "no figures across runs" in r.stderr


def test_auto_compute_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu(monkeypatch):
    """train.dtype="auto" (the default): bfloat16 compute where it is the faster (GPU, TPU),
    float32 on CPU, whose bfloat16 step measured 0.66x; parameters stay float32."""
    import pytest

    from fergate import config as C
    from fergate import models
    from fergate.errors import UserError
    from fergate.train.data import resolve
    from fergate.train.program import Program

    cfg = C.load("configs/modul.py:smoke=True")
    assert cfg.train.dtype == "auto" and models.compute_dtype(cfg) == jnp.float32
    for backend, dtype in (("gpu", jnp.bfloat16), ("tpu", jnp.bfloat16), ("cpu", jnp.float32)):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        assert models.compute_dtype(cfg) == dtype
    monkeypatch.undo()
    with cfg.unlocked():
        cfg.train.dtype = "bfloat16"
    resolve(cfg, None)
    prog = Program(cfg)
    assert prog.module.dtype == jnp.bfloat16
    assert {x.dtype for x in jax.tree.leaves(prog.abstract_state.params)} == {jnp.dtype(jnp.float32)}
    with cfg.unlocked():
        cfg.train.dtype = "bf32"
    with pytest.raises(UserError, match="train.dtype=.bf32.: auto"):
        models.compute_dtype(cfg)
