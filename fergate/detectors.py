"""Face detectors: where the faces of a photo are, before the 68 landmarks and the alignment
(`fergate.face`), which are the same whichever detector found the box.

- `hog`: dlib's HOG + linear SVM frontal detector, the default and the only one before
  `--detector`. Its score is the SVM's margin: faces mostly 0.5-3, dlib reports boxes from 0.
  It looks for upright frontal faces of 80 px and more (40 px with one `upsample`).
- `yunet`: libfacedetection's CNN (YuNet: Wu, Peng and Yu, *YuNet: A Tiny Millisecond-level
  Face Detector*, Machine Intelligence Research 2023), trained on WIDER FACE: faces in the
  wild, rolled, small (~10 px and up), turned. Its weights are compiled into the `yuface` wheel
  (`pip install fergate[detectors]`): nothing is downloaded. Its score is its confidence in
  [0, 1]; its 5 points (eye centres, nose tip, mouth corners) give `fergate.face` the face's
  roll, undone before the 68 landmarks are fitted.

A detector is chosen by name (`DETECTORS`) in `fergate prep --detector`, recorded in the
manifest, and used again by `fergate predict` on the model trained on it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from fergate.errors import UserError


@dataclass(frozen=True)
class Detector:
    """A detector's name and what its scores mean to the face pipeline."""

    name: str
    #: the minimum score (`--min_confidence`) when none is given: below it, a box is no face
    default_min: float
    #: a detection scoring at least this is a face whatever its landmarks' fit; a weaker one must
    #: also fit (`fergate.face.Candidate.poor`)
    strong: float
    about: str


#: YuNet's minimum is its own default threshold, 0.5. Measured (`data_prep.detect_bench`): of
#: the 106 hard faces HOG misses, the 101 YuNet finds score 0.50-0.95 (a tenth below 0.75);
#: on 19 faceless scikit-image photos its boxes score up to 0.35 (cat, coffee), but 0.52 on
#: the moon and 0.55-0.69 on the Hubble deep field's galaxies, whose landmarks fit as well as
#: a face's: `--min_score 0.7` keeps none of those, and 91 of the 101. Between the minimum and
#: 0.8 a box must also fit a face (mirror drift), as a weak HOG box must.
DETECTORS = {
    "hog": Detector("hog", 0.0, 0.5, "dlib HOG frontal detector (face-recognition-models' dlib)"),
    "yunet": Detector("yunet", 0.5, 0.8, "YuNet, libfacedetection's CNN (the yuface wheel; fergate[detectors])"),
}
#: YuNet's anchors are laid out for images of up to 960 px a side (the wheel warns above):
#: a larger photo is scaled down to it first
YUNET_MAX_SIDE = 960


def get(name: str) -> Detector:
    """The detector called `name`; a UserError naming the choices otherwise."""
    if name not in DETECTORS:
        raise UserError(f"--detector {name!r}: one of {', '.join(DETECTORS)}")
    return DETECTORS[name]


@dataclass(frozen=True)
class Detection:
    """A detector's box (left, top, right, bottom, inclusive as dlib's rectangles), its score,
    and (YuNet) 5 points: the eye centres (image-left first), the nose tip, the mouth corners."""

    box: tuple[int, int, int, int]
    score: float
    points: np.ndarray | None = None

    @property
    def roll(self) -> float:
        """The face's roll in degrees (the eye line against the horizontal; 0 without points)."""
        if self.points is None:
            return 0.0
        (x0, y0), (x1, y1) = self.points[0], self.points[1]
        return math.degrees(math.atan2(y1 - y0, x1 - x0))


def detect(img: np.ndarray, name: str = "hog", upsample: int = 0, threshold: float = 0.0) -> list[Detection]:
    """The boxes detector `name` finds in an RGB uint8 image scoring at least `threshold`, on
    the image scaled up 2^`upsample` times (small faces)."""
    get(name)
    return _hog(img, upsample, threshold) if name == "hog" else _yunet(img, upsample, threshold)


@functools.cache
def _dlib_hog():
    import dlib

    return dlib.get_frontal_face_detector()


def _hog(img: np.ndarray, upsample: int, threshold: float) -> list[Detection]:
    rects, scores, _ = _dlib_hog().run(img, upsample, threshold)
    return [Detection((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]


@functools.cache
def _yuface():
    try:
        from yuface import yuface  # the compiled module: its Python wrapper only thresholds and warns
    except ImportError as e:
        raise UserError(f"--detector yunet needs the yuface wheel: pip install 'fergate[detectors]' ({e})") from None
    return yuface


def _yunet(img: np.ndarray, upsample: int, threshold: float) -> list[Detection]:
    import cv2

    h, w = img.shape[:2]
    scale = min(1.0, YUNET_MAX_SIDE / max(h, w)) * 2 ** upsample
    bgr = np.ascontiguousarray(img[..., ::-1])
    if scale != 1.0:
        bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    # rows: confidence (percent), x, y, w, h, then the 5 points' x, y (int16)
    rows = np.asarray(_yuface().detect(bgr), np.float64).reshape(-1, 16)
    out = []
    for r in rows[np.argsort(-rows[:, 0], kind="stable")]:
        score = r[0] / 100.0
        if score < threshold:
            continue
        x, y, bw, bh = r[1:5] / scale
        box = (int(round(x)), int(round(y)), int(round(x + bw)) - 1, int(round(y + bh)) - 1)
        out.append(Detection(box, float(score), (r[5:15].reshape(5, 2) / scale).astype(np.float32)))
    return out
