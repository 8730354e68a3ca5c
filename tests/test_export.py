"""`fergate export`, `fergate.load` and `fergate predict`: the exported function predicts what
the training code's evaluation step predicts, and prediction on photos, folders and videos
survives bad inputs."""

import glob
import json
import os
import subprocess
import sys

import grain
import numpy as np
import pytest
from helpers import train_cmd

from fergate import config as C
from fergate import export
from fergate.data import fields, pipeline, schema
from fergate.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: exported logits against the evaluation step's: the same XLA graph compiled for another batch
#: shape reorders float32 sums, nothing more
RTOL, ATOL = 1e-4, 1e-4


def check_export(workdir, out, split: str, n: int = 24) -> export.Model:
    """Exports `workdir` into `out`, loads it and checks its logits on the first `n` records
    of `split` against `fergate eval`'s, within RTOL / ATOL, and an exported earlier stage's
    features against those the data holds (not the logits through them: frame substitution
    picks frames by rank, which float32 noise in the features may flip). Returns the model."""
    from fergate.train import evaluate, program

    workdir = str(workdir)
    export.export(workdir, str(out))
    model = export.load(str(out), batch_size=8)
    t = program.from_workdir(workdir)
    res = evaluate.evaluate(t.program, t.state, t.data, split)
    idx = res.index[:n]
    files = pipeline.split_files(t.data.dir, split)
    src = grain.sources.ArrayRecordDataSource(files)
    records = [schema.decode(src[int(i)]) for i in idx]
    for name in fields.derived(model.manifest["record_fields"]):  # as the pipeline derives them, over the split
        derive = fields.get(name).derive.over_files(files)
        records = [{**r, name: derive(r)} for r in records]
    got = model.predict_records(records, stages=False)
    np.testing.assert_allclose(got["logits"], res.logits[: len(idx)], rtol=RTOL, atol=ATOL)
    for stage, field in model.stages.values():  # the exported stage makes the features the data holds
        np.testing.assert_allclose(stage.predict_records(records)["features"], np.stack([r[field] for r in records]),
                                   rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["probabilities"].sum(-1), 1.0, rtol=1e-5)
    return model


@pytest.fixture(scope="module")
def modul_export(sample_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    w = tmp / "w"
    r = subprocess.run(train_cmd(w, sample_data, "--config.train.steps=6"), capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return w, check_export(w, tmp / "E", "test")


def test_exported_modul_equals_the_eval_step_and_describes_itself(modul_export):
    w, model = modul_export
    m = model.manifest
    assert m["format"] == export.FORMAT and m["model"].startswith("modul/") and m["step"] == 6
    assert m["kind"] == "face" and set(m["inputs"]) == {"landmarks", "iod", "patches", "face"}
    assert "cpu" in m["platforms"] and m["classes"] == list(C.load_workdir(str(w)).data.classes)
    assert m["data"]["options"]["face"]["face_size"] and m["params_sha256"] == export.checksum(model.variables)
    # the serialized function alone, with jax: any batch size
    import jax

    with open(os.path.join(model.path, "infer.jax"), "rb") as f:
        fn = jax.export.deserialize(bytearray(f.read()))
    batch = {k: np.zeros((3, *v["shape"]), v["dtype"]) for k, v in m["inputs"].items()}
    assert fn.call(model.variables, batch)["probabilities"].shape == (3, len(m["classes"]))


def test_versions_damage_and_wrong_paths_are_clear(modul_export, tmp_path):
    import shutil

    w, model = modul_export
    newer = tmp_path / "newer"
    shutil.copytree(model.path, newer)
    m = json.loads((newer / "export.json").read_text())
    (newer / "export.json").write_text(json.dumps({**m, "format": export.FORMAT + 1, "fergate": "9.0"}))
    with pytest.raises(UserError, match=rf"written by fergate 9.0 in export format {export.FORMAT + 1}.*upgrade"):
        export.load(str(newer))
    (newer / "export.json").write_text(json.dumps({**m, "params_sha256": "0" * 64}))
    with pytest.raises(UserError, match="do not match the checksum"):
        export.load(str(newer))
    with pytest.raises(UserError, match="is a training workdir, not an export"):
        export.load(str(w))
    with pytest.raises(UserError, match="not a fergate export"):
        export.load(str(tmp_path))
    with pytest.raises(UserError, match="not an empty directory"):  # another export there (other parameters)
        export.export(str(w), str(newer))
    # the same export again (the command killed after its last rename, run again): nothing to do, nothing rewritten
    files = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(model.path, "**"), recursive=True)}
    assert export.export(str(w), model.path) == model.manifest
    assert {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(model.path, "**"), recursive=True)} == files


def test_predict_on_photos_folders_and_bad_inputs(modul_export, photos, tmp_path):
    """One line per face with box, 68 landmarks, probabilities and label; the bad inputs
    (a broken file, an empty folder, a missing path, a photo without a face) each get a
    line saying why, and the good ones are all predicted; the Python API agrees."""
    from PIL import Image

    import fergate

    _, model = modul_export
    good = tmp_path / "in" / "people"
    good.mkdir(parents=True)
    for name, img in photos.items():
        Image.fromarray(img).save(good / f"{name}.png")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "in" / "grey.png")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "pred.jsonl"
    r = subprocess.run([sys.executable, "-m", "fergate", "predict", "--model", model.path, str(tmp_path / "in"),
                        str(tmp_path / "empty"), str(tmp_path / "missing.jpg"), "--out", str(out), "--annotate",
                        str(tmp_path / "ann"), "--workers", "2"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    errors = {os.path.basename(x["source"]): x["error"] for x in lines if "error" in x}
    assert set(errors) == {"broken.jpg", "grey.png", "empty", "missing.jpg"}, errors
    assert errors["grey.png"] == "no_face" and errors["broken.jpg"].startswith("not_an_image")
    faces = [x for x in lines if "error" not in x]
    assert {os.path.basename(x["source"]) for x in faces} == {f"{n}.png" for n in photos}
    for x in faces:
        assert len(x["landmarks"]) == 68 and len(x["box"]) == 4 and x["label"] in model.classes
        assert abs(sum(x["probabilities"].values()) - 1) < 1e-3 and "modal_gate" in x["introspection"]
    assert sorted(os.listdir(tmp_path / "ann")) == sorted(f"{n}.jpg" for n in photos)
    assert "faces (0 from video frames)" in r.stderr and "/s after start-up" in r.stderr
    api = fergate.load(model.path).predict([str(good / f"{n}.png") for n in photos] + [np.zeros((40, 40, 3))])
    assert api[-1]["error"] == "no_face"
    by_source = {(x["source"], x["face"]): x for x in faces}
    for x in api[:-1]:
        cli = by_source[(x["source"], x["face"])]
        assert x["label"] == cli["label"] and x["box"] == cli["box"]
        np.testing.assert_allclose(list(x["probabilities"].values()), list(cli["probabilities"].values()), atol=1e-4)
