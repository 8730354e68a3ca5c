"""The sample set's `au` style (issue 34): expressions with their appearance, on identities
morphed from pairs of the real source faces.

A landmark warp moves the features but cannot make what a real expression shows besides:
teeth and the dark mouth cavity when the lips part, the cheeks raised with crow's feet and
bulging lower lids (AU6), the nose wrinkled and the nasolabial folds deepened (AU9 / AU10,
and the smile's AU12), the furrow between lowered brows (AU4), the eye whites of raised upper
lids (AU5), the forehead wrinkles of raised brows (AU1 / AU2). Each AU here is the geometric
move of `data_prep.sample.ACTION_UNITS` (plus AU10 / AU25, below) and, drawn with OpenCV over
the warped face at the warped landmarks, its appearance change, both scaled by the AU's
intensity (so a clip's onset shows them growing).

Identities: every pair of source faces within the training sources (and within the held-out
ones: no held-out identity shares a source photo with a training one) is morphed: both
neutralised (`sample.Subject`), the second aligned to the first by a similarity transform,
both warped to the shape in between (weight `alpha`) and cross-dissolved; then a skin tone,
a side light and a small yaw (one side of the face narrowed) are drawn per identity.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np

from data_prep import sample as S
from fergate import face as F

#: AUs of each expression in this style: the EMFACS prototypes of `sample.EXPRESSION_AUS`,
#: with the lips parted where the prototype shows teeth (a broad smile AU25, disgust's AU10
#: raising the upper lip off the teeth) and the weights that make each read at 96 px.
STYLE_AUS: dict[str, dict[int, float]] = {
    "neutral": {},
    "happiness": {6: 1.0, 12: 1.3, 25: 1.0},
    "sadness": {1: 1.2, 4: 0.6, 15: 1.3, 17: 1.0},
    "surprise": {1: 1.2, 2: 1.2, 5: 1.2, 26: 1.2, 27: 1.0},
    "fear": {1: 1.2, 2: 0.8, 4: 0.7, 5: 1.3, 20: 1.3, 26: 0.8, 25: 0.8},
    "anger": {4: 1.4, 5: 0.5, 7: 1.0, 23: 1.2, 24: 1.0},
    "disgust": {9: 1.2, 10: 1.0, 15: 0.8, 16: 0.6, 25: 0.6},
}

#: Geometry of the AUs `sample.ACTION_UNITS` lacks ({landmark: (outward, up)}, iod units).
EXTRA_AUS: dict[int, dict[int, tuple[float, float]]] = {
    10: S._sym({50: (0.0, 0.10), 49: (0.02, 0.06), 61: (0.0, 0.10), 62: (0.0, 0.10), 51: (0.0, 0.09)}),
    17: S._sym({57: (0.0, 0.05), 58: (0.0, 0.04), 8: (0.0, 0.04), 7: (0.0, 0.03), 66: (0.0, 0.04),
                67: (0.0, 0.03), 48: (0.0, -0.03)}),  # chin raiser: lower lip and chin up
    24: S._sym({61: (0.0, -0.02), 62: (0.0, -0.02), 67: (0.0, 0.02), 66: (0.0, 0.02), 50: (0.0, -0.03),
                58: (0.0, 0.03), 51: (0.0, -0.03), 57: (0.0, 0.03)}),  # lip presser: lips thinned
    27: S._sym({48: (-0.10, -0.02), 60: (-0.08, -0.02), 49: (-0.04, 0.0), 59: (-0.04, -0.02),
                57: (0.0, -0.10), 66: (0.0, -0.10), 58: (0.0, -0.08), 67: (0.0, -0.08),
                8: (0.0, -0.08)}),  # mouth stretch: the jaw further down, the corners drawn in (an O)
    25: S._sym({66: (0.0, -0.10), 67: (0.0, -0.09), 57: (0.0, -0.08), 58: (0.0, -0.07),
                61: (0.0, 0.02), 62: (0.0, 0.02), 8: (0.0, -0.04)}),  # lips part
}


def geometry(au: int) -> dict[int, tuple[float, float]]:
    return EXTRA_AUS.get(au) or S.ACTION_UNITS[au]


class Frame:
    """A face's own frame at landmarks `lm`: `px(x, y)` maps iod units (x outward on the
    given side, y up) to image pixels."""

    def __init__(self, lm: np.ndarray):
        left, right = F.eye_centres(lm)
        self.ex = (right - left) / np.linalg.norm(right - left)
        self.up = -np.array([-self.ex[1], self.ex[0]])
        self.mid, self.s, self.lm = (left + right) / 2, float(F.iod(lm)), lm

    def px(self, x: float, y: float, at: np.ndarray | None = None, side: float = 1.0) -> np.ndarray:
        base = self.mid if at is None else at
        return base + self.s * (x * side * self.ex + y * self.up)


def _line(mask: np.ndarray, pts: list[np.ndarray], width: float, value: float = 1.0) -> None:
    cv2.polylines(mask, [np.round(np.array(pts) * 4).astype(np.int32)], False, value,
                  max(1, int(round(width))), cv2.LINE_AA, shift=2)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask, (0, 0), max(0.5, sigma))


def appearance(img: np.ndarray, lm: np.ndarray, aus: dict[int, float]) -> np.ndarray:
    """The appearance changes of `aus` ({AU: intensity}) drawn on `img` at its landmarks:
    shadows (folds, wrinkles, furrows), highlights (raised cheeks, bulges), teeth and eye
    whites; each scaled by its AU's intensity."""
    f = Frame(lm)
    s = f.s
    h, w = img.shape[:2]
    dark, light = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    k = {au: float(np.clip(v, 0.0, 1.5)) for au, v in aus.items()}
    sides = ((-1.0, 36, 31, 48), (1.0, 45, 35, 54))
    if k.get(6):  # cheek raiser: crow's feet, lower-lid bulge, raised cheek apples
        m, b = np.zeros_like(dark), np.zeros_like(dark)
        for side, corner, _, _ in sides:
            c = lm[corner]
            for ang in (-30, -5, 20):
                t = np.deg2rad(ang)
                _line(m, [f.px(0.06, 0.03 * np.sin(t), c, side),
                          f.px(0.06 + 0.17 * np.cos(t), 0.17 * np.sin(t), c, side)], 0.02 * s)
            lid = [lm[i] for i in ((36, 41, 40, 39) if side < 0 else (42, 47, 46, 45))]
            _line(m, [p - 0.09 * s * f.up for p in lid], 0.025 * s)
            cv2.ellipse(b, tuple(int(v) for v in f.px(0.5 * side, -0.55)), (int(0.2 * s), int(0.13 * s)), 0, 0, 360,
                        1.0, -1)
        dark += 0.45 * k[6] * _soft(m, 0.012 * s)
        light += 0.22 * k[6] * _soft(b, 0.08 * s)
    fold = max(k.get(12, 0.0), k.get(10, 0.0), 0.7 * k.get(9, 0.0))
    if fold:  # nasolabial folds deepened: a crease from the nose wing to beyond the lip corner
        m, b = np.zeros_like(dark), np.zeros_like(dark)
        for side, _, wing, mouth in sides:
            top, bottom = f.px(0.06, 0.02, lm[wing], side), f.px(0.07, -0.06, lm[mouth], side)
            midp = (top + bottom) / 2 + 0.06 * s * side * f.ex
            _line(m, [top, midp, bottom], 0.025 * s)
            _line(b, [p + 0.06 * s * side * f.ex for p in (top, midp, bottom)], 0.06 * s)
        dark += 0.3 * fold * _soft(m, 0.015 * s)
        light += 0.1 * fold * _soft(b, 0.04 * s)
    if k.get(9):  # nose wrinkler: creases across the nose bridge
        m = np.zeros_like(dark)
        for y in (0.05, 0.0, -0.05):
            a = lm[27] + (lm[28] - lm[27]) * 0.6 + y * s * f.up
            _line(m, [a - 0.1 * s * f.ex, a + 0.02 * s * f.up, a + 0.1 * s * f.ex], 0.02 * s)
        dark += 0.5 * k[9] * _soft(m, 0.01 * s)
    if k.get(4):  # brow lowerer: the vertical furrow between the brows, shadowed upper lids
        m, e = np.zeros_like(dark), np.zeros_like(dark)
        for side in (-1.0, 1.0):
            _line(m, [f.px(0.06, 0.35, None, side), f.px(0.04, 0.14, None, side)], 0.025 * s)
        for side, *_ in sides:
            brow = [lm[i] for i in ((17, 18, 19, 20, 21) if side < 0 else (22, 23, 24, 25, 26))]
            _line(e, [p - 0.06 * s * f.up for p in brow], 0.08 * s)
        dark += 0.5 * k[4] * _soft(m, 0.012 * s) + 0.25 * k[4] * _soft(e, 0.04 * s)
    raise_ = max(k.get(1, 0.0), k.get(2, 0.0))
    if raise_:  # brows raised: horizontal forehead wrinkles (central only for AU1 alone)
        m = np.zeros_like(dark)
        reach = 0.45 if k.get(2) else 0.25
        for y in (0.5, 0.6, 0.7):
            _line(m, [f.px(-reach, y - 0.03), f.px(0.0, y), f.px(reach, y - 0.03)], 0.02 * s)
        dark += 0.35 * raise_ * _soft(m, 0.012 * s)
    if k.get(15) or k.get(17):  # corners drawn down, chin raised: shadows under the corners and on the chin
        m = np.zeros_like(dark)
        for side, _, _, mouth in sides:
            _line(m, [f.px(0.0, 0.0, lm[mouth], side), f.px(0.03, -0.12, lm[mouth], side)], 0.03 * s)
        cv2.ellipse(m, tuple(int(v) for v in (lm[57] - 0.12 * s * f.up)), (int(0.12 * s), int(0.03 * s)), 0, 0, 360,
                    0.6 * k.get(17, 0.0), -1)
        dark += 0.4 * max(k.get(15, 0.0), k.get(17, 0.0)) * _soft(m, 0.02 * s)
    if k.get(23) or k.get(24):  # lips tightened and pressed: a dark seam, paler lip edges
        m = np.zeros_like(dark)
        _line(m, [lm[60], (lm[61] + lm[67]) / 2, (lm[62] + lm[66]) / 2, (lm[63] + lm[65]) / 2, lm[64]], 0.03 * s)
        dark += 0.5 * max(k.get(23, 0.0), k.get(24, 0.0)) * _soft(m, 0.008 * s)
    out = img.astype(np.float32)
    out *= 1.0 - np.clip(dark, 0, 0.85)[..., None]
    out += (255.0 - out) * np.clip(light, 0, 0.5)[..., None]
    if k.get(5):
        out = eye_whites(out, lm, f, k[5])
    # teeth: a broad smile's and disgust's upper row (AU25 with AU12 / AU10), fear's lower row
    # (AU20 stretching the parted lips), only the upper row's edge in a surprised jaw drop
    upper = 0.13 * min(1.0, k.get(25, 0.0)) if not k.get(20) else 0.0
    upper = max(upper, 0.04 if k.get(26) and not k.get(20) else 0.0)
    lower = 0.08 * min(1.0, k.get(20, 0.0))
    return mouth_interior(np.clip(out, 0, 255), lm, f, upper, lower).astype(np.uint8)


