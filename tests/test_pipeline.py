"""grain pipelines: balancing, determinism and restore, per-process sharding, transforms."""

from collections import Counter

import numpy as np
import pytest

from fergate.data import augment
from fergate.data import pipeline as P
from fergate.data.landmarks import MIRROR_68
from fergate.errors import UserError

FIELDS = ("face", "landmarks", "iod", "patches")


def test_balanced_epochs_downsample_majority_and_oversample_minority():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    s = P.EpochSampler(labels, seed=3, balance=True)
    assert s.epoch_len == 99  # 3 classes x round(100 / 3)
    for e in range(3):
        idx = np.array([s[e * s.epoch_len + k][0] for k in range(s.epoch_len)])
        assert Counter(labels[idx].tolist()) == {0: 33, 1: 33, 2: 33}
        assert len(set(idx[labels[idx] == 0])) == 33  # majority: without replacement
        assert set(idx[labels[idx] == 2]) == set(range(90, 100))  # minority: all, then repeats
    e0 = [s[k][0] for k in range(s.epoch_len)]
    e1 = [s[s.epoch_len + k][0] for k in range(s.epoch_len)]
    assert e0 != e1  # a new draw every epoch


def test_eval_pass_is_ordered_complete_and_padded(sample_data):
    n = P.num_records(sample_data, "test")
    batches = list(P.make_dataset(sample_data, "test", ("landmarks",), 8, train=False))
    mask = np.concatenate([b["mask"] for b in batches])
    assert len(mask) % 8 == 0 and mask.sum() == n and (mask[:n] == 1).all()


def test_restored_iterator_sees_the_same_batches(sample_data):
    kw = dict(balance=True, transforms=augment.parse("flip|brightness_contrast"), seed=5)
    it = iter(P.make_dataset(sample_data, "train", FIELDS, 8, **kw))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]  # crosses an epoch boundary (35 records)
    it2 = iter(P.make_dataset(sample_data, "train", FIELDS, 8, **kw))
    it2.set_state(state)
    for a in expected:
        b = next(it2)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_processes_read_disjoint_parts_of_one_global_stream(sample_data):
    def labels_and_lm(p, n):
        it = iter(P.make_dataset(sample_data, "train", ("landmarks",), 4, seed=1, process_index=p, process_count=n))
        return [next(it)["landmarks"] for _ in range(2)]

    whole = np.concatenate(labels_and_lm(0, 1))
    parts = [np.concatenate(labels_and_lm(p, 2)) for p in range(2)]
    # element k of the global stream goes to process k % 2, in order
    np.testing.assert_array_equal(parts[0][:4], whole[0::2])
    np.testing.assert_array_equal(parts[1][:4], whole[1::2])


def test_flip_mirrors_landmarks_and_reorders_patches(sample_data):
    rec = next(iter(P.make_dataset(sample_data, "train", FIELDS, 1, train=False)))
    rec = {k: v[0] for k, v in rec.items()}
    flip = augment.Flip(p=1.0)
    f = flip.random_map(rec, np.random.default_rng(0))
    w = rec["face"].shape[1]
    np.testing.assert_allclose(f["landmarks"][36], [w - 1 - rec["landmarks"][45, 0], rec["landmarks"][45, 1]])
    np.testing.assert_array_equal(f["patches"][48], rec["patches"][54][:, ::-1])
    assert (np.sort(MIRROR_68) == np.arange(68)).all() and (MIRROR_68[MIRROR_68] == np.arange(68)).all()
    ff = flip.random_map(f, np.random.default_rng(0))
    for k in FIELDS:
        np.testing.assert_allclose(ff[k], rec[k], atol=1e-4)


def test_resize_face_keeps_landmarks_on_the_face(sample_data):
    rec = next(iter(P.make_dataset(sample_data, "train", FIELDS, 1, train=False)))
    rec = {k: v[0] for k, v in rec.items()}
    out = P.ResizeFace((64, 64), grey=True).map(rec)
    assert out["face"].shape == (64, 64, 1)
    np.testing.assert_allclose(out["landmarks"], rec["landmarks"] * 64 / 96, rtol=1e-6)
    np.testing.assert_allclose(out["iod"], rec["iod"] * 64 / 96, rtol=1e-6)


def test_missing_and_foreign_data_dirs_are_clear_errors(tmp_path, sample_data):
    with pytest.raises(UserError, match="data directory not found"):
        P.split_files(str(tmp_path / "nope"), "train")
    with pytest.raises(UserError, match="manifest.json missing"):
        P.split_files(str(tmp_path), "train")
    (tmp_path / "manifest.json").write_text('{"schema_version": 0, "complete": true, "splits": {}}')
    with pytest.raises(UserError, match="schema version 0.*re-run"):
        P.split_files(str(tmp_path), "train")
    with pytest.raises(UserError, match="split 'val' not in"):
        P.split_files(sample_data, "val")


def test_balanced_batches_of_resized_grey_faces(sample_data):
    """MoDuL's stream: full batches of 64 x 64 grey faces, every class drawn about equally
    (its rate is `fergate bench --pipeline`'s to measure, not a test's)."""
    ds = P.make_dataset(sample_data, "train", FIELDS, 16, balance=True, transforms=[P.ResizeFace((64, 64), True)])
    it = iter(ds)
    batches = [next(it) for _ in range(20)]
    assert all(b["face"].shape == (16, 64, 64, 1) and b["face"].dtype == np.uint8 for b in batches)
    counts = np.bincount(np.concatenate([b["label"] for b in batches]), minlength=7)
    assert counts.min() > 0.5 * counts.mean(), counts


def test_multiprocess_workers_deliver_the_same_batches(sample_data):
    ops = augment.parse("flip|brightness_contrast")
    kw = dict(balance=True, seed=3, transforms=[*ops, P.ResizeFace((64, 64), True)])
    one = iter(P.make_dataset(sample_data, "train", FIELDS, 8, **kw))
    two = iter(P.make_dataset(sample_data, "train", FIELDS, 8, workers=2, **kw))
    for _ in range(6):
        a, b = next(one), next(two)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert two.get_state()  # checkpointable like the single-process iterator
