"""`fergate predict`: an exported model (`fergate export`) on photos, folders and videos.

Inputs are expanded into work units (a photo; a run of a video's frames for a face model; a
window of frames for a clip model), each run through the face pipeline `fergate prep`
used for the model's training data (its options are in the export) in a process pool,
while this process batches the faces and runs the exported function: the model's cost hides
behind the face pipeline's. One JSON line per face (or per clip window), and one per input
that gave none, saying why (a video's units told as one: a video without a face is one
line); a bad input never stops the others. Why an input gave nothing is worded here once
(`reason`, the constants below), for this command and `fergate.load(E).predict` alike.

Frame ranges are inclusive everywhere, in the lines ("frames": [first, last]) as in the
messages ("frames [first, last]").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np

from fergate.data import fields as fields_lib
from fergate.errors import UserError

log = logging.getLogger(__name__)

#: frames of a video one work unit of a face model reads
FRAMES_PER_UNIT = 32

#: why an input gave no prediction: the `error` of its line (`fergate predict`) or dict
#: (`export.Model.predict`); a failure of the face pipeline says its `reason`
NO_SUCH_PATH = "no such file or folder"
EMPTY_FOLDER = "no photo or video in this folder (or below)"
PHOTO_FOR_CLIP = "a clip (video) model predicts on videos, not photos"


def reason(e: Exception) -> str:
    """The `error` of an input the face pipeline failed on: a SkipItem's reason and detail
    ("no_face", "not_an_image: ..."), another exception's type and message (a decoder's bug)."""
    from fergate.face import SkipItem

    return str(e) if isinstance(e, SkipItem) else f"{type(e).__name__}: {e}"


def error_line(item: dict) -> dict:
    """The line (dict) of an item without a prediction: where it came from, and why."""
    return {**item["info"], "error": item["error"]}


def missing_error(missing: Sequence[str], others: bool) -> str:
    """The one line `fergate predict` fails with when nothing was predicted and some inputs
    do not exist."""
    return (f"{', '.join(missing)}: {NO_SUCH_PATH}"
            + ("; the other inputs gave no prediction either (their lines say why)" if others else ""))


@dataclasses.dataclass(frozen=True)
class Unit:
    """One piece of work for the face pipeline."""

    kind: str  #: "image", "frames" (a face model on a video) or "window" (a clip model's window)
    source: str
    start: int = 0  #: first frame (videos)
    stop: int | None = None  #: frame after the last (None: the video's end)
    every: int = 1  #: "frames": every k-th frame
    group: str = ""  #: the faces one subject's mean landmarks are taken over (a folder, a video)


def expand(paths: Sequence[str], kind: str, every: int, window: int, stride: int) -> tuple[list[Unit], list[dict]]:
    """Work units of `paths` (photos, videos, folders searched recursively), and an error line
    for each path that gives none."""
    from fergate.face import IMAGE_EXTS
    from fergate.video import VIDEO_EXTS

    units, errors = [], []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs
                           if f.lower().endswith(IMAGE_EXTS + VIDEO_EXTS))
            if not found:
                errors.append({"source": path, "error": EMPTY_FOLDER})
            files = found
        elif os.path.isfile(path):
            files = [path]
        else:
            errors.append({"source": path, "error": NO_SUCH_PATH})
            continue
        for f in files:
            group = f if f.lower().endswith(VIDEO_EXTS) else os.path.dirname(f)
            if f.lower().endswith(VIDEO_EXTS):
                n = frame_count(f)
                if kind == "clip":
                    starts = range(0, max(n - window, 0) + 1, stride) if n else [0]
                    units += [Unit("window", f, s, s + window if n else None, group=group) for s in starts]
                else:
                    step = FRAMES_PER_UNIT * every
                    units += [Unit("frames", f, s, min(s + step, n), every, group) for s in range(0, n, step)] \
                        if n else [Unit("frames", f, 0, None, every, group)]
            elif kind == "clip":
                errors.append({"source": f, "error": PHOTO_FOR_CLIP})
            else:
                units.append(Unit("image", f, group=group))
    return units, errors


def frame_count(path: str) -> int:
    """The frame count the container states (0: unknown or unreadable)."""
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        return max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0) if cap.isOpened() else 0
    finally:
        cap.release()


def read_frames(path: str, start: int, stop: int | None, every: int = 1) -> list[tuple[int, np.ndarray]]:
    """(index, RGB frame) of frames start, start + every, ... before `stop` of a video."""
    import cv2

    from fergate.face import SkipItem

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise SkipItem("unreadable_video", "OpenCV cannot open it (corrupt, or not a video)")
        if start:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        out, i = [], start
        while (stop is None or i < stop) and cap.grab():
            if (i - start) % every == 0:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    out.append((i, np.ascontiguousarray(frame[..., ::-1])))
            i += 1
    finally:
        cap.release()
    if not out:
        where = f" in frames [{start}, {stop - 1}]" if stop is not None else f" from frame {start} on" if start else ""
        raise SkipItem("unreadable_video", f"no frame decodes{where}")
    return out


# ----------------------------------------------------------------------------- face pipeline
_WORKER: dict = {}


def init_worker(data: dict, fields: Sequence[str], min_score: float | None = None, detector: str | None = None) -> None:
    """The face pipeline's options, from the export's record of the training data's;
    `detector` (`fergate.detectors`) and `min_score`, the detector score a face needs, default
    to the training data's (a detector other than the data's: its own default minimum)."""
    import cv2

    from fergate import detectors
    from fergate import face as F
    from fergate.video import ClipOptions

    cv2.setNumThreads(1)
    opts = data.get("options", {})
    face = {k: v for k, v in opts.get("face", {}).items() if k in {f.name for f in dataclasses.fields(F.FaceOptions)}}
    face["face_size"] = F.parse_size(face.get("face_size", 96))
    face.update(patches="patches" in fields and face.get("patches", True),
                identity="identity" in fields and face.get("identity", True))
    if detector is not None and detector != face.get("detector", "hog"):
        face.update(detector=detector, min_score=detectors.get(detector).default_min)
    if min_score is not None:
        face["min_score"] = float(min_score)
    clip_fields = {f.name for f in dataclasses.fields(ClipOptions)} - {"face"}
    _WORKER["opts"] = ClipOptions(face=F.FaceOptions(**face), **{k: v for k, v in opts.items() if k in clip_fields})


def faces_in(img: np.ndarray) -> list[tuple[dict, dict]]:
    """(record, {"box", "score", "landmarks"} in image pixels) of every face of an image
    (`face.faces`: the detector's boxes scoring at least the options' `min_score`, false
    positives rejected as `fergate prep` rejects them), left to right."""
    from fergate import face as F

    opts = _WORKER["opts"].face
    out = []
    found = F.faces(img, opts.upsample, opts.min_score, opts.detector)
    for c in sorted(found, key=lambda c: (c.rect.left(), c.rect.top())):
        box = (c.rect.left(), c.rect.top(), c.rect.right(), c.rect.bottom())
        try:
            rec = F.process_face(F.FaceInput(img, box=box, landmarks=c.landmarks), opts)
        except F.SkipItem:
            continue
        out.append((rec, {"box": [int(v) for v in box], "score": round(c.score, 3),
                          "landmarks": np.round(c.landmarks, 1).tolist()}))
    return out


def face_items(img: np.ndarray, base: dict, group: str) -> list[dict]:
    """{"record", "info" (`base` + face index, box, detector score, landmarks), "group"} per
    face of an image, or one {"info", "error"}: "no_face", with what was rejected if any."""
    from fergate.face import SkipItem

    try:
        got = faces_in(img)
    except SkipItem as e:
        return [{"info": base, "error": str(e)}]
    if not got:
        return [{"info": base, "error": "no_face"}]
    return [{"record": r, "info": {**base, "face": i, **info}, "group": group} for i, (r, info) in enumerate(got)]


def clip_item(frames: list[tuple[int, np.ndarray]], base: dict, group: str) -> dict:
    """{"record", "info" (`base` + the first and last frame), "group"} of (index, frame) pairs:
    one clip record, as `fergate prep` makes them."""
    from fergate.video import clip_record

    rec = clip_record([f for _, f in frames], _WORKER["opts"])
    return {"record": rec, "info": {**base, "frames": [frames[0][0], frames[-1][0]]}, "group": group}


def work(unit: Unit) -> list[dict]:
    """{"record", "info"} per face (or clip window) of a unit, or one {"info", "error"}; the
    error of a unit of video frames that decoded says which ("info": "frames") and how many
    ("read")."""
    from fergate import face as F

    base = {"source": unit.source}
    try:
        if unit.kind == "image":
            return face_items(F.load_image(unit.source), base, unit.group)
        frames = read_frames(unit.source, unit.start, unit.stop, unit.every)
    except Exception as e:  # noqa: BLE001 - a decoder failure must not stop the others
        return [{"info": base, "error": reason(e)}]
    read = {"info": {**base, "frames": [frames[0][0], frames[-1][0]]}, "read": len(frames)}
    try:
        if unit.kind == "window":
            return [clip_item(frames, base, unit.group)]
        out = [it for index, img in frames for it in face_items(img, {**base, "frame": index}, unit.group)
               if "error" not in it]
        return out or [{**read, "error": "no_face"}]
    except Exception as e:  # noqa: BLE001
        return [{**read, "error": reason(e)}]


def input_items(x, i: int, kind: str) -> list[dict]:
    """`export.Model.predict`'s items of its `i`-th input `x` (a face model: a photo, as a path
    or an RGB array; a clip model: a video path or a sequence of RGB frames), as `work` makes
    them of a unit: the same faces, and the same errors."""
    from fergate import face as F

    base = {"source": x if isinstance(x, str) else f"input {i}"}
    if isinstance(x, str) and not os.path.exists(x):
        return [{"info": base, "error": NO_SUCH_PATH}]
    if isinstance(x, str) and kind == "clip" and x.lower().endswith(F.IMAGE_EXTS):
        return [{"info": base, "error": PHOTO_FOR_CLIP}]
    try:
        if kind == "clip":
            frames = read_frames(x, 0, None) if isinstance(x, str) else \
                [(j, F.to_rgb8(np.asarray(f))) for j, f in enumerate(x)]
            return [clip_item(frames, base, base["source"])]
        return face_items(F.load_image(x) if isinstance(x, str) else F.to_rgb8(np.asarray(x)), base, base["source"])
    except Exception as e:  # noqa: BLE001 - as `work`: a bad input never stops the others
        return [{"info": base, "error": reason(e)}]


class Outcomes:
    """What each input gave, told once per input: a photo without a prediction is its line; a
    video's units are told as one, at its end: one line if none gave a prediction (the frames
    that decoded, and why: "no_face" when they did), else, of a clip model, a line per window
    without one (a face model's frames without a face have no line). `errors`: the inputs
    without a prediction."""

    def __init__(self, write):
        self.write = write
        self.errors = 0
        self.source: str | None = None
        self.kind = ""
        self.predicted = False
        self.lost: list[dict] = []

    def unit(self, unit: Unit) -> None:
        if unit.source != self.source:
            self.end()
            self.source, self.kind, self.predicted, self.lost = unit.source, unit.kind, False, []

    def item(self, item: dict) -> None:
        if "error" not in item:
            self.predicted = True
        elif self.kind == "image":
            self.write(error_line(item))
            self.errors += 1
        else:
            self.lost.append(item)

    def end(self) -> None:
        if self.source is not None and not self.predicted and self.lost:
            read = [it for it in self.lost if "read" in it]
            frames = {"frames": [min(it["info"]["frames"][0] for it in read),
                                 max(it["info"]["frames"][1] for it in read)]} if read else {}
            self.write({"source": self.source, **frames, "error": (read or self.lost)[0]["error"]})
            self.errors += 1
        elif self.source is not None and self.kind == "window":
            for it in self.lost:
                self.write(error_line(it))
        self.source, self.lost = None, []


# ----------------------------------------------------------------------------- model
def summary(name: str, v: np.ndarray) -> object:
    """An introspection value for a JSON line: small ones whole, maps as their peak and mean."""
    v = np.asarray(v, np.float64)
    if v.size <= 64:
        return np.round(v, 4).tolist()
    peak = np.unravel_index(int(np.argmax(v)), v.shape)
    return {"shape": list(v.shape), "max": round(float(v.max()), 5), "mean": round(float(v.mean()), 5),
            "argmax": [int(i) for i in peak]}


def predict_faces(model, faces: list[dict]) -> tuple[list[dict], dict]:
    """The JSON lines of faces from `work` (probabilities, label, introspection), and the
    model's outputs."""
    records = [f["record"] for f in faces]
    for name in fields_lib.derived(model.manifest["record_fields"]):  # e.g. a subject's mean: over its group's faces
        values = fields_lib.get(name).derive.over_records(records, [f["group"] for f in faces])
        records = [{**r, name: v} for r, v in zip(records, values)]
    res = model.predict_records(records)
    out = []
    for i, f in enumerate(faces):
        p = res["probabilities"][i]
        out.append({**f["info"], "label": model.classes[int(np.argmax(p))],
                    "probabilities": {c: round(float(x), 5) for c, x in zip(model.classes, p)},
                    "introspection": {k: summary(k, v[i]) for k, v in res.get("introspect", {}).items()}})
    return out, res


def run(model, inputs: Sequence[str], out, workers: int | None = None, every: int = 1,
        window: int | None = None, stride: int | None = None, annotate: str | None = None,
        heatmaps: str | None = None, pipeline_only: bool = False, min_score: float | None = None,
        frames: bool = False, detector: str | None = None) -> dict:
    """Predicts with `model` (a loaded export, `fergate.export.Model`) on `inputs`, writing
    JSON lines to the file object `out`, and with `annotate` the inputs with their
    predictions drawn (`fergate.annotate`: a video as one video, its frames as images too with
    `frames`); returns counts and rates. `detector` finds the faces, `min_score` is the
    score they need (both default to the training data's: `init_worker`). Nothing predicted
    while some inputs do not exist is a UserError naming them (a mistyped path)."""
    batch_size = model.batch_size
    window = window or int(model.manifest["data"].get("options", {}).get("frames", 16))  # T, as in training
    stride = stride or max(1, window // 2)
    if min(every, window, stride, batch_size) < 1:
        raise UserError("--every, --window, --stride and --batch must be at least 1")

    def write(line: dict) -> None:
        out.write(json.dumps(line) + "\n")

    units, errors = expand(inputs, model.kind, every, window, stride)
    for e in errors:
        write(e)
    missing = [e["source"] for e in errors if e["error"] == NO_SUCH_PATH]
    if not units:
        if missing:
            raise UserError(missing_error(missing, len(missing) < len(inputs)))
        return {"faces": 0, "errors": len(errors), "seconds": 0.0, "kind": model.kind}
    fields = sorted(model.pipeline_fields())
    init = (model.manifest["data"], fields, min_score, detector)
    workers = workers or os.cpu_count() or 1
    pool = None
    if workers > 1 and len(units) > 1:
        pool = mp.get_context("spawn").Pool(workers, init_worker, init)
        results: Iterator[list[dict]] = pool.imap(work, units, chunksize=1)
    else:
        init_worker(*init)
        results = map(work, units)
    if not pipeline_only:
        model.warm()  # compiles while the pool starts
    subject_means = bool(fields_lib.derived(model.manifest["record_fields"]))
    counts = {"faces": 0, "errors": len(errors), "frames": 0, "units": len(units), "kind": model.kind}
    outcomes = Outcomes(write)
    drawn = None
    if annotate and not pipeline_only:
        from fergate.annotate import Annotator

        drawn = Annotator(annotate, frames, every)
    pending: list[dict] = []
    t0 = time.time()

    def flush(final: bool = False) -> None:
        nonlocal pending
        if not pending or (not final and len(pending) < batch_size):
            return
        lines, res = ([{**f["info"]} for f in pending], {}) if pipeline_only else predict_faces(model, pending)
        for i, (f, line) in enumerate(zip(pending, lines)):
            write(line)
            if drawn is not None:
                drawn.add(line)
            if heatmaps and not pipeline_only:
                heat(model, f, line, {k: v[i] for k, v in res.get("introspect", {}).items()}, heatmaps)
        counts["faces"] += len(pending)
        pending = []

    try:
        from tqdm import tqdm

        last_group, t_first, first = None, None, 0
        for unit, res in zip(units, tqdm(results, total=len(units), unit="input", disable=None, file=sys.stderr)):
            if t_first is None:  # start-up (the pool, dlib's models) ends with the first result
                t_first, first = time.time(), sum("error" not in r for r in res)
            outcomes.unit(unit)
            for r in res:
                outcomes.item(r)
                if "error" in r:
                    continue
                if subject_means and r["group"] != last_group:
                    flush(final=True)  # a subject's faces are predicted together (their mean landmarks)
                last_group = r["group"]
                pending.append(r)
                counts["frames"] += "frame" in r["info"]
                if not subject_means:
                    flush()
        flush(final=True)
        outcomes.end()
    finally:
        if pool is not None:
            pool.terminate()
        if drawn is not None:
            drawn.close()
    end = time.time()
    counts["errors"] += outcomes.errors
    if missing and not counts["faces"]:
        raise UserError(missing_error(missing, True))
    counts["seconds"] = round(end - t0, 3)
    counts["faces_per_sec"] = round(counts["faces"] / max(end - t0, 1e-9), 2)
    if t_first is not None and end > t_first:  # after start-up: the rate a long input runs at
        counts["steady_faces_per_sec"] = round((counts["faces"] - first) / (end - t_first), 2)
    return counts


def heat(model, face: dict, line: dict, introspect: dict, outdir: str) -> None:
    """Each (h, w) introspection map of a face over the model's image input, into `outdir`."""
    import cv2

    from fergate import plots

    inputs = model.model_inputs([face["record"]])
    image = next((v[0] for v in inputs.values() if v.ndim == 4 and v.shape[-1] in (1, 3)), None)
    if image is None:
        return
    info = face["info"]
    stem = os.path.splitext(os.path.basename(info["source"]))[0]
    tag = f"_f{info['frame']:06d}" if "frame" in info else ""
    os.makedirs(outdir, exist_ok=True)
    for name, v in introspect.items():
        m = np.asarray(v, np.float32)
        if m.ndim != 2:
            continue
        h, w = image.shape[:2]
        up = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        plots.overlay(image.squeeze(-1) if image.shape[-1] == 1 else image, up, [],
                      f"{os.path.basename(info['source'])}{tag} face {info.get('face', 0)}: {line['label']} "
                      f"{line['probabilities'][line['label']]:.2f}\n{name} over the model's input",
                      os.path.join(outdir, f"{stem}{tag}_face{info.get('face', 0)}_{name}.png"),
                      f"{name} (weights of the map)")