TEETH = np.array((232, 226, 212), np.float32)
SCLERA = np.array((236, 236, 232), np.float32)


def eye_whites(img: np.ndarray, lm: np.ndarray, f: Frame, k: float) -> np.ndarray:
    """AU5: the white above and below the iris of a widely opened eye, the iris a dark disc."""
    h, w = img.shape[:2]
    for idx in (range(36, 42), range(42, 48)):
        eye = np.zeros((h, w), np.float32)
        pts = np.round(lm[list(idx)] * 4).astype(np.int32)
        cv2.fillPoly(eye, [pts], 1.0, cv2.LINE_AA, shift=2)
        iris = np.zeros_like(eye)
        c = lm[list(idx)].mean(0)
        cv2.circle(iris, tuple(np.round(c * 4).astype(int)), int(round(0.13 * f.s * 4)), 1.0, -1, cv2.LINE_AA, shift=2)
        white = _soft(eye * (1 - iris), 0.01 * f.s) * 0.75 * min(1.0, k)
        iris = _soft(eye * iris, 0.01 * f.s) * 0.6 * min(1.0, k)
        img = img * (1 - white[..., None]) + SCLERA * white[..., None]
        img = img * (1 - iris[..., None]) + np.array((45, 35, 30), np.float32) * iris[..., None]
    return img


