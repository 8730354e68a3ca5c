"""The extension test: from outside fergate, a family (its own squared-hinge loss and report
file), a record field (a 2-d point, with how a flip moves it), an augmentation op and a
dataset reader are added, and the `fergate` command prepares data with the reader, trains,
evaluates, benches, exports and predicts with them, touching no fergate file.

This module is at once the family (`config.model = "test_family_contract"`, importable
with tests/ on PYTHONPATH), the reader (`--dataset test_family_contract`), its config file
(`get_config`) and its test.
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

from data_prep import readers
from fergate.config import load_module
from fergate.data import augment, fields, pipeline
from fergate.models import Family, masked_mean

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
POINT = 36  #: the image-left corner of the left eye: well left of the face's centre


# ----------------------------------------------------------------------------- the family
def get_config(arg=None):
    c = load_module(os.path.join(REPO, "configs", "common.py")).base("test_family_contract", "tiny")
    c.input.batch_size = 8
    c.input.face_size = 16
    c.tiny = dict(num_classes=7, hidden=16)
    c.data.augment = "flip(1.0)|shift_point(0.25)"  # every training batch flipped, its point shifted
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
        return {"logits": nn.Dense(self.num_classes)(h),
                "introspect": {"point_x": batch["point"][:, 0], "point_y": batch["point"][:, 1]}}


@augment.register
@dataclasses.dataclass
class ShiftPoint(augment.Op):
    """This family's own augmentation op: the point moved down by `dy` (in [-1, 1] units)."""

    name = "shift_point"
    dy: float = 0.25

    def draw(self, rng):
        return self.dy

    def apply(self, rec, dy):
        return {**rec, "point": rec["point"] + np.float32([0, dy])} if "point" in rec else rec


@dataclasses.dataclass
class AddPoint(grain.transforms.Map):
    """`point`: landmark POINT in [-1, 1] face coordinates (x = 0 on the vertical midline)."""

    def map(self, rec):
        w, h = rec["face"].shape[1], rec["face"].shape[0]
        return {**rec, "point": (rec["landmarks"][POINT] / np.float32([w - 1, h - 1]) * 2 - 1).astype(np.float32)}


class FAMILY(Family):
    name, section = "test_family_contract", "tiny"
    augmentation_ops = ("flip", "shift_point")
    # its own field: a point in centred coordinates, whose x a flip negates (no landmark permutation)
    fields = (fields.Field("point", fields.OFFSETS, doc="landmark POINT in [-1, 1] face coordinates"),)

    def build(self, config):
        return Tiny(**config.tiny)

    def inputs(self, config):
        s = config.input.face_size
        return {"face": ((s, s, 1), np.uint8), "point": ((2,), np.float32)}

    def record_fields(self, config):
        return ("face", "landmarks")  # `point` is made from the landmarks by `preprocess`

    def preprocess(self, config, train):
        return [AddPoint()], [pipeline.ResizeFace((config.input.face_size,) * 2, grey=True)]

    def loss(self, config, outputs, batch):
        """Squared one-vs-all hinge: sum_k max(0, 1 - y_k z_k)^2, y_k = +1 for the label, else -1."""
        y = 2 * jax.nn.one_hot(batch["label"], outputs["logits"].shape[-1]) - 1
        hinge = masked_mean(jnp.sum(jnp.maximum(0.0, 1 - y * outputs["logits"]) ** 2, -1), batch["mask"])
        return hinge, {"hinge": hinge, "point_x": masked_mean(batch["point"][:, 0], batch["mask"]),
                       "point_y": masked_mean(batch["point"][:, 1], batch["mask"])}

    def reports(self, results, outdir):
        x = results.introspect["point_x"]
        with open(os.path.join(outdir, "tiny_report.json"), "w") as f:
            json.dump({"mean_point_x": float(x.mean()), "mean_point_y": float(results.introspect["point_y"].mean()),
                       "examples": len(x)}, f)
        return {"tiny_mean_point_x": float(x.mean())}


# ----------------------------------------------------------------------------- the reader
@dataclasses.dataclass(frozen=True)
class NpzOptions:
    test_subjects: int = readers.option(2, "subjects held out as the test split", flag=False)


class NpzReader(readers.Reader):
    """This test's own dataset: aligned faces, landmarks, labels and subjects in one .npz
    (SOURCE), taken as records (no face pipeline); the last `test_subjects` subjects held out."""

    name = "test_family_contract"
    Options = NpzOptions

    def __init__(self, source, options):
        super().__init__(source, options)
        with np.load(source) as z:
            self.data = {k: z[k] for k in z.files}
        self.classes = tuple(str(c) for c in self.data["classes"])

    def items(self):
        subjects = sorted(set(self.data["subject"].tolist()))
        test = set(subjects[-self.options.test_subjects:])
        return [readers.Item(f"r{i}", "test" if s in test else "train", int(y), str(s), self.source, "record", (i,))
                for i, (y, s) in enumerate(zip(self.data["label"], self.data["subject"]))]

    def load_item(self, item):
        i = item.params[0]
        return {"face": self.data["face"][i], "landmarks": self.data["landmarks"][i], "iod": float(self.data["iod"][i])}


READERS = (NpzReader,)


# ----------------------------------------------------------------------------- the test
def _fergate(*args, check=True):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "fergate", *args], capture_output=True, text=True, env=env, cwd=REPO)
    assert not check or r.returncode == 0, r.stderr[-3000:]
    return r


def _npz_of(data_dir, path):
    """The records of a prepared set as the reader's .npz."""
    import grain

    from fergate.data import schema

    recs = []
    for split in ("train", "test"):
        src = grain.sources.ArrayRecordDataSource(pipeline.split_files(data_dir, split))
        recs += [schema.decode(src[i]) for i in range(len(src))]
    classes = pipeline.read_manifest(data_dir)["classes"]
    np.savez(path, classes=np.array(classes), **{k: np.stack([np.asarray(r[k]) for r in recs])
                                                 for k in ("face", "landmarks", "iod", "label", "subject")})


