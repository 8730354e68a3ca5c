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


#: the astronaut photo's face and the NASA mission patch on her shoulder, as dlib's boxes
#: (left, top, right, bottom) in its 512 x 512 pixels
ASTRONAUT_FACE, MISSION_PATCH = (175, 76, 265, 166), (123, 330, 227, 434)


def _iou(a, b) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _box(c: F.Candidate) -> tuple:
    return c.rect.left(), c.rect.top(), c.rect.right(), c.rect.bottom()


@pytest.mark.parametrize("scale, mirrored, upsample", [(1.2, True, 0), (1.0, False, 1)])
def test_the_astronauts_face_is_chosen_not_her_mission_patch(photos, scale, mirrored, upsample):
    """Copies of the photo as users have them (resized, mirrored) where the detector's box on
    the patch is as large as the face's or larger: the patch is rejected as a false positive,
    the face chosen and its detector score recorded."""
    import cv2

    img = cv2.resize(photos["astronaut"], None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    w = img.shape[1]
    face, patch = ([v * scale for v in b] for b in (ASTRONAUT_FACE, MISSION_PATCH))
    if mirrored:
        img = np.ascontiguousarray(img[:, ::-1])
        face, patch = ([w - 1 - b[2], b[1], w - 1 - b[0], b[3]] for b in (face, patch))
    found = F.candidates(img, upsample)
    on_face = [c for c in found if _iou(_box(c), face) > 0.5]
    on_patch = [c for c in found if _iou(_box(c), patch) > 0.3]
    assert len(on_face) == 1 and on_patch and max(c.area for c in on_patch) >= 0.95 * on_face[0].area
    assert all(c.poor for c in on_patch) and not on_face[0].poor
    rec = F.process_face(img, F.FaceOptions(upsample=upsample, patches=False, identity=False))
    assert _iou(rec["box"], face) > 0.5 and rec["detector_score"] == on_face[0].score >= F.STRONG_SCORE


def test_the_sample_sets_astronaut_images_show_her_face():
    """The images the sample set synthesises from the photo (expressions, rotation, scale,
    shift, lighting) give the face's box: the middle of the crop `Subject` cuts around it."""
    sub = S.Subject("astronaut", next(p for n, p, _ in S.sample_photos() if n == "astronaut"))
    rng = np.random.default_rng(0)
    for expression in ("neutral", "surprise", "happiness"):
        rec = F.process_face(S.synthesize(sub, expression, 1.0, rng), F.FaceOptions(patches=False, identity=False))
        assert _iou(rec["box"], (72, 72, 184, 184)) > 0.5 and rec["detector_score"] > 0, (expression, rec["box"])


def test_a_photo_whose_only_detection_is_a_false_positive_has_no_face(photos):
    """Below the astronaut's face, the detector's one box is the mission patch: a weak score
    and landmarks that do not fit a face. It is skipped as no_face (counted so in a
    manifest), saying what was rejected; a minimum score above a face's skips it too."""
    below = np.ascontiguousarray(photos["astronaut"][250:, :350])
    (c,) = F.candidates(below)
    assert _iou(_box(c), [MISSION_PATCH[0], MISSION_PATCH[1] - 250, MISSION_PATCH[2], MISSION_PATCH[3] - 250]) > 0.5
    assert c.score < F.STRONG_SCORE and c.drift > F.MAX_MIRROR_DRIFT and c.poor
    with pytest.raises(F.SkipItem, match="1 rejected as no face") as e:
        F.process_face(below)
    assert e.value.reason == "no_face"
    score = F.best_face(photos["astronaut"]).score
    with pytest.raises(F.SkipItem, match=f"1 box\\(es\\) scoring below the minimum {score + 0.1:g}"):
        F.best_face(photos["astronaut"], min_score=score + 0.1)


@pytest.mark.parametrize("case", ["rolled 45", "rolled -60", "small 32px"])
def test_yunet_finds_the_rolled_or_small_face_hog_misses(photos, case):
    """The astronaut's face rolled by 45 / -60 degrees, or shrunk to a 32 px box: HOG finds
    no face, YuNet finds it, and the 68 landmarks fitted after its box (the face turned
    upright for the shape predictor) lie within 0.1 iod of those HOG's box gave in the photo,
    moved alike; its confidence is the record's detector_score."""
    from data_prep import detect_bench as B

    img = photos["astronaut"]
    lm = F.best_face(img).landmarks
    kind, arg = case.split()
    moved_img, moved = B.rolled(img, lm, float(arg)) if kind == "rolled" else B.small(img, lm, int(arg[:-2]))
    with pytest.raises(F.SkipItem, match="no_face"):
        F.best_face(moved_img)
    c = F.best_face(moved_img, 0, 0.5, "yunet")
    err = np.linalg.norm(c.landmarks - moved, axis=1).mean() / F.iod(moved)
    assert err < 0.1 and 0.5 <= c.score <= 1, (err, c.score)
    rec = F.process_face(moved_img, F.FaceOptions(detector="yunet", min_score=0.5, patches=False, identity=False))
    assert rec["detector_score"] == c.score and rec["box_source"] == F.DETECTED
    # aligned upright: the eyes level in the crop, as in any other record
    assert abs(F.roll_of(rec["landmarks"])) < 5


def test_yunet_keeps_no_face_on_faceless_photos():
    """scikit-image's cat and coffee, where YuNet's raw boxes score 0.25-0.35: no face at its
    default minimum confidence (0.5), skipped as no_face saying so."""
    import skimage.data

    from fergate import detectors

    for name in ("chelsea", "coffee"):
        img = F.to_rgb8(getattr(skimage.data, name)())
        assert detectors.detect(img, "yunet", 0, 0.2)  # boxes there are
        with pytest.raises(F.SkipItem, match="scoring below the minimum 0.5"):
            F.faces(img, 0, detectors.DETECTORS["yunet"].default_min, "yunet")


def test_an_unknown_detector_is_a_one_line_error(photos):
    from fergate.errors import UserError

    with pytest.raises(UserError, match="--detector 'cnn': one of hog, yunet"):
        F.faces(photos["astronaut"], 0, 0.0, "cnn")
