"""The micro-emotion network: its layers against their formulas, the squared hinge, the
compound label map, the subject-relative landmark displacement, the iCV-MEFED reader on a
fixture of real photos, and the variants trained through the command line."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import prepared

from fergate import config as C
from fergate import models
from fergate.data import compound, pipeline, schema, shards
from fergate.models import micro
from fergate.train.data import resolve
from fergate.train.optimizer import make_optimizer


def test_lrn_matches_caffes_formula():
    x = np.random.default_rng(0).normal(0, 30, (2, 3, 4, 9)).astype(np.float32)
    size, alpha, beta, k = 5, 1e-4, 0.75, 1.0
    want = np.empty_like(x)
    for c in range(9):
        window = x[..., max(0, c - 2) : c + 3]
        want[..., c] = x[..., c] / (k + alpha / size * (window**2).sum(-1)) ** beta
    np.testing.assert_allclose(micro.lrn(jnp.asarray(x), size, alpha, beta, k), want, rtol=1e-5)


def test_grouped_convolution_is_separate_convolutions_on_split_channels():
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 6))
    conv = micro.Conv(8, 3, 1, 1, groups=2)
    params = conv.init(jax.random.key(1), x)
    kernel, bias = params["params"]["kernel"], params["params"]["bias"]
    assert kernel.shape == (3, 3, 3, 8)  # each output sees half the input channels

    def separate(xg, kg):
        return jax.lax.conv_general_dilated(xg, kg, (1, 1), [(1, 1)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    want = jnp.concatenate([separate(x[..., :3], kernel[..., :4]), separate(x[..., 3:], kernel[..., 4:])], -1) + bias
    np.testing.assert_allclose(conv.apply(params, x), want, rtol=1e-5, atol=1e-5)
    # the same function as XLA's grouped convolution with this kernel
    grouped = nn.Conv(8, (3, 3), padding=[(1, 1)] * 2, feature_group_count=2)
    np.testing.assert_allclose(grouped.apply(params, x), want, rtol=1e-5, atol=1e-5)
    # strided, unpadded, one group: conv1's shape
    x = jax.random.normal(jax.random.key(2), (1, 23, 23, 3))
    conv1 = micro.Conv(4, 11, 4)
    p1 = conv1.init(jax.random.key(3), x)
    ref = nn.Conv(4, (11, 11), (4, 4), padding="VALID")
    np.testing.assert_allclose(conv1.apply(p1, x), ref.apply(p1, x), rtol=1e-5, atol=1e-5)


def test_pooling_rounds_up_and_alexnet_sizes():
    x = jnp.arange(2 * 54 * 54 * 1, dtype=jnp.float32).reshape(2, 54, 54, 1)
    y = micro.max_pool_3x3_s2(x)
    assert y.shape == (2, 27, 27, 1)  # Caffe: ceil((54 - 3) / 2) + 1
    # the last window hangs over the edge and takes the maximum of what is there
    np.testing.assert_allclose(y[0, -1, -1, 0], x[0, 53, 53, 0])
    np.testing.assert_allclose(y[0, 3, 5, 0], x[0, 6:9, 10:13, 0].max())
    cfg = C.load("configs/micro.py:variant=fusion")
    resolve(cfg, None)
    fam = models.family("micro")
    params = jax.eval_shape(lambda: fam.build(cfg).init(jax.random.key(0), fam.example_batch(cfg, 2)))["params"]
    assert params["visual"]["fc6"]["kernel"].shape == (6 * 6 * 256, 256)  # AlexNet's fc6 input from a 224 face
    assert params["fc7"]["kernel"].shape == (256 + 136, 256)  # concat(fc6, displacement) -> fc7
    assert params["visual"]["conv2"]["kernel"].shape == (5, 5, 48, 256)  # groups 2


def test_squared_hinge_and_cross_entropy_match_their_definitions():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(0, 2, (6, 5)).astype(np.float32), rng.integers(0, 5, 6)
    want = [sum(max(0.0, 1 - (1 if k == y else -1) * f[k]) ** 2 for k in range(5)) for f, y in zip(logits, labels)]
    np.testing.assert_allclose(micro.squared_hinge(jnp.asarray(logits), jnp.asarray(labels)), want, rtol=1e-5)
    cfg = C.load("configs/micro.py:variant=geometry")
    batch = {"label": jnp.asarray(labels), "mask": jnp.asarray([1, 1, 1, 1, 0, 0], jnp.float32)}
    value, metrics = micro.loss(cfg, {"logits": jnp.asarray(logits)}, batch)
    np.testing.assert_allclose(value, np.mean(want[:4]), rtol=1e-5)  # masked examples do not count
    assert set(metrics) == {"hinge_l2"}
    # section V-B's softmax cross-entropy: -log(exp f_y / sum_k exp f_k), the masked mean
    z = logits.astype(np.float64)
    ce = np.log(np.exp(z).sum(-1)) - z[np.arange(6), labels]
    value, metrics = micro.loss(C.load("configs/micro.py:variant=geometry,loss=cross_entropy"),
                                {"logits": jnp.asarray(logits)}, batch)
    np.testing.assert_allclose(value, ce[:4].mean(), rtol=1e-5)
    assert set(metrics) == {"ce"}


def test_compound_labels_map_one_to_one_and_back():
    seen = {0}
    for c in range(1, 8):
        for d in range(1, 8):
            n = compound.compound_label(c, d)
            assert compound.compound_pair(n) == (c, d)
            assert compound.parse_label(f"{c}_{d}") == n
            seen.add(n)
    assert seen == set(range(50)) and compound.compound_pair(0) is None
    assert compound.parse_label("N_N") == 0 and compound.CLASSES[0] == "neutral"
    assert compound.parse_label("3_6") == 20  # the paper's example: disgust complementary, sad dominant
    assert compound.CLASSES[20] == "disgust_sad" and len(set(compound.CLASSES)) == 50
    for bad in ("8_1", "0_3", "3", "N_2", "a_b"):
        with pytest.raises(ValueError):
            compound.parse_label(bad)


def test_sgd_step_decay_and_weight_decay_on_kernels_only():
    cfg = C.load("configs/micro.py:variant=geometry")
    tx, schedule = make_optimizer(cfg)
    np.testing.assert_allclose([schedule(s) for s in (0, 19_999, 20_000, 40_000, 99_999)],
                               [5e-4, 5e-4, 3.75e-4, 2.8125e-4, 5e-4 * 0.75**4], rtol=1e-5)
    params = {"fc8": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}, "prelu7": {"alpha": jnp.ones((2,))},
              "experts": {"kernel0": jnp.ones((2,))}}  # layers.Experts names its weights kernel0, kernel1...
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    for decayed in (updates["fc8"]["kernel"], updates["experts"]["kernel0"]):
        np.testing.assert_allclose(decayed, -5e-4 * 5e-4, rtol=1e-5)
    np.testing.assert_allclose(updates["fc8"]["bias"], 0.0)
    np.testing.assert_allclose(updates["prelu7"]["alpha"], 0.0)


def _landmark_shards(root, shards_of: dict, landmarks: dict) -> None:
    """Shards of blank faces: split -> files -> [(subject, key)], landmarks[split, subject, key]."""
    face = np.zeros((224, 224, 3), np.uint8)
    os.makedirs(root, exist_ok=True)
    for split, files in shards_of.items():
        for f, items in enumerate(files):
            w = shards.ShardWriter(str(root), shards.shard_name(split, f, len(files)))
            for subject, key in items:
                rec = {"face": face, "landmarks": landmarks[split, subject, key], "label": 0, "subject": subject}
                w.write(schema.encode(rec), 0, subject)
            w.close()
    shards.write_manifest(str(root), {split: len(files) for split, files in shards_of.items()}, {"classes": ["a", "b"]})


def test_displacement_subtracts_the_same_subjects_mean_in_the_same_split(tmp_path):
    rng = np.random.default_rng(0)
    # two shards a split, ann in both: her mean adds up the sidecars' sums across shards
    shards_of = {"train": [[("ann", 10), ("bob", 50)], [("ann", 20)]], "test": [[("ann", 100)], [("ann", 130)]]}
    landmarks = {(split, subject, offset): (rng.uniform(40, 180, (68, 2)) + offset).astype(np.float32)
                 for split, files in shards_of.items() for items in files for subject, offset in items}
    _landmark_shards(tmp_path, shards_of, landmarks)
    sidecar = json.loads((tmp_path / ".stats" / (shards.shard_name("train", 0, 2) + ".json")).read_text())
    assert sidecar["landmark_counts"] == {"ann": 1, "bob": 1}
    np.testing.assert_allclose(sidecar["landmark_sums"]["bob"], landmarks["train", "bob", 50], rtol=1e-6)
    cfg = C.load("configs/micro.py:variant=geometry")
    fields, maps = micro.record_fields(cfg), models.family("micro").transforms(cfg, False)

    def displacement(split, i):
        return pipeline.read_records(str(tmp_path), split, [i], fields, maps)["displacement"][0]

    # ann's test images are relative to her test images only, her training images to her training images
    test_mean = (landmarks["test", "ann", 100] + landmarks["test", "ann", 130]) / 2
    train_mean = (landmarks["train", "ann", 10] + landmarks["train", "ann", 20]) / 2
    for _ in range(2):
        np.testing.assert_allclose(displacement("test", 1), landmarks["test", "ann", 130] - test_mean, rtol=1e-5)
        np.testing.assert_allclose(displacement("train", 0), landmarks["train", "ann", 10] - train_mean, rtol=1e-5)
        np.testing.assert_allclose(displacement("train", 1), 0.0, atol=1e-4)  # bob's only image is his mean
        # shards written without the sidecar's sums: the same means from the records themselves
        for path in (tmp_path / ".stats").glob("*.json"):
            st = json.loads(path.read_text())
            st.pop("landmark_sums", None), st.pop("landmark_counts", None)
            path.write_text(json.dumps(st))
        pipeline._subject_mean_landmarks.cache_clear()


def test_raw_geometry_is_the_landmarks_and_a_subject_shift_moves_it_but_not_the_displacement(tmp_path):
    """III-A's comparison: `geometry=raw` reads the landmarks without the subject mean, so
    moving all of one subject's landmarks by a constant moves its input by that constant;
    the displacement (Eq. 2) subtracts the moved mean and stays as it was. The raw input
    reaches the linear layer centred on the training split's mean shape and divided by the
    RMS about it."""
    rng = np.random.default_rng(1)
    shards_of = {"train": [[("ann", 0), ("ann", 1), ("bob", 0), ("ann", 2), ("bob", 1)]]}
    landmarks = {("train", s, k): rng.uniform(40, 180, (68, 2)).astype(np.float32) for s, k in shards_of["train"][0]}
    shift = np.float32([7.0, -4.0])
    moved = {key: lm + shift if key[1] == "ann" else lm for key, lm in landmarks.items()}
    _landmark_shards(tmp_path / "a", shards_of, landmarks)
    _landmark_shards(tmp_path / "b", shards_of, moved)
    inputs = {}
    for geometry in ("raw", "displacement"):
        cfg = C.load(f"configs/micro.py:variant=geometry,geometry={geometry}")
        field = micro.GEOMETRIES[geometry]
        assert set(micro.inputs(cfg)) == {field}
        for data in ("a", "b"):
            inputs[geometry, data] = pipeline.read_records(
                str(tmp_path / data), "train", range(5), micro.record_fields(cfg),
                models.family("micro").transforms(cfg, False))[field]
    order = shards_of["train"][0]
    ann = np.array([s == "ann" for s, _ in order])
    np.testing.assert_allclose(inputs["raw", "a"], np.stack([landmarks["train", s, k] for s, k in order]))
    np.testing.assert_allclose(inputs["raw", "b"][ann], inputs["raw", "a"][ann] + shift, rtol=1e-6)
    np.testing.assert_allclose(inputs["raw", "b"][~ann], inputs["raw", "a"][~ann])
    np.testing.assert_allclose(inputs["displacement", "b"], inputs["displacement", "a"], atol=1e-4)
    # the statistics and the linear SVM's logits on the raw landmarks, in NumPy
    cfg = C.load("configs/micro.py:variant=geometry,geometry=raw")
    lm = inputs["raw", "a"].astype(np.float64)
    stats = micro.statistics(cfg, [{"landmarks": lm, "mask": np.ones(5, np.float32)}])
    mean = lm.mean(0)
    rms = np.sqrt(((lm - mean) ** 2).mean())
    np.testing.assert_allclose(stats["landmarks_mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(stats["landmarks_rms"], rms, rtol=1e-5)
    w, b = rng.normal(size=(136, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    net = micro.MicroEmotionNet(variant="geometry", num_classes=3, geometry="raw")
    out = net.apply({"params": {"fc8": {"kernel": w, "bias": b}}, "stats": stats}, {"landmarks": jnp.asarray(lm)})
    np.testing.assert_allclose(out["logits"], ((lm - mean) / rms).reshape(5, 136) @ w + b, rtol=1e-4, atol=1e-4)


def test_reports_count_the_dominant_and_the_complementary_emotion_apart():
    # true: disgust_sad (c=3, d=6); predicted: angry_sad (dominant right), disgust_happy (complementary right)
    labels = np.array([compound.compound_label(3, 6)] * 2 + [0])
    pred = [compound.compound_label(1, 6), compound.compound_label(3, 5), 0]
    logits = np.eye(50)[pred]
    res = models.Results(C.load("configs/micro.py"), list(compound.CLASSES), {}, labels, logits, {}, np.arange(3),
                         None)
    out = micro.reports(res, "")
    assert out["dominant_accuracy"] == pytest.approx(2 / 3) and out["complementary_accuracy"] == pytest.approx(2 / 3)
    assert out["misclassification_percent"] == pytest.approx(100 * 2 / 3)
    from data_prep.readers.icv_mefed import IcvMefedReader

    assert [IcvMefedReader.split_of(n) for n in ("training.txt", "test_labels.txt", "validation.txt",
                                                  "training_validation.txt")] == ["train", "test", "val", "train"]


def test_accuracy_top_k_and_confusion_matrix_of_logits_written_by_hand():
    """The evaluator's numbers on 5 examples of 5 classes (class 4 absent) whose true class
    ranks 1, 2, 1, 4 and 3 in its logits."""
    from fergate.train.evaluate import classification_metrics

    logits = np.array([[3, 2, 1, 0, -1],  # label 0: rank 1 (predicted 0)
                       [3, 2, 1, 0, -1],  # label 1: rank 2 (predicted 0)
                       [0, 1, 3, 2, -1],  # label 2: rank 1 (predicted 2)
                       [3, 2, 1, 0, -1],  # label 3: rank 4 (predicted 0)
                       [0, 1, 2, 3, -1]], np.float32)  # label 1: rank 3 (predicted 3)
    labels = np.array([0, 1, 2, 3, 1])
    m = classification_metrics(logits, labels, list("abcde"), top_k=(1, 2, 3, 4, 5))
    assert m["confusion_matrix"] == [[1, 0, 0, 0, 0], [1, 0, 0, 1, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0] * 5]
    assert m["examples"] == 5 and m["accuracy"] == pytest.approx(2 / 5)
    assert m["top_k"] == pytest.approx({"1": 2 / 5, "2": 3 / 5, "3": 4 / 5, "4": 1.0, "5": 1.0})
    assert m["per_class_accuracy"] == {"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.0, "e": None}
    assert m["mean_class_accuracy"] == pytest.approx(0.5)  # over the 4 classes present


def _fergate(*args, env=None, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "fergate", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_icv_mefed_layout_goes_into_shards_with_compound_labels(tmp_path, photos):
    """Real photos named and labelled as iCV-MEFED's files; a malformed label line, a twice
    labelled name and a missing photo are skipped and counted."""
    root = tmp_path / "icv"
    (root / "Train").mkdir(parents=True)
    labels = {}
    for s, img in enumerate(photos.values(), 1):
        for idx, (variant, label) in enumerate(((img, "3_6"), (img[:, ::-1], "N_N"), (img, "7_5")), 1):
            name = f"Sample_{s:03d}_{idx:03d}.JPG"
            cv2.imwrite(str(root / "Train" / name), np.ascontiguousarray(variant[..., ::-1]))
            labels[name] = label
    lines = [f"{n}\t{lab}" for n, lab in labels.items()]
    lines += ["Sample_001_001.JPG\t1_1", "Sample_009_001.JPG\t2_2", "Sample_001_002.JPG 9_9", "just garbage"]
    (root / "training_labels.txt").write_text("\n".join(lines) + "\n")
    (root / "order_of_test.txt").write_text("Sample_001_001.JPG\nSample_001_002.JPG\n")  # names only: ignored
    out = tmp_path / "shards"
    _fergate("prep", str(root), "--dataset", "icv_mefed", "--out", str(out), "--face_size", "224", "--align",
             "eyes_lip", "--no_patches", "--no_identity", "--test_fraction", "0", "--workers", "1")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == list(compound.CLASSES)
    assert manifest["skipped"] == {"malformed_label": 2, "duplicate_label": 1, "missing_file": 1}
    assert sorted(manifest["splits"]) == ["train"]  # the name list made no (empty) test split
    files = pipeline.split_files(str(out), "train")
    got = {}
    for path in files:
        import grain

        src = grain.sources.ArrayRecordDataSource([path])
        for i in range(len(src)):
            r = schema.decode(src[i], ("label", "label_name", "subject", "source", "face"))
            assert r["face"].shape == (224, 224, 3)
            got[os.path.basename(r["source"])] = (r["label"], r["label_name"], r["subject"])
    assert got == {n: (compound.parse_label(lab), compound.CLASSES[compound.parse_label(lab)], n.split("_")[1])
                   for n, lab in labels.items()}
    assert got["Sample_001_001.JPG"][1] == "disgust_sad"


@pytest.fixture(scope="module")
def micro_data(tmp_path_factory):
    """280 sample faces at 224, aligned on the eyes and the upper lip, as the network reads them."""
    from data_prep import prep
    from fergate import face

    opts = prep.PrepOptions(face=face.FaceOptions(face_size=224, align="eyes_lip", patches=False, identity=False))
    return prepared(tmp_path_factory, "micro", "sample", opts, {"size": 280, "clips": 0}, workers=2)


def test_geometry_learns_and_fusion_runs_end_to_end(micro_data, tmp_path):
    """The landmark displacement alone (a linear SVM) separates the sample set's expressions;
    the fused network trains, evaluates and reports the top-5 and the misclassification rate."""
    w = str(tmp_path / "geometry")
    _fergate("train", "--config", "configs/micro.py:variant=geometry", "--workdir", w,
             f"--config.data.dir={micro_data}", "--config.train.steps=300", "--config.train.eval_every=0")
    ev = json.loads(open(os.path.join(w, "eval.json")).read())
    assert ev["accuracy"] > 1 / 7 + 0.25, ev["accuracy"]
    w = str(tmp_path / "fusion")
    _fergate("train", "--config", "configs/micro.py:variant=fusion,loss=cross_entropy", "--workdir", w,
             f"--config.data.dir={micro_data}", "--config.train.steps=4", "--config.input.face_size=64",
             "--config.input.batch_size=8", "--config.train.eval_every=0", "--config.data.augment=flip")
    ev = json.loads(open(os.path.join(w, "eval.json")).read())
    conf = np.asarray(ev["confusion_matrix"])  # top-1 is the accuracy, the confusion matrix's trace share
    assert sorted(ev["top_k"]) == ["1", "2", "3", "4", "5"] and conf.sum() == ev["examples"]
    assert ev["top_k"]["1"] == ev["accuracy"] == pytest.approx(np.trace(conf) / conf.sum())
    np.testing.assert_allclose(ev["misclassification_percent"], 100 * (1 - ev["accuracy"]))
    assert os.path.exists(os.path.join(w, "confusion_matrix.png"))
    from test_export import check_export  # the displacement from the subject's mean face, as in evaluation

    check_export(w, tmp_path / "E", "test")


def test_compound_sample_runs_the_50_class_path(tmp_path):
    out = str(tmp_path / "compound")
    _fergate("prep", "--dataset", "sample", "--compound", "--size", "100", "--clips", "0", "--face_size", "224",
             "--align", "eyes_lip", "--no_patches", "--no_identity", "--out", out, "--workers", "2")
    manifest = json.loads(open(os.path.join(out, "manifest.json")).read())
    assert manifest["classes"] == list(compound.CLASSES)
    w = str(tmp_path / "run")
    _fergate("train", "--config", "configs/micro.py:variant=geometry", "--workdir", w, f"--config.data.dir={out}",
             "--config.train.steps=5", "--config.train.eval_every=0")
    ev = json.loads(open(os.path.join(w, "eval.json")).read())
    # n = 7 (c - 1) + d (the paper's label transform): from the confusion matrix, the share of the
    # examples whose predicted class has the true class's dominant d (complementary c); neutral: 0
    conf = np.asarray(ev["confusion_matrix"])
    n = np.arange(50)
    dominant, complementary = np.where(n > 0, (n - 1) % 7 + 1, 0), np.where(n > 0, (n - 1) // 7 + 1, 0)
    assert len(ev["classes"]) == 50 and conf.shape == (50, 50) and conf.sum() == ev["examples"]
    for key, part in (("dominant_accuracy", dominant), ("complementary_accuracy", complementary)):
        assert ev[key] == pytest.approx(conf[part[:, None] == part[None, :]].sum() / conf.sum()), key
    shutil.rmtree(out)


def test_a_zero_displacement_is_refused_with_the_reason():
    cfg = C.load("configs/micro.py:variant=fusion")
    ones = {"displacement": np.ones((4, 68, 2), np.float32), "mask": np.ones(4, np.float32)}
    assert micro.statistics(cfg, [ones])["displacement_rms"] == pytest.approx(1.0)
    from fergate.errors import UserError

    with pytest.raises(UserError, match="one image"):
        micro.statistics(cfg, [{**ones, "displacement": np.zeros((4, 68, 2), np.float32)}])