def test_a_family_field_op_and_reader_from_outside_fergate(sample_data, photos, tmp_path):
    _npz_of(sample_data, tmp_path / "tiny.npz")
    d = tmp_path / "data"
    _fergate("prep", str(tmp_path / "tiny.npz"), "--dataset", "test_family_contract", "--out", str(d))
    manifest = json.load(open(d / "manifest.json"))
    assert manifest["splits"]["test"]["records"] > 0 and manifest["classes"] == json.load(
        open(os.path.join(sample_data, "manifest.json")))["classes"]
    w = tmp_path / "w"
    _fergate("train", "--config", __file__, "--workdir", str(w), f"--config.data.dir={d}")
    _fergate("eval", "--workdir", str(w), "--split", "train", "--out", str(tmp_path / "ev"))
    assert json.load(open(tmp_path / "ev" / "tiny_report.json"))["examples"] == \
        json.load(open(tmp_path / "ev" / "eval.json"))["examples"]

    r = _fergate("bench", "--config", __file__, "--batch", "4", "--steps", "2")
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["model"] == "test_family_contract/tiny" and line["batch"] == 4 and line["step_ms"] > 0

    r = _fergate("eval", "--workdir", str(w), "--compare", str(w), check=False)
    assert r.returncode == 2 and "no figures across runs" in r.stderr

    # exported and predicting on a real photo: the face pipeline, then the family's own preprocessing
    from PIL import Image

    _fergate("export", "--workdir", str(w), "--out", str(tmp_path / "E"))
    Image.fromarray(photos["astronaut"]).save(tmp_path / "astronaut.png")
    r = _fergate("predict", "--model", str(tmp_path / "E"), str(tmp_path / "astronaut.png"), "--workers", "1")
    line = json.loads(r.stdout.splitlines()[0])
    assert line["label"] in manifest["classes"] and set(line["introspection"]) == {"point_x", "point_y"}
    # the point the family made from the photo's landmarks: left of centre, as on the training faces
    assert line["introspection"]["point_x"] < -0.2


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


def test_a_misspelled_hook_or_an_unknown_op_is_an_error_not_a_fallback():
    import pytest

    from fergate import config as C
    from fergate import models
    from fergate.errors import UserError

    with pytest.raises(TypeError, match="'transfroms' is not a hook.*did you mean 'preprocess'"):
        type("Typo", (Family,), {"transfroms": lambda self, config, train: []})
    with pytest.raises(UserError, match="unknown augmentation 'flop'.*known: .*flip"):
        augment.parse("flip|flop")
    with pytest.raises(UserError, match=r"'rotate\(ten\)'"):
        augment.parse("rotate(ten)")
    cfg = C.load("configs/micro.py", ["--config.data.augment=flip|rotate(10)"])
    with pytest.raises(UserError, match="rotate does not apply to micro/fusion .it takes flip, brightness_contrast"):
        models.family("micro").check(cfg)


def test_a_workdir_written_with_the_legacy_augmentation_keys_reads_as_data_augment(tmp_path):
    """Workdirs trained before `data.augment` keep meaning what they meant (same ops, same order)."""
    from fergate import config as C

    cfg = C.load("configs/thin.py:task=fer")
    raw = cfg.to_dict()
    assert raw["data"].pop("augment") == "flip|rotate(10)|brightness_contrast|hue_saturation"
    raw["data"].update(flip=True, rotate=10.0, brightness_contrast=True, hue_saturation=True)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    old = C.load_workdir(str(tmp_path))
    assert [type(op).__name__ for op in augment.parse(old.data.augment)] == \
        ["Flip", "Rotate", "BrightnessContrast", "HueSaturation"] and "flip" not in old.data
    assert augment.parse(old.data.augment)[1].degrees == 10.0


def test_a_flip_moves_every_field_by_its_kind():
    """One flip for every family: images mirrored, points mirrored and re-indexed (the left
    eye's corner becomes the right's), offsets negated, a field of the test's own kind too."""
    from fergate.data.landmarks import MIRROR_68

    rng = np.random.default_rng(0)
    face = rng.integers(0, 255, (20, 30, 3), np.uint8)
    lm = rng.uniform(0, 29, (68, 2)).astype(np.float32)
    rec = {"face": face, "landmarks": lm, "iod": np.float32(9), "point": np.float32([0.3, -0.2]),
           "clip": rng.integers(0, 255, (2, 8, 10, 1), np.uint8)}
    out = augment.Flip(p=1.0).apply(rec, True)
    np.testing.assert_array_equal(out["face"], face[:, ::-1])
    np.testing.assert_allclose(out["landmarks"][45], [29 - lm[36, 0], lm[36, 1]])
    np.testing.assert_allclose(out["landmarks"], np.stack([29 - lm[MIRROR_68, 0], lm[MIRROR_68, 1]], -1))
    np.testing.assert_allclose(out["point"], [-0.3, -0.2])
    np.testing.assert_array_equal(out["clip"], rec["clip"][:, :, ::-1])
    assert out["iod"] == 9
    turned = augment.Rotate(90).apply({"face": face, "landmarks": lm}, 90.0)
    # 90 degrees counter-clockwise about the centre (14.5, 9.5): (x, y) -> (cx + (y - cy), cy - (x - cx))
    np.testing.assert_allclose(turned["landmarks"], np.stack([14.5 + lm[:, 1] - 9.5, 9.5 - (lm[:, 0] - 14.5)], -1),
                               atol=1e-4)
