"""iBUG-68 landmark conventions shared by data_prep (writing) and the models (reading)."""

from __future__ import annotations

import numpy as np

LEFT_EYE = slice(36, 42)  #: image-left eye (the subject's right)
RIGHT_EYE = slice(42, 48)
MOUTH = slice(48, 68)
#: Left-right mirror permutation of the 68 points (for horizontal flips).
MIRROR_68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)
#: The 49-point IntraFace subset: drop the 17 jaw points and inner-mouth corners 60, 64.
INTRAFACE_49 = np.array([i for i in range(17, 68) if i not in (60, 64)])

#: LMED-CF's 34 expression-related landmark pairs (paper 004, 4.1), iBUG-68 indices. Paper 004 takes
#: 34 pairs from Liu et al.'s 3D landmark work without listing them; these are fergate's, chosen to
#: cover the action units of the basic expressions on the 68 points and closed under the left-right
#: mirror (a flipped face permutes the distances): brows (AU1, 2, 4), eyes and lids (AU5, 6, 7), nose
#: (AU9), mouth corners and lips (AU12, 15, 20, 23, 25, 26), jaw.
LMED_PAIRS = np.array([
    (17, 36), (19, 37), (21, 39), (22, 42), (24, 44), (26, 45),  # brow above its eye corner / lid (AU1, 2, 4)
    (21, 22), (21, 27), (22, 27),  # brows together, brows to the nose root (AU4)
    (37, 41), (38, 40), (43, 47), (44, 46),  # eye openings (AU5, 7)
    (41, 48), (46, 54),  # lower lid to mouth corner (AU6)
    (31, 39), (35, 42),  # nose wing to inner eye corner (AU9)
    (33, 51), (31, 48), (35, 54),  # nose to upper lip and mouth corners (AU9, 10)
    (48, 54), (60, 64),  # mouth width, outer and inner (AU12, 20, 23)
    (51, 57), (61, 67), (62, 66), (63, 65),  # mouth opening (AU25, 26)
    (36, 48), (45, 54), (30, 48), (30, 54),  # mouth corners to eye corners and nose tip (AU12, 15)
    (8, 48), (8, 54), (8, 57), (8, 33),  # chin to mouth corners, lower lip, nose (AU15, 17, 26)
])


def eye_centres(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lm[..., LEFT_EYE, :].mean(-2), lm[..., RIGHT_EYE, :].mean(-2)


def iod(lm: np.ndarray) -> np.ndarray:
    """Inter-ocular distance: between the means of points 36-41 and 42-47 (batched)."""
    left, right = eye_centres(lm)
    return np.linalg.norm(right - left, axis=-1).astype(np.float32)


def pairwise_distances(lm: np.ndarray, iod_value: float | np.ndarray) -> np.ndarray:
    """D_ij = ||f_i - f_j|| / iod (MoDuL Eq. 1), N_l x N_l (batched over leading axes)."""
    diff = lm[..., :, None, :] - lm[..., None, :, :]
    return np.linalg.norm(diff, axis=-1) / np.asarray(iod_value)[..., None, None]
