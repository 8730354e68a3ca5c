"""The synthetic expressions move the re-detected landmarks the way their action units say."""

import numpy as np

from data_prep import face as F
from data_prep import sample as S


def test_action_units_move_landmarks_in_the_face_frame(photos):
    sub = S.Subject("astronaut", next(p for n, p, _ in S.sample_photos() if n == "astronaut"))
    lm = sub.landmarks
    up = -1  # image y grows downwards
    d12 = S.au_displacement(lm, {12: 1.0})  # lip corners pulled up and out
    assert d12[48, 1] * up > 0 and d12[54, 1] * up > 0 and d12[48, 0] < 0 < d12[54, 0]
    d26 = S.au_displacement(lm, {26: 1.0})  # jaw drop
    assert d26[57, 1] > 0 and d26[8, 1] > 0 and np.allclose(d26[:5], 0)
    d1 = S.au_displacement(lm, {1: 1.0})
    assert d1[21, 1] < 0 and d1[22, 1] < 0  # inner brows raised, both sides
    np.testing.assert_allclose(np.linalg.norm(S.au_displacement(lm, {1: 2.0})), 2 * np.linalg.norm(d1))


def test_redetected_landmarks_follow_the_expression():
    sub = S.Subject("astronaut", next(p for n, p, _ in S.sample_photos() if n == "astronaut"))
    rng = np.random.default_rng(0)

    def measure(expr):
        rec = F.process_face(S.synthesize(sub, expr, 1.2, rng, augment=False), F.FaceOptions(identity=False))
        lm = rec["landmarks"] / rec["iod"]
        return {"mouth_open": lm[66, 1] - lm[62, 1], "mouth_width": lm[54, 0] - lm[48, 0],
                "brow": lm[[19, 24], 1].mean() - lm[[37, 44], 1].mean()}

    neutral, happy, surprise = measure("neutral"), measure("happiness"), measure("surprise")
    assert surprise["mouth_open"] > neutral["mouth_open"] + 0.05
    assert surprise["brow"] < neutral["brow"] - 0.02  # brows further above the eyes
    assert happy["mouth_width"] > neutral["mouth_width"] + 0.05
