"""The synthetic expressions move the re-detected landmarks the way their action units say."""

import cv2
import numpy as np
import pytest

from data_prep import sample as S
from fergate import face as F


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


def _subject(name):
    return S.Subject(name, next(p for n, p, _ in S.sample_photos() if n == name))


def _geometry(lm):
    """Landmark geometry in the face frame, in iod units (y grows downwards)."""
    xy = S.face_coords(lm)
    x, y = xy[:, 0], xy[:, 1]
    return {"mouth_width": x[54] - x[48], "smile": S.smile(lm), "mouth_open": S.mouth_opening(lm),
            "brow_height": y[[37, 38, 43, 44]].mean() - y[17:27].mean(),  # brows above the upper lids
            "brow_gap": x[22] - x[21], "upper_lip": -y[[50, 51, 52, 61, 62, 63]].mean()}  # toward the eyes


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_each_expression_moves_redetected_landmarks_as_its_action_units_say(name):
    sub = _subject(name)

    def measure(expr):
        img = S.synthesize(sub, expr, 0.0 if expr == "neutral" else 1.0, np.random.default_rng(0), augment=False)
        return _geometry(F.process_face(img, F.FaceOptions(patches=False, identity=False))["landmarks"])

    neutral = measure("neutral")
    d = {e: {k: v - neutral[k] for k, v in measure(e).items()} for e in S.CLASSES[1:]}
    happy, sad, surprise, angry, fear = (d[e] for e in ("happiness", "sadness", "surprise", "anger", "fear"))
    assert happy["mouth_width"] > 0.05 and happy["smile"] > 0.03  # AU12: corners out and up
    assert sad["smile"] < -0.015 and sad["brow_gap"] < -0.05  # AU15 corners down; AU1+4
    assert surprise["brow_height"] > 0.05 and surprise["mouth_open"] > 0.1  # AU1+2, AU26
    assert angry["brow_height"] < -0.05 and angry["brow_gap"] < -0.02  # AU4: brows down and together
    assert fear["brow_height"] > 0.03 and fear["mouth_width"] > 0.03 and fear["mouth_open"] > 0.1  # AU1+2, 20, 26
    assert d["disgust"]["upper_lip"] > 0.015  # AU9 raises the upper lip (dlib reads a third of it)


def test_a_smiling_source_is_neutralised_before_the_expression():
    sub = _subject("astronaut")  # smiles with her teeth showing
    assert S.smile(sub.landmarks) > 0.1 and S.mouth_opening(sub.landmarks) > S.OPEN_MOUTH
    planned = sub.landmarks + sub.neutralise
    assert S.smile(planned) <= S.NEUTRAL_SMILE + 1e-6 and S.mouth_opening(planned) < 0.02
    opts = F.FaceOptions(patches=False, identity=False)
    for seed in range(3):  # as dlib re-detects it, augmented
        lm = F.process_face(S.synthesize(sub, "neutral", 0.0, np.random.default_rng(seed)), opts)["landmarks"]
        assert S.smile(lm) < 0.08 and S.mouth_opening(lm) < 0.05  # source: 0.15 and 0.15


def test_an_opened_mouth_shows_a_dark_cavity():
    sub = _subject("grace_hopper")  # a closed source mouth: the warp alone would stretch lip skin
    img = S.synthesize(sub, "surprise", 1.0, np.random.default_rng(0), augment=False)
    lm = F.landmarks(img, F.detect(img))
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    inside, lips = np.zeros(grey.shape, np.uint8), np.zeros(grey.shape, np.uint8)
    cv2.fillPoly(inside, [np.round(lm[60:68]).astype(np.int32)], 1)
    cv2.fillPoly(lips, [np.round(lm[48:60]).astype(np.int32)], 1)
    assert S.mouth_opening(lm) > 0.1
    assert grey[inside > 0].mean() < 0.6 * grey[(lips > 0) & (inside == 0)].mean()
