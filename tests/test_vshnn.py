"""VSHNN's video backbone: the scene-aware RNN cells against their equations and flax's cells,
the scan against an unrolled loop, the connections, the 3D CNN's sizes, the two-stage run
through `fergate train` with `fergate features` in between."""

import json
import os
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fergate import config as config_lib
from fergate.models import backbones, layers, vshnn
from fergate.train.data import resolve
from fergate.train.program import Program

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "vshnn.py")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_sarnn(params: dict, x: np.ndarray, v: np.ndarray | None, cell: str, connection: str | None) -> np.ndarray:
    """The SARNN's last hidden state, transcribed from the paper's equations with a Python
    loop over time: LSTM Eq. 3-8 (type A adds W_v v to every gate; type C reads [x_n, v];
    type B starts from h_0 = v), GRU as Cho et al. with the reset gate on W_hn h + b_hn."""
    p = {k: np.asarray(val, np.float64) for k, val in _flat(params).items()}
    hidden = p["recurrent_kernel"].shape[0]
    b, n = x.shape[:2]
    h, c = np.zeros((b, hidden)), np.zeros((b, hidden))
    if connection == "b":
        h = v.astype(np.float64) if v.shape[-1] == hidden else v @ p["scene_to_h0/kernel"] + p["scene_to_h0/bias"]
    for t in range(n):
        xt = np.concatenate([x[:, t], v], -1) if connection == "c" else x[:, t]
        pre = xt @ p["input/kernel"] + p["input/bias"]
        if connection == "a":
            pre = pre + v @ p["scene/kernel"]
        if cell == "lstm":
            z = pre + h @ p["recurrent_kernel"]
            i, f, g, o = (z[:, k * hidden:(k + 1) * hidden] for k in range(4))
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        else:
            hh = h @ p["recurrent_kernel"]
            xr, xz, xn = (pre[:, k * hidden:(k + 1) * hidden] for k in range(3))
            hr, hz, hn = (hh[:, k * hidden:(k + 1) * hidden] for k in range(3))
            r, zg = sigmoid(xr + hr), sigmoid(xz + hz)
            nn_ = np.tanh(xn + r * (hn + p["recurrent_bias_n"]))
            h = (1 - zg) * nn_ + zg * h
    return h


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("connection", ["a", "b", "c", None])
def test_sarnn_matches_its_equations_in_an_unrolled_loop(cell, connection):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 5)).astype(np.float32)
    v = rng.standard_normal((3, 6)).astype(np.float32)
    model = vshnn.SARNN(4, cell, connection, hidden=8, head=9, dropout=0.5)
    params = model.init(jax.random.key(0), x, v, False)["params"]
    logits, h = model.apply({"params": params}, x, v, False)
    want = numpy_sarnn(params, x, v, cell, connection)
    np.testing.assert_allclose(h, want, rtol=1e-5, atol=1e-5)
    p = _flat(params)
    head = np.maximum(want @ p["head0/kernel"] + p["head0/bias"], 0) @ p["head1/kernel"] + p["head1/bias"]
    np.testing.assert_allclose(logits, head, rtol=1e-5, atol=1e-5)
    assert logits.shape == (3, 4)


