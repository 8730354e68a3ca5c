"""The sample set's au style (data_prep.sample_au): identities morphed within the training
and within the held-out source faces, and the appearance each action unit adds."""

import os

import cv2
import numpy as np
import pytest

from data_prep import sample as S
from data_prep import sample_au as U
from data_prep.readers.sample import SampleOptions
from fergate.errors import UserError


def test_identities_are_pairs_within_the_training_and_within_the_held_out_sources():
    sources = [(f"s{i}", f"/p/s{i}.jpg", 0) for i in range(9)]
    test = {"s1", "s4", "s7"}
    ids = U.identities(sources, test, variants=2)
    assert len(ids) == 2 * (15 + 3)  # C(6, 2) training pairs, C(3, 2) held-out pairs: 36 subjects
    for name, (a, b, alpha, _), held in ids:
        assert (a[0] in test) == held == (b[0] in test) and a[0] != b[0]  # no source shared across the split
        assert 0.3 < alpha < 0.7 and name.startswith(f"morph_{a[0]}+{b[0]}")
    assert len({name for name, _, _ in ids}) == len(ids)


def test_bad_style_options_fail_as_the_options_are_built():
    with pytest.raises(UserError, match="--style"):
        SampleOptions(style="cartoon")
    with pytest.raises(UserError, match="--style au"):
        SampleOptions(style="au", compound=True)


@pytest.fixture(scope="module")
def grace():
    import matplotlib  # ships the photo: no scan of every sample source

    return S.Subject("grace_hopper", os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))


def test_no_action_unit_leaves_the_face_as_it_is(grace):
    lm = grace.landmarks + grace.neutralise
    np.testing.assert_array_equal(U.appearance(grace.image, lm, {}), grace.image)


def _mean(img, pts):
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[mask > 0].astype(np.float32).mean()


def test_parted_lips_show_teeth_under_the_upper_lip_and_a_dark_cavity(grace):
    lm = (grace.landmarks + grace.neutralise).astype(np.float32)
    f = U.Frame(lm)
    parted = lm + S.face_frame_displacement(lm, [(U.geometry(26), 1.0)])
    img = S.render(grace, parted - lm - grace.neutralise)
    teeth_band = [parted[61], parted[63], parted[63] - 0.04 * f.s * f.up, parted[61] - 0.04 * f.s * f.up]
    low = [parted[67] + 0.03 * f.s * f.up, parted[65] + 0.03 * f.s * f.up, parted[65] + 0.07 * f.s * f.up,
           parted[67] + 0.07 * f.s * f.up]
    with_teeth = U.mouth_interior(img.astype(np.float32), parted, U.Frame(parted), 0.13, 0.0).astype(np.uint8)
    without = U.mouth_interior(img.astype(np.float32), parted, U.Frame(parted), 0.0, 0.0).astype(np.uint8)
    assert _mean(with_teeth, teeth_band) > 170 and _mean(without, teeth_band) < 80  # TEETH against the cavity
    assert _mean(with_teeth, low) < 80  # below the upper row: still the dark cavity
    closed = U.mouth_interior(grace.image.astype(np.float32), lm, f, 0.13, 0.08)
    np.testing.assert_array_equal(closed, grace.image)  # a closed mouth has no interior to show


def test_cheek_raiser_and_brow_lowerer_shade_where_facs_says(grace):
    lm = (grace.landmarks + grace.neutralise).astype(np.float32)
    f = U.Frame(lm)
    crow = [f.px(0.1, 0.05, lm[36], -1), f.px(0.2, 0.05, lm[36], -1), f.px(0.2, -0.05, lm[36], -1),
            f.px(0.1, -0.05, lm[36], -1)]  # beside the outer corner of the image-left eye
    glabella = [f.px(-0.08, 0.3), f.px(0.08, 0.3), f.px(0.08, 0.18), f.px(-0.08, 0.18)]
    base = grace.image
    au6, au4 = U.appearance(base, lm, {6: 1.0}), U.appearance(base, lm, {4: 1.0})
    assert _mean(au6, crow) < _mean(base, crow) - 5  # crow's feet
    assert _mean(au4, glabella) < _mean(base, glabella) - 5  # the furrow between the brows
    assert abs(_mean(au6, glabella) - _mean(base, glabella)) < 1  # each where its AU acts only
    weak = U.appearance(base, lm, {6: 0.3})
    assert _mean(au6, crow) < _mean(weak, crow) < _mean(base, crow)  # scaled by intensity


def test_relaxing_a_smile_smooths_the_cheeks_and_leaves_lips_and_eyes(grace):
    img, lm = U.neutral_source(grace)
    assert U.relaxed(img, lm, 0.0) is img  # a neutral source keeps its skin
    out = U.relaxed(img, lm, 1.0).astype(np.float32)
    f = U.Frame(lm)
    cheek = tuple(int(v) for v in f.px(0.5, -0.6))
    r = int(0.12 * f.s)

    def detail(a):  # high-frequency energy (creases) in a patch of the cheek
        grey = cv2.cvtColor(a.astype(np.uint8), cv2.COLOR_RGB2GRAY)
        patch = grey[cheek[1] - r:cheek[1] + r, cheek[0] - r:cheek[0] + r]
        return float(np.abs(cv2.Laplacian(patch.astype(np.float32), cv2.CV_32F)).mean())

    assert detail(out) < 0.5 * detail(img)
    for i in (51, 57, 37, 44):  # the lips and the eyes are kept
        x, y = np.round(lm[i]).astype(int)
        assert np.allclose(out[y, x], img[y, x], atol=2)