def mouth_interior(img: np.ndarray, lm: np.ndarray, f: Frame, upper: float, lower: float) -> np.ndarray:
    """Parted lips: the dark cavity and the teeth behind them (the upper row `upper` iod
    deep below the upper lip, the lower row `lower` deep above the lower lip), in proportion
    to the opening; a closed mouth is left alone."""
    gap = S.mouth_opening(lm)
    if gap < 0.02:
        return img
    h, w = img.shape[:2]
    inner = np.zeros((h, w), np.float32)
    cv2.fillPoly(inner, [np.round(lm[60:68] * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
    a = float(np.clip(gap / 0.06, 0, 1))
    cavity = _soft(inner, 0.01 * f.s) * 0.92 * a
    img = img * (1 - cavity[..., None]) + np.array(S.MOUTH_CAVITY, np.float32) * cavity[..., None]
    teeth = np.zeros_like(inner)
    top, bottom = [p for p in (lm[i] for i in (60, 61, 62, 63, 64))], [p for p in (lm[i] for i in (64, 65, 66, 67, 60))]
    depth = min(upper, 0.55 * gap) * f.s
    if depth > 0:
        band = np.array(top + [p - depth * f.up for p in top[::-1]])
        cv2.fillPoly(teeth, [np.round(band * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
    low = min(lower, 0.4 * gap) * f.s
    if low > 0:
        band = np.array(bottom + [p + low * f.up for p in bottom[::-1]])
        cv2.fillPoly(teeth, [np.round(band * 4).astype(np.int32)], 0.9, cv2.LINE_AA, shift=2)
    # teeth show between the canines only: fade toward the lip corners
    x = ((np.mgrid[0:h, 0:w][::-1].transpose(1, 2, 0) - (lm[60] + lm[64]) / 2) @ f.ex) / (
        max(1.0, float(np.linalg.norm(lm[64] - lm[60]))) / 2)
    teeth *= inner * np.clip(1.25 - np.abs(x), 0, 1).astype(np.float32)
    gaps = np.zeros_like(inner)  # the seams between the front teeth
    for t in (-0.5, -0.25, 0.0, 0.25, 0.5):
        c = (lm[61] + lm[63]) / 2 + t * (lm[63] - lm[61])
        _line(gaps, [c, c - depth * f.up], 0.012 * f.s)
    shade = TEETH * (1 - 0.25 * _soft(gaps, 0.004 * f.s)[..., None])
    t = _soft(teeth, 0.006 * f.s)[..., None] * min(1.0, 2 * a)
    return img * (1 - t) + shade * t


class Identity:
    """A morphed identity, duck-typed as `sample.Subject` for `sample.render`: an already
    neutral face (its open mouth closed, its teeth painted over, no warp left to undo)."""

    def __init__(self, name: str, a: S.Subject, b: S.Subject, alpha: float, rng: np.random.Generator):
        (ia, la), (ib, lb) = (neutral_source(x) for x in (a, b))
        m, _ = cv2.estimateAffinePartial2D(lb.astype(np.float32), la.astype(np.float32))
        size = ia.shape[1], ia.shape[0]
        ib, lb = cv2.warpAffine(ib, m, size, borderMode=cv2.BORDER_REFLECT), F.apply_affine(m, lb)
        target = ((1 - alpha) * la + alpha * lb).astype(np.float32)
        pa, pb, pt = (np.concatenate([p, forehead(p)]) for p in (la, lb, target))
        img = (1 - alpha) * S.piecewise_affine(ia, pa, pt).astype(np.float32) + \
            alpha * S.piecewise_affine(ib, pb, pt).astype(np.float32)
        img = tone(img, target, rng)
        yaw = rng.uniform(-0.12, 0.12)  # a small head turn: the far half of the face narrowed
        fr = Frame(target)
        rel = (target - fr.mid) @ fr.ex
        shift = np.where(rel * yaw > 0, -np.abs(yaw) * rel, 0.0)[:, None] * fr.ex
        turned = (target + shift).astype(np.float32)
        self.image = S.piecewise_affine(np.clip(img, 0, 255).astype(np.uint8),
                                        np.concatenate([target, forehead(target)]),
                                        np.concatenate([turned, forehead(turned)]))
        self.name, self.path = name, a.path
        self.landmarks = self.warp_source = turned
        self.neutralise = np.zeros_like(turned)
        self.teeth = None


#: A source's smile (`sample.smile` of its photo, iod units) at which its folds and cheek
#: bulges are fully smoothed away; neutral photos measure up to 0.05.
RELAX_SMILE = 0.1


def smile_left(subject: S.Subject) -> float:
    """How much of a smile the neutralised source still shows in its skin, 0-1: the source
    photo's smile beyond a neutral one's (`sample.NEUTRAL_SMILE`), of RELAX_SMILE."""
    return float(np.clip((S.smile(subject.landmarks) - S.NEUTRAL_SMILE) / (RELAX_SMILE - S.NEUTRAL_SMILE), 0, 1))


def neutral_source(subject: S.Subject) -> tuple[np.ndarray, np.ndarray]:
    """(image, landmarks) of a source face at neutral: `sample.Subject`'s neutralisation plus,
    for a smiling source, the rest of an inverse AU6 (the lower lids down off the eyes, which
    the smile's squint had narrowed) and its skin `relaxed`."""
    k = smile_left(subject)
    lm = subject.landmarks + subject.neutralise
    d = S.face_frame_displacement(lm, [(UNSQUINT, k)])
    return relaxed(S.render(subject, d), lm + d, k), lm + d


#: The lower lids and cheeks come down (iod units) on a neutralised smiling source beyond
#: `sample.neutralising_displacement`'s inverse AU6.
UNSQUINT = S._sym({40: (0.0, -0.04), 41: (0.0, -0.04), 39: (0.0, -0.01), 36: (0.0, -0.01), 1: (0.0, -0.03),
                   2: (0.0, -0.03), 3: (0.0, -0.02)})


def relaxed(img: np.ndarray, lm: np.ndarray, k: float) -> np.ndarray:
    """The inverse of a smile's appearance (AU6 + AU12), which `sample.neutralising_displacement`
    cannot undo by moving landmarks: the nasolabial folds, the creases running up from the lip
    corners, the bulging cheek apples and crow's feet are smoothed (a blur of 0.12 iod over
    those regions, lips and eyes kept), by `k` (0-1)."""
    if k <= 0:
        return img
    f = Frame(lm)
    s = f.s
    h, w = img.shape[:2]
    m = np.zeros((h, w), np.float32)
    for side in (-1.0, 1.0):
        cv2.ellipse(m, tuple(int(v) for v in f.px(0.5 * side, -0.6)), (int(0.3 * s), int(0.3 * s)), 0, 0, 360,
                    1.0, -1)
        corner, wing, eye = (lm[54], lm[35], lm[45]) if side > 0 else (lm[48], lm[31], lm[36])
        _line(m, [f.px(0.05, 0.0, wing, side), f.px(0.12, -0.05, corner, side), f.px(0.05, -0.25, corner, side)],
              0.22 * s)
        _line(m, [f.px(0.05, 0.0, eye, side), f.px(0.3, -0.05, eye, side)], 0.2 * s)
    keep = np.zeros_like(m)
    for idx in (range(48, 60), range(36, 42), range(42, 48)):
        cv2.fillPoly(keep, [np.round(lm[list(idx)] * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
    keep = cv2.dilate(keep, np.ones((3, 3), np.uint8), iterations=max(1, int(0.03 * s)))
    m = _soft(m * (1 - keep), 0.06 * s)[..., None] * min(1.0, k)
    smooth = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.12 * s)
    return (img * (1 - m) + smooth * m).astype(np.uint8)


def forehead(lm: np.ndarray) -> np.ndarray:
    """Points above the brows (0.45 iod) that carry the forehead along in a morph."""
    f = Frame(lm)
    return np.array([lm[i] + 0.45 * f.s * f.up for i in (17, 19, 21, 22, 24, 26)], np.float32)


def tone(img: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A skin tone (lightness and warmth in CIELAB) and a side light drawn per identity."""
    lab = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] *= rng.uniform(0.8, 1.1)
    lab[..., 1] += rng.uniform(-4, 6)
    lab[..., 2] += rng.uniform(-6, 8)
    out = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB).astype(np.float32)
    f = Frame(lm)
    h, w = img.shape[:2]
    x = ((np.mgrid[0:h, 0:w][::-1].transpose(1, 2, 0) - f.mid) @ f.ex) / (1.5 * f.s)
    return out * (1 + rng.uniform(-0.18, 0.18) * np.clip(x, -1, 1))[..., None]


def identities(sources: list[tuple[str, str, int]], test: set[str], variants: int = 2) -> list[tuple[str, tuple, bool]]:
    """(name, (source a, source b, alpha, seed), held out) of the morphed identities: every
    pair within the training sources and within the held-out ones, `variants` times each
    (alphas spread over 0.3-0.7, tone / light / yaw drawn from the seed)."""
    out = []
    for held in (False, True):
        group = [s for s in sources if (s[0] in test) == held]
        for (na, *pa), (nb, *pb) in itertools.combinations(group, 2):
            for v in range(variants):
                alpha = 0.3 + 0.4 * (v + 0.5) / variants
                seed = len(out)
                out.append((f"morph_{na}+{nb}_{v}", ((na, *pa), (nb, *pb), alpha, seed), held))
    return out


def style_aus(expression: str, intensity: float, rng: np.random.Generator) -> dict[int, float]:
    """AU intensities of an expression in this style: STYLE_AUS x intensity, +-15% per AU."""
    return {au: intensity * w * rng.uniform(0.85, 1.15) for au, w in STYLE_AUS[expression].items()}


def render_au(identity: Identity, aus: dict[int, float], jitter: np.ndarray | float = 0.0) -> np.ndarray:
    """The identity with the AUs' geometry (`sample.render`: warp, cavity) and appearance."""
    lm = identity.landmarks
    d = S.face_frame_displacement(lm, [(geometry(au), k) for au, k in aus.items()]) + jitter
    img = S.render(identity, d) if aus or np.any(jitter) else identity.image
    return appearance(img, lm + d, aus)


def synthesize_au(identity: Identity, expression: str, intensity: float, rng: np.random.Generator) -> np.ndarray:
    """One image: the expression at `intensity`, with identity-shape jitter and photometric
    augmentation (`sample.photometric`)."""
    aus = style_aus(expression, intensity, rng)
    return S.photometric(render_au(identity, aus, S.shape_jitter(identity.landmarks, rng, 0.5)), rng, 6.0)


def clip_au(identity: Identity, expression: str, apex: float, frames: int, rng: np.random.Generator) -> list:
    """A neutral -> apex clip: every AU's geometry and appearance eases in together."""
    aus = style_aus(expression, apex, rng)
    jitter = S.shape_jitter(identity.landmarks, rng, 0.5)
    return S.eased_clip(lambda a: render_au(identity, a, jitter), aus, frames, rng, 6.0)
