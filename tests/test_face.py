"""The face pipeline on the real photos that installed packages ship."""

import numpy as np
import pytest

from data_prep import sample as S
from fergate import face as F
from fergate.data import landmarks as L


@pytest.fixture(scope="module")
def faces(photos):
    out = {}
    for name, img in photos.items():
        rect = F.detect(img)
        out[name] = (img, rect, F.landmarks(img, rect))
    return out


def test_a_face_is_found_in_each_photo(faces):
    assert {"astronaut", "grace_hopper"} <= set(faces)
    for img, rect, _ in faces.values():
        assert rect.width() > 50 and 0 <= rect.left() < rect.right() <= img.shape[1]


def test_landmarks_inside_the_box_in_anatomical_order(faces):
    for _img, rect, lm in faces.values():
        assert lm.shape == (68, 2) and lm.dtype == np.float32
        inner = lm[17:]  # the jaw line may leave the HOG box; brows, eyes, nose, mouth don't
        pad = 0.15 * rect.width()
        assert (inner[:, 0] > rect.left() - pad).all() and (inner[:, 0] < rect.right() + pad).all()
        assert (inner[:, 1] > rect.top() - pad).all() and (inner[:, 1] < rect.bottom() + pad).all()
        left_eye, right_eye = L.eye_centres(lm)
        nose_tip, mouth = lm[30], lm[L.MOUTH].mean(0)
        assert left_eye[0] < nose_tip[0] < right_eye[0]  # image-left eye is left of the nose
        assert max(left_eye[1], right_eye[1]) < nose_tip[1] < mouth[1]  # eyes above nose above mouth
        assert lm[17:22, 1].mean() < left_eye[1]  # brows above eyes
        assert lm[48, 0] < lm[54, 0] and lm[0, 0] < lm[16, 0]  # left/right consistent


def test_alignment_puts_eyes_and_mouth_on_the_template(faces):
    for _img, _, lm in faces.values():
        m = F.alignment(lm, 96)
        a = F.apply_affine(m, lm)
        le, re = L.eye_centres(a)
        assert abs(le[1] - re[1]) < 0.05 * L.iod(a)  # eye line horizontal (within 3 degrees)
        np.testing.assert_allclose((le + re) / 2, F.TEMPLATE[:2].mean(0) * 96, atol=4.0)
        assert 0.28 * 96 < L.iod(a) < 0.45 * 96
        assert (a > 0).all() and (a < 96).all()  # the whole face is in the crop, jaw and chin included
        # face_scale 0.6: the same face at 0.6 of the size about the crop's centre, the scene around it
        b = F.apply_affine(F.alignment(lm, (125, 160), scale=0.6), lm)
        full = F.apply_affine(F.alignment(lm, (125, 160)), lm)
        centre = np.float32([62.5, 80])
        np.testing.assert_allclose(b - centre, 0.6 * (full - centre), atol=1e-3)
    with pytest.raises(ValueError, match="face scale"):
        F.alignment(lm, 96, scale=0)


def test_record_fields_and_patch_stack(faces):
    img, rect, _ = faces["astronaut"]
    rec = F.process_face(img, F.FaceOptions(face_size=80, patch_size=24))
    assert rec["face"].shape == (80, 80, 3) and rec["patches"].shape == (68, 24, 24)
    assert rec["identity"].shape == (128,) and np.isfinite(rec["identity"]).all() and rec["identity"].std() > 0.01
    # a patch is centred on its landmark: the patch of the nose tip matches the same crop of
    # the aligned face, resampled
    import cv2

    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    m = F.alignment(F.landmarks(img, rect), 80)
    big = F.patch_stack(grey, m * 1.0, rec["landmarks"], rec["iod"], 24, 0.3)
    np.testing.assert_array_equal(big, rec["patches"])
    assert big[30].std() > 5  # real texture, not border fill


def test_pairwise_distances_match_the_formula():
    rng = np.random.default_rng(0)
    lm = rng.normal(size=(3, 68, 2)).astype(np.float32)
    iod = L.iod(lm)
    d = L.pairwise_distances(lm, iod)
    i, j = 5, 40
    np.testing.assert_allclose(d[1, i, j], np.linalg.norm(lm[1, i] - lm[1, j]) / iod[1], rtol=1e-5)
    np.testing.assert_allclose(d, np.swapaxes(d, 1, 2))


def test_same_person_embeddings_are_closer(faces):
    rng = np.random.default_rng(1)
    emb = {}
    for name, (img, rect, lm) in faces.items():
        emb[name] = F.identity_embedding(img, rect, lm)
        sub = S.Subject(name, next(p for n, p, _ in S.sample_photos() if n == name))
        other = S.synthesize(sub, "surprise", 1.0, rng)
        emb[name + "/surprise"] = F.process_face(other)["identity"]
    same = [np.linalg.norm(emb[n] - emb[n + "/surprise"]) for n in faces]
    diff = np.linalg.norm(emb["astronaut"] - emb["grace_hopper"])
    assert max(same) < 0.6 < diff  # dlib's same-person threshold


@pytest.mark.parametrize("kind", ["grey", "rgba", "16bit", "float"])
def test_image_kinds_convert_to_rgb8(photos, kind):
    img = photos["astronaut"]
    conv = {"grey": img[..., 0], "rgba": np.dstack([img, np.full(img.shape[:2], 255, np.uint8)]),
            "16bit": img.astype(np.uint16) * 257, "float": img / 255.0}[kind]
    out = F.to_rgb8(conv)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - (np.repeat(img[..., :1], 3, -1) if kind == "grey" else img)).max() <= 1
