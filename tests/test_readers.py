"""The dataset readers of data_prep.readers, each on a tiny fixture in its dataset's official
on-disk layout (file names, label files, encodings), made from the real face photos every
install has (scikit-image's astronaut, matplotlib's grace_hopper) and expressions the sample
generator synthesises on them; pre-aligned datasets get crops aligned by fergate.face.
Every fixture goes through `fergate prep` to shards: the counts per split, label names,
subjects, `box_source` and the skipped lines and files are read back from the manifest and
the records."""

import dataclasses
import json
import os

import cv2
import grain
import numpy as np
import pytest
from helpers import fergate_in_process

from data_prep import prep, readers
from data_prep import sample as S
from fergate import face as F
from fergate.data import pipeline, schema
from fergate.data.labels import DATASET_CLASSES
from fergate.errors import UserError

FACE = F.FaceOptions(patches=False, identity=False)
OPTS = prep.PrepOptions(face=FACE, test_fraction=0.0, clip_size=48, frames=8, max_frames=8)
#: command-line flags of the same (for the runs through `fergate prep`)
FLAGS = ("--workers", "1", "--no_patches", "--no_identity", "--clip_size", "48", "--frames", "8")


_fergate = fergate_in_process


def _records(out: str, split: str) -> list[dict]:
    src = grain.sources.ArrayRecordDataSource(pipeline.split_files(out, split))
    return [schema.decode(src[i]) for i in range(len(src))]


def _prep(dataset: str, root, out, opts: prep.PrepOptions = OPTS, **reader_options) -> tuple[dict, dict]:
    """(manifest, split -> decoded records) of a prep run."""
    m = prep.run(dataset, str(root), str(out), opts, reader_options, workers=1)
    assert m["complete"]
    return m, {s: _records(str(out), s) for s in m["splits"]}


def _imwrite(path, img: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), img[..., ::-1] if img.ndim == 3 else img)
    return str(path)