def test_type_b_is_a_plain_lstm_started_from_v():
    """h_0 = v (widths equal): flax's own LSTMCell, given the same weights and the carry
    (c = 0, h = v), runs to the same last hidden state; GRU likewise with flax's GRUCell."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    v = rng.standard_normal((2, 6)).astype(np.float32)
    for cell, ref_cell, gates in (("lstm", nn.LSTMCell(6), "ifgo"), ("gru", nn.GRUCell(6), "rzn")):
        model = vshnn.SARNN(3, cell, "b", hidden=6, head=5)
        params = _flat(model.init(jax.random.key(2), x, v, False)["params"])
        assert not any(k.startswith("scene_to_h0") for k in params)  # no projection when widths match
        _, h = model.apply({"params": model.init(jax.random.key(2), x, v, False)["params"]}, x, v, False)
        split = {g: k for k, g in enumerate(gates)}

        def cols(a, g, split=split):
            return a[..., split[g] * 6:(split[g] + 1) * 6]

        wi, wh, bi = params["input/kernel"], params["recurrent_kernel"], params["input/bias"]
        if cell == "lstm":  # flax: input dense without bias, hidden dense with it
            ref = {f"i{g}": {"kernel": cols(wi, g)} for g in gates} | \
                  {f"h{g}": {"kernel": cols(wh, g), "bias": cols(bi, g)} for g in gates}
            carry = (jnp.zeros((2, 6)), jnp.asarray(v))
        else:  # flax: input dense with bias, hidden dense without, except the candidate's (b_hn)
            ref = {f"i{g}": {"kernel": cols(wi, g), "bias": cols(bi, g)} for g in gates} | \
                  {f"h{g}": {"kernel": cols(wh, g)} for g in "rz"} | \
                  {"hn": {"kernel": cols(wh, "n"), "bias": params["recurrent_bias_n"]}}
            carry = jnp.asarray(v)
        for t in range(x.shape[1]):
            carry, out = ref_cell.apply({"params": ref}, carry, x[:, t])
        np.testing.assert_allclose(h, out, rtol=1e-5, atol=1e-5)


def test_types_a_and_c_compute_the_same_function_class():
    """Type A's W_x x + W_v v is type C's W [x, v] with W = [W_x; W_v] (documented: they
    differ only in how the weights start)."""
    rng = np.random.default_rng(3)
    x, v = rng.standard_normal((2, 4, 5)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
    a, c = vshnn.SARNN(3, "lstm", "a", 6, 4), vshnn.SARNN(3, "lstm", "c", 6, 4)
    pa = a.init(jax.random.key(0), x, v, False)["params"]
    pc = jax.tree.map(lambda t: t, dict(pa))
    pc["input"] = {"kernel": jnp.concatenate([pa["input"]["kernel"], pa["scene"]["kernel"]], 0),
                   "bias": pa["input"]["bias"]}
    del pc["scene"]
    np.testing.assert_allclose(a.apply({"params": pa}, x, v, False)[1], c.apply({"params": pc}, x, v, False)[1],
                               rtol=1e-5, atol=1e-6)


def test_compile_time_does_not_grow_with_the_clip_length():
    """The time loop is a scan: compiling the SARNN for 64 frames costs about what 16 do."""
    model = vshnn.SARNN(7, "lstm", "a", hidden=64, head=32)

    def compile_time(t: int) -> float:
        x, v = jnp.zeros((4, t, 32)), jnp.zeros((4, 16))
        params = model.init(jax.random.key(0), x, v, False)

        def loss(p):
            return model.apply(p, x, v, False)[0].sum()

        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.jit(jax.grad(loss)).lower(params).compile()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    t16, t64 = compile_time(16), compile_time(64)
    assert t64 < 1.2 * t16 + 0.05, (t16, t64)


def test_conv3d_im2col_is_the_3d_convolution():
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 7, 3))
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 3, 4))
    want = nn.Conv(4, (3, 3, 3), padding="SAME").apply({"params": {"kernel": k, "bias": jnp.zeros(4)}}, x)
    np.testing.assert_allclose(layers.conv3_im2col(x, k), want, rtol=1e-4, atol=1e-4)


def test_max_pool3d_matches_reduce_window_and_rounds_up():
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 6, 3))
    np.testing.assert_allclose(backbones.max_pool3d(x, (2, 2, 2)), nn.max_pool(x, (2, 2, 2), (2, 2, 2)))
    np.testing.assert_allclose(backbones.max_pool3d(x, (1, 2, 2)), nn.max_pool(x, (1, 2, 2), (1, 2, 2)))
    odd = jax.random.normal(jax.random.key(1), (1, 2, 7, 7, 2))
    y = backbones.max_pool3d(odd, (2, 2, 2))
    assert y.shape == (1, 1, 4, 4, 2)  # C3D's pool5: 7 -> 4, padded at the start as the port pads (0, 1, 1)
    np.testing.assert_allclose(y[0, 0, 0, 0], odd[0, :, 0, 0].max(0))
    np.testing.assert_allclose(y[0, 0, 3, 3], odd[0, :, 5:7, 5:7].max((0, 1, 2)))


def _n_params(module, *args, **kwargs) -> int:
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"]
    return int(sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)))


def test_paper_sizes():
    """C3D with FC 2048 and an auxiliary classifier of 512 has the PyTorch reference's
    45,503,246 parameters; DenseNet-121's trunk has torchvision's 6,953,856 (its 7,978,856
    less the 1000-class classifier)."""
    cfg = config_lib.load(CONFIG + ":variant=c3d,paper=True")
    kw = {k: v for k, v in cfg.vshnn.to_dict().items() if k not in ("num_classes", "freeze_convs")}
    kw["aux_hidden"] = 512
    batch = {"clip": jnp.zeros((1, 16, 112, 112, 3), jnp.uint8)}
    assert _n_params(vshnn.VSHNN("c3d", 7, **kw), batch) == 45_503_246
    assert _n_params(backbones.DenseNet(), jnp.zeros((1, 224, 224, 3)), False) == 6_953_856
    # the paper's frame CNN: DenseNet121-FC on 112 x 112 frames, two FC 4096
    fcnn = vshnn.FrameCNN(7, "densenet121", fc=(4096, 4096))
    assert _n_params(fcnn, jnp.zeros((1, 112, 112, 3), jnp.uint8), False) == \
        6_953_856 + (3 * 3 * 1024 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 7 + 7)


def test_losses_weigh_the_auxiliary_classifier_and_every_frame():
    cfg = config_lib.load(CONFIG + ":variant=c3d,smoke=True")
    rng = np.random.default_rng(0)
    main, aux = rng.standard_normal((4, 7)), rng.standard_normal((4, 7))
    batch = {"label": jnp.array([0, 3, 6, 2]), "mask": jnp.array([1.0, 1.0, 1.0, 0.0])}

    def ce(z, y):
        z = z - z.max(-1, keepdims=True)
        return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(-1)))

    total, metrics = vshnn.loss(cfg, {"logits": jnp.asarray(main), "aux_logits": jnp.asarray(aux)}, batch)
    y = np.array([0, 3, 6])
    np.testing.assert_allclose(total, ce(main[:3], y).mean() + 0.5 * ce(aux[:3], y).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["aux_ce"], ce(aux[:3], y).mean(), rtol=1e-5)
    frames = rng.standard_normal((4, 5, 7))
    total, _ = vshnn.loss(cfg, {"logits": jnp.asarray(frames.mean(1)), "frame_logits": jnp.asarray(frames)}, batch)
    want = np.mean([ce(frames[i], np.full(5, y[i])).mean() for i in range(3)])
    np.testing.assert_allclose(total, want, rtol=1e-5)


def test_frozen_convolutions_get_no_gradient():
    """freeze_convs (3.3): the 3D CNN's convolutions leave the optimizer, and a training step
    leaves them exactly as they were while the layers above them learn."""
    cfg = config_lib.load(CONFIG + ":variant=c3d_sagru_b,smoke=True",
                          ["--config.vshnn.freeze_convs=True", "--config.input.batch_size=2"])
    resolve(cfg, None)
    assert "c3d_convs" in cfg.optim.frozen
    prog = Program(cfg)
    state = prog.new_state()
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = prog.train_step(state, prog.example)
    for a, b in zip(jax.tree.leaves(before["c3d_convs"]), jax.tree.leaves(state.params["c3d_convs"]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(state.params["scene"]["kernel"]) - before["scene"]["kernel"]).max() > 0
    assert float(metrics["grad_norm"]) > 0


def run(*args, timeout=900):
    r = subprocess.run([sys.executable, "-m", "fergate", *args], capture_output=True, text=True, timeout=timeout)
    return r


def test_two_stages_in_one_command(tmp_path):
    """`fergate train` on a SARNN variant (here VSHNN-LRMAF with FS in one model, fitted jointly,
    stage 1 in-sample: `test_vshnn_stacking` runs the paper's protocol) trains the frame CNN,
    writes its features of every clip (the model's own output for that
    clip), then trains C3D + SAGRU fused with LMED-CF on them, and reports the fusion's
    attention and the substituted frames per class; a second `fergate features` run finds
    every shard done."""
    w = tmp_path / "w"
    r = run("train", "--config", f"{CONFIG}:variant=c3d_sagru_b,fs=True,fusion=lrmaf,fit=joint,smoke=True",
            "--workdir", str(w), "--config.train.steps=10", "--config.pretrain.steps=10", "--config.pretrain.folds=0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((w / "eval.json").read_text())
    intro = json.loads((w / "introspection.json").read_text())
    # each modality's entry: its class-mean sigmoid attention (Eq. 18; values checked against the
    # kernel in the LRMAF test below) averaged over the K + 1 entries of its score vector
    assert set(report["fusion_attention"]) == set(intro["video_attention"])
    for c, att in report["fusion_attention"].items():
        for m in ("video", "landmark"):
            assert att[m] == pytest.approx(np.mean(intro[f"{m}_attention"][c]), rel=1e-6), (c, m)
    assert (w / "fusion_attention.png").exists() and (w / "frame_substitution.png").exists()
    substituted = intro["substituted"]
    # K = 3 frames of every clip, or none when all its frames are alike (static neutral clips: R = 0)
    assert all(sum(v) < 3 + 1e-5 for v in substituted.values())
    assert sum(abs(sum(v) - 3) < 1e-5 for v in substituted.values()) >= 5
    feats = w / "pretrain" / "frames" / "features"
    manifest = json.loads((feats / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train_clips", "test_clips"}
    assert manifest["features"]["width"] == 256 and manifest["features"]["field"] == "clip_features"
    conf = np.asarray(report["confusion_matrix"])  # rows: true class; the accuracy is its trace's share
    assert report["split"] == "test_clips" and conf.sum() == report["examples"]
    assert report["accuracy"] == pytest.approx(np.trace(conf) / conf.sum())
    # exported with its frame CNN as a stage: from the clips alone, the eval step's logits
    from test_export import check_export

    model = check_export(w, tmp_path / "E", "test_clips", n=8)
    assert model.kind == "clip" and list(model.stages) == ["frames"]

    # the stored features are the frame CNN's output for the stored clip
    from fergate.data import pipeline
    from fergate.train.checkpoint import restore_selected
    from fergate.train.data import resolve
    from fergate.train.program import Program

    rec = pipeline.read_records(str(feats), "test_clips", [0], ("clip", "clip_features"))
    cfg = config_lib.load_workdir(str(w / "pretrain" / "frames"))
    resolve(cfg, pipeline.read_manifest(str(feats)))
    prog = Program(cfg)
    state = restore_selected(str(w / "pretrain" / "frames"), prog.abstract_sharded_state())[0]
    out = prog.module.apply({"params": state.params, **state.model_state}, {"clip": rec["clip"]}, train=False)
    np.testing.assert_allclose(out["features"], rec["clip_features"], rtol=1e-4, atol=1e-4)

    before = {p.name: p.stat().st_mtime_ns for p in feats.glob("*.array_record")}
    r = run("features", "--workdir", str(w / "pretrain" / "frames"), "--out", str(feats))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in feats.glob("*.array_record")} == before  # every shard was done
    assert json.loads((feats / "manifest.json").read_text())["features"]["width"] == 256


# ----------------------------------------------------------------------------- part 2: FS, LMED-CF, fusions
def numpy_correlation(x: np.ndarray) -> np.ndarray:
    """Eq. 1-2 transcribed: Y = X X^T; r_jk = sum_n (y_nj - mean_j)(y_nk - mean_k) / (sqrt(..) sqrt(..))."""
    y = x.astype(np.float64) @ x.T.astype(np.float64)
    yc = y - y.mean(0)
    s = yc.T @ yc
    return s / np.sqrt(np.outer(np.diag(s), np.diag(s)))


def numpy_frame_substitution(x: np.ndarray, k: int) -> np.ndarray:
    """Section 3.4: U+ the K highest row means of R, U- the K lowest; X[u-_n] = X[u+_n]."""
    means = numpy_correlation(x).mean(1)
    top, bottom = np.argsort(-means, kind="stable")[:k], np.argsort(means, kind="stable")[:k]
    out = x.copy()
    out[bottom] = x[top]
    return out


def test_frame_substitution_matches_equations_1_2_and_the_top_bottom_k_rule():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((5, 16, 12)), 0).astype(np.float32)  # ReLU features, as the frame CNN's
    np.testing.assert_allclose(vshnn.frame_correlation(x[0]), numpy_correlation(x[0]), atol=1e-5)
    got, replaced = jax.jit(vshnn.frame_substitution, static_argnums=1)(x, 3)
    for b in range(len(x)):
        want = numpy_frame_substitution(x[b], 3)
        np.testing.assert_array_equal(got[b], want)
        np.testing.assert_array_equal(replaced[b], (want != x[b]).any(-1))
    assert (np.asarray(replaced).sum(1) == 3).all()
    with pytest.raises(ValueError, match="2K <= N"):
        vshnn.frame_substitution(x, 9)


def test_lmed_cf_has_222_dimensions_for_16_frames_and_matches_its_definition():
    rng = np.random.default_rng(1)
    lm = (rng.uniform(10, 90, (2, 16, 68, 2))).astype(np.float32)
    f = np.asarray(vshnn.lmed_cf(lm))
    assert f.shape == (2, 222) == (2, vshnn.lmed_cf_width(16))
    from fergate.data.landmarks import LMED_PAIRS, iod
    for b in range(2):
        d = np.linalg.norm(lm[b][:, LMED_PAIRS[:, 0]] - lm[b][:, LMED_PAIRS[:, 1]], axis=-1) / iod(lm[b])[:, None]
        r = numpy_correlation(d)
        want = np.concatenate([d.max(0), d.mean(0), d.std(0), r[np.triu_indices(16, 1)]])
        np.testing.assert_allclose(f[b], want, rtol=1e-4, atol=1e-4)
    # 3D landmarks: 3D distances, the same width
    lm3 = np.concatenate([lm, rng.uniform(-5, 5, (2, 16, 68, 1)).astype(np.float32)], -1)
    f3 = np.asarray(vshnn.lmed_cf(lm3))
    assert f3.shape == f.shape and not np.allclose(f3[:, :34], f[:, :34])
    assert vshnn.lmed_cf_width(8) == 102 + 28
    # LMED (Table 9's row, `lmed=distances`): the 102 statistics alone, and the model's landmark
    # branch (its scaling statistics and its MLP's input) that wide
    d = np.asarray(vshnn.lmed_cf(lm, correlations=False))
    assert d.shape == (2, 102) == (2, vshnn.lmed_cf_width(16, correlations=False))
    np.testing.assert_allclose(d, f[:, :102], rtol=1e-6)
    cfg = config_lib.load(f"{CONFIG}:variant=lmedcf,lmed=distances")
    resolve(cfg, None)
    state = jax.eval_shape(Program(cfg).new_state)
    assert state.model_state["stats"]["lmed_min"].shape == (102,)
    assert state.params["lmed_mlp"]["fc0"]["kernel"].shape == (102, cfg.vshnn.lmed_blocks[0])


def test_lmed_cf_scaling_comes_from_the_training_batches_only():
    """`statistics` is the per-dimension range of the unmasked training clips; the model maps
    that range to [-1, 1] exactly (a padded example, mask 0, counts for nothing)."""
    cfg = config_lib.load(f"{CONFIG}:variant=lmedcf")
    rng = np.random.default_rng(2)
    lm = rng.uniform(10, 90, (6, 16, 68, 2)).astype(np.float32)
    padded = np.concatenate([lm, np.full((1, 16, 68, 2), 1e4, np.float32) * rng.uniform(size=(1, 16, 68, 2))])
    batches = [{"clip_landmarks": padded[:4], "mask": np.ones(4, np.float32)},
               {"clip_landmarks": padded[4:], "mask": np.array([1, 1, 0], np.float32)}]
    stats = vshnn.statistics(cfg, batches)
    f = np.asarray(vshnn.lmed_cf(lm))
    np.testing.assert_allclose(stats["lmed_min"], f.min(0), rtol=1e-5)
    np.testing.assert_allclose(stats["lmed_max"], f.max(0), rtol=1e-5)
    model = vshnn.VSHNN(variant="lmedcf", num_classes=7)
    variables = model.init(jax.random.key(0), {"clip_landmarks": lm})
    variables = {**variables, "stats": stats}
    _, sown = model.apply(variables, {"clip_landmarks": lm}, mutable=["intermediates"])
    s = np.asarray(sown["intermediates"]["lmed_cf"][0])
    assert s.min() >= -1 - 1e-4 and s.max() <= 1 + 1e-4  # f32 rounding of jit against eager
    np.testing.assert_allclose(s.min(0), -1, atol=1e-4)
    np.testing.assert_allclose(s.max(0), 1, atol=1e-4)


def test_lrmf_is_the_full_bilinear_map_it_factorises():
    """sum_i lambda_i prod_m (W_m^(i) [z_m, 1]) + b = W . ([z_vid, 1] (x) [z_lmk, 1]) + b with
    the full tensor W = sum_i lambda_i w_vid^(i) (x) w_lmk^(i) (Eq. 20), for small widths."""
    rng = np.random.default_rng(3)
    zv, zl = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    fusion = vshnn.LowRankFusion(out=2, rank=3, attention=False)
    params = fusion.init(jax.random.key(0), zv, zl)["params"]
    got, attn = fusion.apply({"params": params}, zv, zl)
    assert attn == {}
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    full = np.einsum("r,rio,rjo->ijo", p["rank_weights"], p["video_factor"], p["landmark_factor"])  # (4, 6, 2)
    one = np.ones((4, 1))
    want = np.einsum("bi,bj,ijo->bo", np.hstack([zv, one]), np.hstack([zl, one]), full) + p["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lrmaf_attention_is_a_sigmoid_of_the_scores_and_scales_each_modality_before_the_low_rank_fusion():
    rng = np.random.default_rng(4)
    zv, zl = 5 * rng.standard_normal((6, 7)).astype(np.float32), 5 * rng.standard_normal((6, 7)).astype(np.float32)
    fusion = vshnn.LowRankFusion(out=7, rank=4, attention=True)
    params = fusion.init(jax.random.key(1), zv, zl)["params"]
    got, attn = fusion.apply({"params": params}, zv, zl)
    for m, z in (("video", zv), ("landmark", zl)):
        a = np.asarray(attn[m])
        assert a.shape == (6, 8)
        zz = np.hstack([z, np.ones((6, 1), np.float32)])
        fc = params[f"{m}_attention"]
        np.testing.assert_allclose(a, sigmoid(zz @ fc["kernel"] + fc["bias"]), rtol=1e-5)
    # the same output as LRMF (no attention, same factors) fed a o z with the 1 also scaled
    plain = {k: v for k, v in params.items() if not k.endswith("_attention")}
    av, al = np.asarray(attn["video"]), np.asarray(attn["landmark"])
    one = np.ones((6, 1), np.float32)
    p = {k: np.asarray(v, np.float64) for k, v in plain.items()}
    zv1, zl1 = av * np.hstack([zv, one]), al * np.hstack([zl, one])
    want = np.einsum("r,rbo->bo", p["rank_weights"], np.einsum("bd,rdo->rbo", zv1, p["video_factor"])
                     * np.einsum("bd,rdo->rbo", zl1, p["landmark_factor"])) + p["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _fused(arg: str):
    """A fused model's config, program, fresh state and example batch (v given: no 3D CNN to build)."""
    from fergate.train.data import resolve
    from fergate.train.program import Program
    cfg = config_lib.load(f"{CONFIG}:{arg},head_only=True")
    resolve(cfg, None)
    prog = Program(cfg)
    batch = prog.family.example_batch(cfg, 4)
    state = prog.new_state()
    return cfg, prog, state, batch


def test_weighted_summation_and_intermediate_concatenation():
    """WS: the fused log-score is log(alpha softmax(p) + (1 - alpha) softmax(q)) (Eq. 17), and
    both branches add their own cross-entropy; IC: the SARNN's scene input is [BN(v), l']."""
    cfg, prog, state, batch = _fused("variant=c3d_sagru_b,fusion=ws")
    out = prog.module.apply({"params": state.params, **state.model_state}, batch, train=False)
    p, q = out["branch_logits"]["video"], out["branch_logits"]["landmark"]
    a = cfg.vshnn.ws_alpha
    np.testing.assert_allclose(np.exp(out["logits"]), a * jax.nn.softmax(p) + (1 - a) * jax.nn.softmax(q), rtol=1e-5)
    total, metrics = vshnn.loss(cfg, out, batch)
    np.testing.assert_allclose(total, metrics["ce"] + metrics["video_ce"] + metrics["landmark_ce"], rtol=1e-5)
    cfg, prog, state, batch = _fused("variant=c3d_sagru_b,fusion=ic")
    v = cfg.vshnn
    assert state.params["sarnn"]["scene_to_h0"]["kernel"].shape == (v.scene + v.lmed_blocks[-1], v.hidden)
    assert "ic_bn" in state.model_state["batch_stats"]


@pytest.mark.parametrize("arg,message", [
    ("variant=cnn_gru,fusion=ic", "c3d_sa"), ("variant=lmedcf,fusion=ws", "not variant=lmedcf"),
    ("variant=c3d,fs=True", "fs_k=3"), ("variant=c3d_sagru_b,fusion=sum", "fusion"),
])
def test_fusion_and_fs_mistakes_are_one_line_errors(arg, message):
    from fergate.errors import UserError
    from fergate.train.data import resolve
    with pytest.raises(UserError, match=message):
        resolve(config_lib.load(f"{CONFIG}:{arg}"), None)


def test_lmedcf_alone_trains_from_the_training_splits_range(tmp_path):
    """The landmark model alone through `fergate train`: its stored scaling is the LMED-CF
    range of the training clips (not the test clips'), and it learns."""
    w = tmp_path / "lm"
    r = run("train", "--config", f"{CONFIG}:variant=lmedcf,smoke=True", "--workdir", str(w),
            "--config.train.steps=150", "--config.train.eval_every=0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from fergate.data import pipeline
    from fergate.train.checkpoint import restore_selected
    from fergate.train.data import data_dir, resolve
    from fergate.train.program import Program

    cfg = config_lib.load_workdir(str(w))
    ddir = data_dir(cfg)
    manifest = pipeline.read_manifest(ddir)
    resolve(cfg, manifest)
    state = restore_selected(str(w), Program(cfg).abstract_sharded_state())[0]
    stats = state.model_state["stats"]
    f = {}
    for split in ("train_clips", "test_clips"):
        n = manifest["splits"][split]["records"]
        f[split] = np.asarray(vshnn.lmed_cf(pipeline.read_records(ddir, split, list(range(n)),
                                                                  ("clip_landmarks",))["clip_landmarks"]))
    np.testing.assert_allclose(stats["lmed_min"], f["train_clips"].min(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["lmed_max"], f["train_clips"].max(0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(stats["lmed_max"], np.maximum(f["train_clips"].max(0), f["test_clips"].max(0)))
    report = json.loads((w / "eval.json").read_text())
    assert report["mean_class_accuracy"] > 1 / 7 + 0.15, report["mean_class_accuracy"]


_STEPS = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
import numpy as np
from fergate import config as C
from fergate.train.data import resolve
from fergate.train.mesh import global_batch
from fergate.train.program import Program
c = C.load(sys.argv[3], [f"--config.mesh.model={sys.argv[2]}", "--config.input.batch_size=8"])
resolve(c, None)
p = Program(c)
state, local = p.new_state(), p.family.example_batch(c, 8)
local["label"] = np.arange(8, dtype=np.int32) % p.num_classes
batch, losses = global_batch(local, p.batch_sharding), []
for _ in range(3):
    state, m = p.train_step(state, batch)
    losses.append(float(m["loss"]))
specs = {k: str(v.spec) for k, v in zip(["input", "recurrent"], [p.state_sharding.params["sarnn"]["input"]["kernel"],
                                                                 p.state_sharding.params["sarnn"]["recurrent_kernel"]])}
print(json.dumps({"loss": losses, "specs": specs}))
"""


def test_sarnn_gates_sharded_over_a_model_axis_give_the_one_device_losses():
    """The SARNN's gate columns, split over a model axis of 4 emulated devices by the config's
    rules (`mesh.model=4`): the losses of 3 steps are those of one device."""
    spec = "configs/vshnn.py:variant=c3d_salstm_a,head_only=True,fusion=lrmaf"
    runs = []
    for devices, model in ((1, 1), (4, 4)):
        r = subprocess.run([sys.executable, "-c", _STEPS, str(devices), str(model), spec], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert runs[1]["specs"] == {"input": "P(None, 'model')", "recurrent": "P(None, 'model')"}
    np.testing.assert_allclose(runs[0]["loss"], runs[1]["loss"], rtol=2e-5)
