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
