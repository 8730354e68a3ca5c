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
from fergate.models import vshnn

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
    np.testing.assert_allclose(vshnn.conv3x3x3_im2col(x, k), want, rtol=1e-4, atol=1e-4)


def test_max_pool3d_matches_reduce_window_and_rounds_up():
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 6, 3))
    np.testing.assert_allclose(vshnn.max_pool3d(x, (2, 2, 2)), nn.max_pool(x, (2, 2, 2), (2, 2, 2)))
    np.testing.assert_allclose(vshnn.max_pool3d(x, (1, 2, 2)), nn.max_pool(x, (1, 2, 2), (1, 2, 2)))
    odd = jax.random.normal(jax.random.key(1), (1, 2, 7, 7, 2))
    y = vshnn.max_pool3d(odd, (2, 2, 2))
    assert y.shape == (1, 1, 4, 4, 2)  # C3D's pool5: 7 -> 4
    np.testing.assert_allclose(y[0, 0, 3, 3], odd[0, :, 6, 6].max(0))


def _n_params(module, *args, **kwargs) -> int:
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"]
    return int(sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)))


def test_paper_sizes():
    """C3D with FC 2048 and an auxiliary classifier of 512 has the PyTorch reference's
    45,503,246 parameters; DenseNet-121's trunk has torchvision's 6,953,856 (its 7,978,856
    less the 1000-class classifier)."""
    cfg = config_lib.load(CONFIG + ":variant=c3d,paper=True")
    kw = {k: v for k, v in cfg.vshnn.to_dict().items() if k != "num_classes"}
    kw["aux_hidden"] = 512
    batch = {"clip": jnp.zeros((1, 16, 112, 112, 3), jnp.uint8)}
    assert _n_params(vshnn.VSHNN("c3d", 7, **kw), batch) == 45_503_246
    assert _n_params(vshnn.DenseNet(), jnp.zeros((1, 224, 224, 3)), False) == 6_953_856
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
    cfg = config_lib.load(CONFIG + ":variant=c3d_sagru_b,smoke=True")
    kw = {k: v for k, v in cfg.vshnn.to_dict().items() if k != "num_classes"}
    kw["freeze_convs"] = True
    model = vshnn.VSHNN("c3d_sagru_b", 7, **kw)
    batch = {"clip": jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 8, 32, 32, 3)), jnp.uint8),
             "clip_features": jnp.ones((2, 8, 256))}
    variables = model.init(jax.random.key(0), batch)
    grads = jax.grad(lambda p: model.apply({**variables, "params": p}, batch)["logits"].sum())(variables["params"])
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["c3d_convs"]))
    assert float(jnp.abs(grads["scene"]["kernel"]).max()) > 0
    with cfg.unlocked():  # and the optimizer leaves them alone (no weight decay, no Adam state)
        cfg.vshnn.freeze_convs = True
        vshnn.resolve(cfg, None)
    assert "c3d_convs" in cfg.optim.frozen


def run(*args, timeout=900):
    r = subprocess.run([sys.executable, "-m", "fergate", *args], capture_output=True, text=True, timeout=timeout)
    return r


def test_two_stages_in_one_command(tmp_path):
    """`fergate train` on a SARNN variant trains the frame CNN, writes its features of every
    clip (the model's own output for that clip), then trains C3D + SAGRU on them; a second
    `fergate features` run finds every shard done."""
    w = tmp_path / "w"
    r = run("train", "--config", f"{CONFIG}:variant=c3d_sagru_b,smoke=True", "--workdir", str(w),
            "--config.train.steps=10", "--config.pretrain.steps=10")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    feats = w / "pretrain" / "frames" / "features"
    manifest = json.loads((feats / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train_clips", "test_clips"}
    assert manifest["features"]["width"] == 256 and manifest["features"]["field"] == "clip_features"
    report = json.loads((w / "eval.json").read_text())
    assert report["split"] == "test_clips" and 0 <= report["accuracy"] <= 1

    # the stored features are the frame CNN's output for the stored clip
    from fergate.data import pipeline
    from fergate.train.checkpoint import restore_selected
    from fergate.train.program import Program, resolve

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