def _write(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(text)
    return str(path)


def _box(img: np.ndarray) -> tuple[int, int, int, int]:
    r = F.detect(img)
    return r.left(), r.top(), r.right(), r.bottom()


def _check_crop_fitted(m: dict, recs: dict) -> None:
    """The manifest's crop_fitted lists exactly the records whose landmarks were fitted in the crop."""
    for split, rs in recs.items():
        sources = [r["box_source"] for r in rs]
        assert m["splits"][split]["crop_fitted"] == [i for i, s in enumerate(sources) if s == F.CROP]
        assert m["splits"][split]["box_source"] == {schema.BOX_SOURCES[s]: sources.count(s) for s in set(sources)}


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """The fixtures' warps are small: BLAS threads only spin against each other (and, on a busy
    2-core machine, against everything else: 1 s a warp instead of 10 ms)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        yield


@pytest.fixture(scope="module")
def subjects() -> dict[str, S.Subject]:
    return {name: S.Subject(name, path, index) for name, path, index in S.sample_photos()
            if name in ("astronaut", "grace_hopper")}


@pytest.fixture(scope="module")
def face(subjects):
    """face(subject, expression) -> a 256 x 256 RGB photo of it (cached)."""
    cache = {}

    def make(name: str, expression: str) -> np.ndarray:
        if (name, expression) not in cache:
            cache[name, expression] = S.synthesize(subjects[name], expression, 1.0, np.random.default_rng(0),
                                                   augment=False)
        return cache[name, expression]

    return make


def _aligned(img: np.ndarray, size, scale: float = 1.0) -> np.ndarray:
    """A pre-aligned crop of the face in `img`, as an aligned dataset ships it."""
    return F.process_face(img, F.FaceOptions(face_size=size, face_scale=scale, patches=False, identity=False))["face"]


# -- the crop fallback --------------------------------------------------------------------------


def test_fit_in_crop_finds_the_landmarks_of_aligned_crops(photos):
    """Crops of the real photos aligned at 48 px (FER-2013's size, where the detector finds
    nothing) and 100 px: the landmarks fitted in the whole crop are those dlib fits in the
    photo, to within 0.08 iod on average."""
    for img in photos.values():
        rect = F.detect(img)
        lm = F.landmarks(img, rect)
        for size in (48, 100):
            m = F.alignment(lm, size)
            crop, ref = F.warp(img, m, (size, size)), F.apply_affine(m, lm)
            _, fitted = F.fit_in_crop(crop)
            assert np.linalg.norm(fitted - ref, axis=1).mean() < 0.08 * F.iod(ref)
        rec = F.process_face(F.FaceInput(F.warp(img, F.alignment(lm, 48), (48, 48)), crop=True), FACE)
        assert rec["box_source"] == F.CROP and rec["face"].shape == (96, 96, 3)
        with pytest.raises(F.SkipItem, match="no_face"):  # not marked a crop: lost to detection
            F.process_face(F.warp(img, F.alignment(lm, 48), (48, 48)), FACE)
        given = F.process_face(F.FaceInput(img, landmarks=lm + 3), FACE)  # the dataset's landmarks, as given
        assert given["box_source"] == F.DATASET
        np.testing.assert_allclose(given["landmarks"], F.apply_affine(F.alignment(lm + 3, 96), lm + 3), atol=1e-3)
        assert F.process_face(img, FACE)["box_source"] == F.DETECTED


# -- CK+ -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckplus_root(subjects, tmp_path_factory):
    """S005 (the astronaut): 001 happy with Landmarks files, 003 contempt, 005 a malformed label;
    S010 (grace_hopper): 002 surprise, 004 unlabelled, 006 labelled without frames, 007 label 9."""
    root = tmp_path_factory.mktemp("ckplus")
    seqs = {("S005", "001"): ("astronaut", "happiness", 5, True),
            ("S010", "002"): ("grace_hopper", "surprise", 7, False),
            ("S005", "003"): ("astronaut", "contempt", 2, False),
            ("S010", "004"): ("grace_hopper", "sadness", None, False)}
    for (subject, seq), (name, expression, code, landmarks) in seqs.items():
        frames = S.clip_frames(subjects[name], expression, 1.0, 5, np.random.default_rng(1))
        for i, frame in enumerate(frames, 1):
            stem = f"{subject}_{seq}_{i:08d}"
            grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)  # CK+'s frames are mostly grey PNGs
            _imwrite(root / "cohn-kanade-images" / subject / seq / f"{stem}.png", grey)
            if landmarks:
                lm = F.landmarks(frame, F.detect(frame))
                _write(root / "Landmarks" / subject / seq / f"{stem}_landmarks.txt",
                       "".join(f"   {x:.7e}   {y:.7e}\n" for x, y in lm))
        if code is not None:
            _write(root / "Emotion" / subject / seq / f"{subject}_{seq}_{len(frames):08d}_emotion.txt",
                   f"   {code:.7e}\n")
    _write(root / "Emotion" / "S005" / "005" / "S005_005_00000009_emotion.txt", "   happy\n")
    _write(root / "Emotion" / "S010" / "006" / "S010_006_00000004_emotion.txt", "   4.0000000e+00\n")
    _write(root / "Emotion" / "S010" / "007" / "S010_007_00000004_emotion.txt", "   9.0000000e+00\n")
    (root / "cohn-kanade-images" / "S005" / "001" / ".DS_Store").write_bytes(b"\0\1")  # not a frame
    return root


@pytest.fixture(scope="module")
def ckplus_run(ckplus_root, tmp_path_factory):
    """`fergate prep ROOT --dataset ckplus --apex_frames 2 --neutral_frames 1`, half the subjects held out."""
    out = tmp_path_factory.mktemp("ckplus_out")
    assert _fergate("prep", str(ckplus_root), "--dataset", "ckplus", "--out", str(out), "--apex_frames", "2",
                    "--neutral_frames", "1", "--test_fraction", "0.5", *FLAGS) == 0
    with open(out / "manifest.json") as f:
        m = json.load(f)
    return m, {s: _records(str(out), s) for s in m["splits"]}


def test_ckplus_apex_and_neutral_frames_and_clips(ckplus_run):
    m, recs = ckplus_run
    assert m["classes"] == list(DATASET_CLASSES["ckplus"]) and m["options"]["reader"] == {
        "apex_frames": 2, "neutral_frames": 1}
    assert m["skipped"] == {"malformed_label": 1, "missing_file": 1, "label_out_of_range": 1}
    assert sorted(m["splits"]) == ["test", "test_clips", "train", "train_clips"]
    images = [r for s in ("train", "test") for r in recs[s]]
    got = sorted((os.path.basename(r["source"]), r["label_name"], r["subject"]) for r in images)
    assert got == [("S005_001_00000001.png", "neutral", "S005"), ("S005_001_00000004.png", "happy", "S005"),
                   ("S005_001_00000005.png", "happy", "S005"), ("S005_003_00000001.png", "neutral", "S005"),
                   ("S005_003_00000004.png", "contempt", "S005"), ("S005_003_00000005.png", "contempt", "S005"),
                   ("S010_002_00000001.png", "neutral", "S010"), ("S010_002_00000004.png", "surprise", "S010"),
                   ("S010_002_00000005.png", "surprise", "S010")]
    # one subject held out, its clips with it
    for split in ("train", "test"):
        assert m["splits"][split]["subjects"] == m["splits"][split + "_clips"]["subjects"] and \
            len(m["splits"][split]["subjects"]) == 1
    clips = {os.path.basename(r["source"]): r for s in ("train_clips", "test_clips") for r in recs[s]}
    assert {k: r["label_name"] for k, r in clips.items()} == {"001": "happy", "002": "surprise", "003": "contempt"}
    assert clips["001"]["clip"].shape == (8, 48, 48, 3)
    # the Landmarks files replace detection (box_source 1) where they are there
    assert clips["001"]["box_source"] == F.DATASET and clips["002"]["box_source"] == F.DETECTED
    for r in images:
        assert r["box_source"] == (F.DATASET if "S005_001" in r["source"] else F.DETECTED), r["source"]


def test_ckplus_options(ckplus_root):
    items = readers.reader("ckplus", str(ckplus_root), contempt=False, apex_frames=2, neutral_frames=0,
                            sequences=False).items()
    r = readers.reader("ckplus", str(ckplus_root), contempt=False)
    assert r.classes == ("neutral", "anger", "disgust", "fear", "happy", "sadness", "surprise")
    good = [it for it in items if it.kind != "bad"]
    assert sorted((it.key.split("/")[-1], r.classes[it.label]) for it in good) == [
        ("S005_001_00000004.png", "happy"), ("S005_001_00000005.png", "happy"),
        ("S010_002_00000004.png", "surprise"), ("S010_002_00000005.png", "surprise")]
    assert {it.params[0] for it in items if it.kind == "bad"} == {
        "excluded:contempt", "malformed_label", "missing_file", "label_out_of_range"}
    # the Landmarks file, in CK+'s scientific notation, is what load hands the face pipeline
    apex = next(it for it in good if it.key.endswith("S005_001_00000005.png"))
    text = (ckplus_root / "Landmarks" / "S005" / "001" / "S005_001_00000005_landmarks.txt").read_text()
    np.testing.assert_allclose(r.load(apex).landmarks, np.array(text.split(), np.float32).reshape(68, 2))


# -- RAF-DB ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rafdb_root(face, tmp_path_factory):
    root = tmp_path_factory.mktemp("rafdb")
    basic = root / "basic"
    rows = [("train_00001.jpg", 4, "astronaut", "happiness", 1.0),
            ("train_00002.jpg", 5, "grace_hopper", "sadness", 1.7),
            ("train_00003.jpg", 1, "astronaut", "surprise", 1.7), ("test_0001.jpg", 7, "grace_hopper", "neutral", 1.0),
            ("test_0002.jpg", 6, "astronaut", "anger", 1.7)]
    for name, _, who, expression, scale in rows:  # tight 100 x 100 crops (face scale 1.7) defeat the detector
        img = face(who, expression)
        _imwrite(basic / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg"), _aligned(img, 100, scale))
        _imwrite(basic / "Image" / "original" / name, img)
        _write(basic / "Annotation" / "boundingbox" / name.replace(".jpg", "_boundingbox.txt"),
               " ".join(f"{v:.1f}" for v in _box(img)) + "\n")
    bad = ["train_00004.jpg", "train_00005.jpg 8", "train_00006.jpg 3"]  # malformed, out of range, missing
    lines = [f"{name} {code}" for name, code, *_ in rows] + bad
    _write(basic / "EmoLabel" / "list_patition_label.txt", "\n".join(lines) + "\n")
    return root


def test_rafdb_aligned_crops_are_fitted_in_the_crop(rafdb_root, tmp_path):
    m, recs = _prep("rafdb", rafdb_root, tmp_path)
    assert m["classes"] == list(DATASET_CLASSES["rafdb"])
    assert m["skipped"] == {"malformed_label": 1, "label_out_of_range": 1, "missing_file": 1}
    assert {r["subject"]: r["label_name"] for r in recs["train"]} == {
        "train_00001": "happiness", "train_00002": "sadness", "train_00003": "surprise"}
    assert {r["subject"]: r["label_name"] for r in recs["test"]} == {"test_0001": "neutral", "test_0002": "anger"}
    _check_crop_fitted(m, recs)
    assert sum(len(v["crop_fitted"]) for v in m["splits"].values()) >= 2  # the tight crops are not lost


def test_rafdb_original_photos_take_the_given_box(rafdb_root):
    r = readers.reader("rafdb", str(rafdb_root / "basic"), original=True)  # ROOT may be basic/ itself
    items = {it.key: it for it in r.items() if it.kind != "bad"}
    assert items["train_00001"].source.endswith(os.path.join("Image", "original", "train_00001.jpg"))
    inp = r.load(items["train_00001"])
    assert inp.box == pytest.approx(_box(inp.image)) and not inp.crop
    assert F.process_face(inp, FACE)["box_source"] == F.DATASET


# -- AffectNet ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def affectnet_root(face, tmp_path_factory):
    """training.csv (happy with box and landmarks, sad with a box only, surprise, contempt, the
    non-expressions 8-10, a malformed row and a missing image) and validation.csv (neutral, anger)."""
    root = tmp_path_factory.mktemp("affectnet")
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"

    def row(i: int, code, who="astronaut", expression="happiness", landmarks=True, image=True) -> str:
        rel = f"{100 + i}/{i:040x}.jpg"
        img = face(who, expression)
        if image:
            _imwrite(root / "Manually_Annotated_Images" / rel, img)
        x0, y0, x1, y1 = _box(img)
        lm = ";".join(f"{v:.2f}" for v in F.landmarks(img, F.rectangle((x0, y0, x1, y1))).ravel()) if landmarks else ""
        return f"{rel},{x0},{y0},{x1 - x0},{y1 - y0},{lm},{code},0.5,-0.1\n"

    train = [row(1, 1), row(2, 2, "grace_hopper", "sadness", landmarks=False), row(3, 3, "astronaut", "surprise"),
             row(4, 7, "grace_hopper", "contempt"), row(5, 8), row(6, 9), row(7, 10), row(8, "x"),
             row(9, 4, image=False)]
    _write(root / "Manually_Annotated_file_lists" / "training.csv", header + "".join(train))
    test = [row(10, 0, "grace_hopper", "neutral"), row(11, 6, "astronaut", "anger")]
    _write(root / "Manually_Annotated_file_lists" / "validation.csv", header + "".join(test))
    return root


def test_affectnet_uses_the_given_boxes_and_landmarks(affectnet_root, tmp_path):
    m, recs = _prep("affectnet", affectnet_root, tmp_path)
    assert m["classes"] == list(DATASET_CLASSES["affectnet"][:7])
    assert m["skipped"] == {"excluded:contempt": 1, "excluded:none": 1, "excluded:uncertain": 1,
                            "excluded:non_face": 1, "malformed_label": 1, "missing_file": 1}
    assert sorted(r["label_name"] for r in recs["train"]) == ["happy", "sad", "surprise"]
    assert sorted(r["label_name"] for r in recs["test"]) == ["anger", "neutral"]
    assert {s: v["box_source"] for s, v in m["splits"].items()} == {"train": {"dataset": 3}, "test": {"dataset": 2}}
    for r in recs["train"] + recs["test"]:  # the record's box is the CSV's face_x, face_y, face_x + w, face_y + h
        assert tuple(r["box"]) == _box(F.load_image(r["source"]))
    r = readers.reader("affectnet", str(affectnet_root), contempt=True)
    assert r.classes[-1] == "contempt" and sum(it.label == 7 and it.kind == "image" for it in r.items()) == 1


# -- FER-2013 ----------------------------------------------------------------------------------


def test_fer2013_rows_of_48px_pixels_are_fitted_in_the_crop(face, tmp_path):
    rows = [(3, "astronaut", "happiness", "Training"), (4, "grace_hopper", "sadness", "Training"),
            (5, "astronaut", "surprise", "Training"), (6, "grace_hopper", "neutral", "PublicTest"),
            (3, "grace_hopper", "happiness", "PrivateTest")]
    lines = ["emotion,pixels,Usage"]
    for code, who, expression, usage in rows:
        grey = cv2.cvtColor(_aligned(face(who, expression), 48), cv2.COLOR_RGB2GRAY)
        lines.append(f"{code},{' '.join(map(str, grey.ravel()))},{usage}")
    lines += ["3,1 2 3,Training", f"7,{' '.join(['9'] * 2304)},Training", f"2,{' '.join(['9'] * 2304)},Bogus"]
    root = tmp_path / "fer"
    _write(root / "fer2013.csv", "\r\n".join(lines) + "\r\n")  # as Kaggle ships it
    m, recs = _prep("fer2013", root, tmp_path / "out")
    assert m["skipped"] == {"malformed_label": 2, "label_out_of_range": 1}
    assert {s: [r["label_name"] for r in rs] for s, rs in recs.items()} == {
        "train": ["happy", "sad", "surprise"], "val": ["neutral"], "test": ["happy"]}
    assert recs["val"][0]["subject"] == "fer2013_5" and recs["val"][0]["source"].endswith("fer2013.csv:5")
    _check_crop_fitted(m, recs)
    assert all(v["box_source"] == {"crop": v["records"]} for v in m["splits"].values())  # 48 px: never detected


# -- SFEW --------------------------------------------------------------------------------------


def test_sfew_aligned_faces(face, tmp_path):
    root = tmp_path / "SFEW"
    files = {("Train", "Happy", "Airheads_000519240_00000005.png"): ("astronaut", "happiness"),
             ("Train", "Happy", "Airheads_000519240_00000012.png"): ("astronaut", "happiness"),
             ("Train", "Sad", "Bridesmaids_011709840_00000023.png"): ("grace_hopper", "sadness"),
             ("Val", "Surprise", "Hangover_000702634_00000003.png"): ("astronaut", "surprise")}
    for (top, emotion, name), (who, expression) in files.items():
        _imwrite(root / top / f"{top}_Aligned_Faces" / emotion / name, _aligned(face(who, expression), (143, 181), 0.8))
    _write(root / "Train" / "Train_Aligned_Faces" / "Happy" / "Thumbs.db", "not a face")
    m, recs = _prep("sfew", root, tmp_path / "out")
    assert m["classes"] == list(DATASET_CLASSES["sfew"]) and not m["skipped"]
    assert sorted((r["subject"], r["label_name"]) for r in recs["train"]) == [
        ("Airheads_000519240", "Happy"), ("Airheads_000519240", "Happy"), ("Bridesmaids_011709840", "Sad")]
    assert [(r["subject"], r["label_name"]) for r in recs["test"]] == [("Hangover_000702634", "Surprise")]
    _check_crop_fitted(m, recs)


# -- ExpW --------------------------------------------------------------------------------------


def test_expw_boxes_confidence_and_held_out_photos(face, tmp_path):
    """pic1: two faces (happy, sad) in one photo; pic2: surprise; pic3 under the confidence
    threshold; a malformed line; pic4 missing."""
    root = tmp_path / "ExpW"
    pic1 = np.concatenate([face("astronaut", "happiness"), face("grace_hopper", "sadness")], 1)
    pic2, pic3 = face("grace_hopper", "surprise"), face("astronaut", "neutral")
    lines = []
    for name, img, faces in (("pic1.jpg", pic1, ((0, 80.5, 3), (256, 71.0, 4))), ("pic2.jpg", pic2, ((0, 90.0, 5),)),
                             ("pic3.jpg", pic3, ((0, 30.0, 6),))):
        _imwrite(root / "image" / "origin" / name, img)
        for i, (x, conf, code) in enumerate(faces):
            left, top, right, bottom = _box(img[:, x:x + 256])
            lines.append(f"{name} {i} {top} {left + x} {right + x} {bottom} {conf} {code}")
    lines += ["pic2.jpg 1 10 10", "pic4.jpg 0 10 10 90 90 95.0 3"]
    _write(root / "label" / "label.lst", "\n".join(lines) + "\n")
    m, recs = _prep("expw", root, tmp_path / "out", prep.PrepOptions(face=FACE, test_fraction=0.5), min_confidence=60)
    assert m["skipped"] == {"low_confidence": 1, "malformed_label": 1, "missing_file": 1}
    split_of, labels = {}, {}
    for split, rs in recs.items():
        for r in rs:
            assert split_of.setdefault(r["subject"], split) == split  # the faces of one photo in one split
            labels.setdefault(r["subject"], []).append(r["label_name"])
    assert {k: sorted(v) for k, v in labels.items()} == {"pic1.jpg": ["happy", "sad"], "pic2.jpg": ["surprise"]}
    assert sorted(split_of.values()) == ["test", "train"]
    assert all(v["box_source"] == {"dataset": v["records"]} for v in m["splits"].values())
    right = next(r for rs in recs.values() for r in rs if r["label_name"] == "sad")
    assert right["box"][0] >= 256  # the given box of the photo's second face, not the largest face


# -- BU-4DFE -----------------------------------------------------------------------------------


def test_bu4dfe_sequences_and_middle_apex_frames(subjects, tmp_path):
    root = tmp_path / "BU4DFE"
    for subject, who, expression, emotion in (("F001", "grace_hopper", "happiness", "Happy"),
                                              ("M001", "astronaut", "sadness", "Sad")):
        onset = S.clip_frames(subjects[who], expression, 1.0, 4, np.random.default_rng(2))
        for i, frame in enumerate(onset + onset[::-1][1:]):  # neutral -> apex -> neutral: the apex is frame 3
            _imwrite(root / subject / emotion / f"{i:03d}.jpg", frame)
    os.makedirs(root / "M001" / "Angry")  # no frames: skipped
    os.makedirs(root / "F001" / "Notes")  # not an expression: ignored
    m, recs = _prep("bu4dfe", root, tmp_path / "out", prep.PrepOptions(face=FACE, test_fraction=0.5, clip_size=48,
                                                                      frames=8), apex_frames=1)
    assert m["classes"] == list(DATASET_CLASSES["bu4dfe"]) and m["skipped"] == {"missing_file": 1}
    images = {r["subject"]: r for s in ("train", "test") for r in recs.get(s, [])}
    assert {k: (os.path.basename(r["source"]), r["label_name"]) for k, r in images.items()} == {
        "F001": ("003.jpg", "Happy"), "M001": ("003.jpg", "Sad")}
    clips = {r["subject"]: (s, r) for s in ("train_clips", "test_clips") for r in recs.get(s, [])}
    assert {k: r["label_name"] for k, (_, r) in clips.items()} == {"F001": "Happy", "M001": "Sad"}
    assert {s for s, _ in clips.values()} == {"train_clips", "test_clips"}  # subject-independent
    assert clips["F001"][1]["clip"].shape == (8, 48, 48, 3)


# -- MMI ---------------------------------------------------------------------------------------


def _write_video(path, frames: list[np.ndarray]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, frames[0].shape[1::-1])
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()


def _metadata(*tags: tuple[str, str]) -> str:
    body = "".join(f'  <Metatag Name="{n}" Value="{v}"/>\n' for n, v in tags)
    return f'<?xml version="1.0" encoding="utf-8"?>\n<MetaData>\n{body}</MetaData>\n'


def test_mmi_sessions_with_emotion_metadata(subjects, tmp_path):
    root = tmp_path / "mmi-facial-expression-database"
    sessions = root / "Sessions"
    for n, sid, who, expression in (("1", "S001-001", "astronaut", "happiness"), ("2", "S002-003", "grace_hopper",
                                                                                "surprise")):
        _write_video(sessions / n / f"{sid}.avi", S.clip_frames(subjects[who], expression, 1.0, 5,
                                                                  np.random.default_rng(3)))
    _write(sessions / "1" / "S001-001.xml", _metadata(("Gender", "Male"), ("Emotion", "4")))
    _write(sessions / "1" / "session.xml", '<?xml version="1.0"?>\n<session sessionId="1">\n <subject id="1"/>\n'
           ' <track id="0" view="0" type="Video"/>\n</session>\n')
    _write(sessions / "1" / "S001-001-oao_aucs.xml", '<ActionUnits><ActionUnit Number="12"/></ActionUnits>')
    _write(sessions / "2" / "S002-003.xml", _metadata(("Emotion", "6")))
    still = S.clip_frames(subjects["astronaut"], "neutral", 0.0, 2, np.random.default_rng(4))
    for n, sid, xml in (("3", "S001-005", _metadata(("Gender", "Male"))), ("4", "S002-007", "<MetaData><Meta"),
                        ("5", "S002-009", _metadata(("Emotion", "9")))):
        _write_video(sessions / n / f"{sid}.avi", still)
        _write(sessions / n / f"{sid}.xml", xml)
    _imwrite(sessions / "6" / "S001-010.jpg", still[0])  # an image session
    _write(sessions / "6" / "S001-010.xml", _metadata(("Emotion", "1")))
    m, recs = _prep("mmi", root, tmp_path / "out", prep.PrepOptions(face=FACE, test_fraction=0.5, clip_size=48,
                                                                   frames=8, max_frames=5))
    assert m["classes"] == list(DATASET_CLASSES["mmi"])
    assert m["skipped"] == {"no_emotion": 1, "malformed_label": 1, "label_out_of_range": 1, "no_video": 1}
    clips = {r["subject"]: (s, r["label_name"]) for s, rs in recs.items() for r in rs}
    assert {k: v[1] for k, v in clips.items()} == {"S001": "happiness", "S002": "surprise"}
    assert sorted(s for s, _ in clips.values()) == ["test_clips", "train_clips"]


# -- LFW ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lfw_root(face, tmp_path_factory):
    root = tmp_path_factory.mktemp("lfw_root")
    for name, n, who, expression in (("Alice_Smith", 1, "astronaut", "happiness"),
                                     ("Alice_Smith", 2, "astronaut", "neutral"),
                                     ("Bob_Jones", 1, "grace_hopper", "neutral"),
                                     ("Bob_Jones", 2, "grace_hopper", "sadness")):
        _imwrite(root / "lfw" / name / f"{name}_{n:04d}.jpg", face(who, expression))
    # View 2 in small: 2 folds of 1 same-person and 1 different-person pair
    _write(root / "pairs.txt", "2\t1\nAlice_Smith\t1\t2\nAlice_Smith\t1\tBob_Jones\t1\n"
                               "Bob_Jones\t1\t3\nAlice_Smith\tx\tBob_Jones\n")
    _write(root / "pairsDevTest.txt", "1\nBob_Jones\t1\t2\nBob_Jones\t2\tAlice_Smith\t2\n")
    return root


def test_lfw_pairs_reach_the_manifest(lfw_root, tmp_path):
    m, recs = _prep("lfw", lfw_root, tmp_path)
    assert m["classes"] == ["Alice_Smith", "Bob_Jones"] and list(m["splits"]) == ["test"]
    assert m["skipped"] == {"missing_file": 1, "malformed_label": 1}  # Bob_Jones_0003, the `x` line
    assert m["pairs"] == [["lfw/Alice_Smith/Alice_Smith_0001.jpg", "lfw/Alice_Smith/Alice_Smith_0002.jpg", True, 0],
                          ["lfw/Alice_Smith/Alice_Smith_0001.jpg", "lfw/Bob_Jones/Bob_Jones_0001.jpg", False, 0],
                          ["lfw/Bob_Jones/Bob_Jones_0001.jpg", "lfw/Bob_Jones/Bob_Jones_0003.jpg", True, 1]]
    assert m["pairs_file"] == "pairs.txt"
    # each pair's images are found by the records' `source`
    assert sorted((r["source"], r["subject"], r["label_name"]) for r in recs["test"]) == [
        ("lfw/Alice_Smith/Alice_Smith_0001.jpg", "Alice_Smith", "Alice_Smith"),
        ("lfw/Alice_Smith/Alice_Smith_0002.jpg", "Alice_Smith", "Alice_Smith"),
        ("lfw/Bob_Jones/Bob_Jones_0001.jpg", "Bob_Jones", "Bob_Jones")]
    dev = readers.reader("lfw", str(lfw_root), pairs="pairsDevTest.txt")
    assert dev.manifest_extras()["pairs"] == [
        ["lfw/Bob_Jones/Bob_Jones_0001.jpg", "lfw/Bob_Jones/Bob_Jones_0002.jpg", True, 0],
        ["lfw/Bob_Jones/Bob_Jones_0002.jpg", "lfw/Alice_Smith/Alice_Smith_0002.jpg", False, 0]]


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_of_paths_and_labels(face, tmp_path):
    root = tmp_path / "photos"
    a = _imwrite(root / "images" / "a.jpg", face("astronaut", "happiness"))
    _imwrite(root / "images" / "b.jpg", face("grace_hopper", "sadness"))
    _imwrite(root / "images" / "c__1.jpg", face("grace_hopper", "happiness"))
    rows = ["path,label,subject,split", "images/a.jpg,happy,alice,train", "images/b.jpg,sad,,train",
            "images/c__1.jpg,happy,,test", "images/missing.jpg,sad,dan,train", ",happy,,train",
            "images/a.jpg,sad,alice,not a split"]
    _write(root / "labels.csv", "\n".join(rows) + "\n")
    m, recs = _prep("csv", root / "labels.csv", tmp_path / "out")
    assert m["classes"] == ["happiness", "sadness"] and m["skipped"] == {"missing_file": 1, "malformed_label": 2}
    assert sorted((r["subject"], r["label_name"]) for r in recs["train"]) == [("alice", "happiness"), ("b", "sadness")]
    assert [(r["subject"], r["label_name"]) for r in recs["test"]] == [("c", "happiness")]
    # no header, class numbers, an absolute path
    _write(root / "numbers.csv", f"{a},2\nimages/b.jpg,0\n")
    r = readers.reader("csv", str(root / "numbers.csv"))
    assert r.classes == ("0", "1", "2")
    assert [(it.label, it.subject, it.split, it.source) for it in r.items()] == [
        (2, "a", "train", a), (0, "b", "train", str(root / "images" / "b.jpg"))]
    # a header of other column names; one class in three spellings
    _write(root / "other.csv", "image,emotion\nimages/a.jpg,Happy\nimages/b.jpg,happiness\nimages/c__1.jpg,happy\n")
    r = readers.reader("csv", str(root / "other.csv"))
    assert r.classes == ("happiness",) and len(r.items()) == 3 and all(it.kind == "image" for it in r.items())


# -- every reader --------------------------------------------------------------------------------


def test_fixed_label_sets_come_from_labels_py():
    for name in ("rafdb", "fer2013", "sfew", "afew", "expw", "bu4dfe", "mmi", "icv_mefed"):
        assert readers.READERS[name].classes == DATASET_CLASSES[name], name


@pytest.mark.parametrize("dataset, make, message", [
    ("ckplus", "Emotion/", "no cohn-kanade-images"),
    ("ckplus", "cohn-kanade-images/", "no Emotion"),
    ("rafdb", "basic/Image/aligned/", "no EmoLabel/list_patition_label.txt"),
    ("rafdb", "basic/EmoLabel/list_patition_label.txt", "no Image/aligned"),
    ("affectnet", "Manually_Annotated_Images/", "no Manually_Annotated_file_lists"),
    ("affectnet", "Manually_Annotated_file_lists/", "no Manually_Annotated_Images"),
    ("fer2013", "train.csv", "no fer2013.csv"),
    ("fer2013", "fer2013.csv", "no emotion,pixels,Usage header"),
    ("sfew", "Train/Happy/", "no Train/Train_Aligned_Faces or Val/Val_Aligned_Faces"),
    ("expw", "image/origin/", "no label/label.lst"),
    ("bu4dfe", "Happy/", "no subject folders"),
    ("mmi", "1/", "no Sessions"),
    ("lfw", "pairs.txt", "no lfw/ folder"),
    ("lfw", "lfw/", "no pairs.txt"),
    ("csv", "labels/", "not a CSV file"),
    ("ckplus", None, "ROOT not found"),
])
def test_wrong_layouts_are_one_line_user_errors(tmp_path, dataset, make, message):
    root = tmp_path / "root"
    if make is not None:
        path = root / make
        os.makedirs(path if make.endswith("/") else path.parent, exist_ok=True)
        if not make.endswith("/"):
            path.write_text("a,b\n")
    with pytest.raises(UserError, match=message) as e:
        readers.reader(dataset, str(root / "labels" if dataset == "csv" else root)).items()
    assert str(root) in str(e.value) and "expected" in str(e.value) and "\n" not in str(e.value)


def test_a_flag_of_another_dataset_is_refused(rafdb_root, tmp_path, capsys):
    assert _fergate("prep", str(rafdb_root), "--dataset", "rafdb", "--out", str(tmp_path), "--min_confidence",
                    "60") == 2
    assert "--min_confidence is an option of --dataset expw, not rafdb" in capsys.readouterr().err


# -- reader options and readers outside data_prep ------------------------------------------------


def test_prep_flags_are_generated_from_the_readers_options(capsys):
    """Every flag-bearing option of every reader is a `fergate prep` flag, with its default in
    the help; a flag of another dataset's reader is refused (above)."""
    with pytest.raises(SystemExit):
        _fergate("prep", "--help")
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "--apex_frames K ckplus: the last K frames of a sequence, labelled with its emotion (default 3)" in text
    assert "--size SIZE sample: face images drawn, for the train and test splits (default 2800)" in text
    assert "--pairs FILE" in text
    for name in readers.READERS:
        assert name in text  # the --dataset list
    for name, rdr in readers.READERS.items():
        for f in dataclasses.fields(rdr.Options):
            if f.metadata["flag"]:
                flag = f"--no_{f.name}" if f.default is True else f"--{f.name}"
                assert flag in text, (name, flag)


def test_an_unknown_reader_option_is_a_one_line_error(tmp_path):
    calls = {"unknown option 'sise' of --dataset sample":
             lambda: prep.run("sample", None, str(tmp_path / "a"), OPTS, {"size": 7, "sise": 7}, workers=1),
             "data.prep_options (face, prep or reader options): unknown option 'clip' of --dataset sample":
             lambda: prep.builtin("sample", {"face_size": 48, "clip": 3})}
    for start, call in calls.items():
        with pytest.raises(UserError) as e:
            call()
        assert str(e.value).startswith(start) and "(its options: size, clips, " in str(e.value), str(e.value)
        assert "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "a")


EXTERNAL = '''
"""A reader outside data_prep: grey squares of two sizes, as records."""
from dataclasses import dataclass

import numpy as np

from data_prep.readers import Item, Reader, option


@dataclass(frozen=True)
class SquaresOptions:
    count: int = option(4, "squares of each size")


class SquaresReader(Reader):
    name = "squares_ext"
    Options = SquaresOptions
    classes = ("small", "large")

    def items(self):
        return [Item(f"{split}{i}", split, i % 2, f"s{i}", "generator", "record")
                for split in ("train", "test") for i in range(2 * self.options.count)]

    def load_item(self, item):
        image = np.zeros((16, 16, 1), np.uint8)
        side = 4 if item.label == 0 else 12
        image[:side, :side] = 255
        return {"image": image}


READERS = (SquaresReader,)
'''


def test_a_reader_outside_data_prep_is_named_by_its_module(tmp_path, monkeypatch):
    """`--dataset squares_ext` names an importable module whose READERS holds one reader: it is
    prepared like a built-in one (its options from prep.run or a config's prep_options)."""
    (tmp_path / "squares_ext.py").write_text(EXTERNAL)
    monkeypatch.syspath_prepend(str(tmp_path))
    m, recs = _prep("squares_ext", "", tmp_path / "out", count=3)
    assert m["dataset"] == "squares_ext" and m["classes"] == ["small", "large"]
    assert {s: len(r) for s, r in recs.items()} == {"train": 6, "test": 6}
    assert sorted(int(r["image"].sum() // 255) for r in recs["train"][:2]) == [16, 144]
    assert _fergate("prep", "--dataset", "squares_ext", "--out", str(tmp_path / "cli"), "--workers", "1") == 0
    with pytest.raises(UserError, match="unknown option 'counts' of --dataset squares_ext .its options: count."):
        readers.reader("squares_ext", None, counts=2)
    with pytest.raises(UserError, match="unknown dataset 'squares_none'"):
        readers.reader("squares_none", None)
