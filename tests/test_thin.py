"""THIN: the tree gate and the vmapped ensemble against direct formulas, the two-stage run,
a small Table 2 on rotated digits, and the FER variant on the sample set."""

import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fergate import config as C
from fergate.errors import UserError
from fergate.models.layers import Experts, LoopExperts, MLPClassifier, TreeGate, tree_gate
from fergate.train import trainer
from fergate.train.program import Program


def test_tree_gate_is_the_product_along_each_path():
    depth = 4
    d = np.asarray(jax.random.uniform(jax.random.key(0), (6, 2**depth - 1)), np.float64)
    mu = np.asarray(tree_gate(jnp.asarray(d)))
    for leaf, path in enumerate(itertools.product((0, 1), repeat=depth)):  # 0 = left
        expected, node = np.ones(6), 0
        for go_right in path:
            expected *= (1 - d[:, node]) if go_right else d[:, node]
            node = 2 * node + 1 + go_right  # breadth-first children of `node`
        np.testing.assert_allclose(mu[:, leaf], expected, rtol=1e-5)
    np.testing.assert_allclose(mu.sum(-1), 1, rtol=1e-5)
    gate = TreeGate(3)
    h = jax.random.normal(jax.random.key(1), (5, 11))
    g = gate.apply(gate.init(jax.random.key(2), h), h)
    assert g.shape == (5, 8) and float(g.min()) >= 0
    np.testing.assert_allclose(g.sum(-1), 1, rtol=1e-5)


def numpy_tree_gate(h: np.ndarray, w: np.ndarray, b: np.ndarray, depth: int) -> np.ndarray:
    """Eq. 3-5 transcribed: d_n = sigmoid(w_n . h_g + b_n) for the 2^D - 1 nodes (breadth-first:
    node n's children are 2n + 1 and 2n + 2); mu_l = prod_n d_n^[l in n's left subtree]
    (1 - d_n)^[l in n's right subtree]; g = [mu_1 ... mu_L] over the leaves left to right."""
    d = 1 / (1 + np.exp(-(h.astype(np.float64) @ w + b)))
    mu = np.ones((len(h), 2**depth))
    for n in range(2**depth - 1):
        level = int(np.log2(n + 1))
        span = 2 ** (depth - level)  # the leaves under node n: [first, first + span)
        first = (n - (2**level - 1)) * span
        mu[:, first : first + span // 2] *= d[:, n : n + 1]
        mu[:, first + span // 2 : first + span] *= 1 - d[:, n : n + 1]
    return mu


def test_tree_gate_module_is_equations_3_to_5_on_given_weights():
    h = np.random.default_rng(0).normal(size=(5, 11)).astype(np.float32)
    w = np.random.default_rng(1).normal(size=(11, 7)).astype(np.float32)
    b = np.random.default_rng(2).normal(size=7).astype(np.float32)
    g = TreeGate(3).apply({"params": {"nodes": {"kernel": w, "bias": b}}}, h)
    np.testing.assert_allclose(g, numpy_tree_gate(h, w, b, 3), rtol=1e-5, atol=1e-7)


def numpy_mlp_classifier(p: dict, x: np.ndarray) -> np.ndarray:
    """An `MLPClassifier` (c_sigma, or one expert) in NumPy: Dense - ReLU layers, then Dense."""
    x = np.asarray(x, np.float64)
    for i in range(len(p["mlp"])):
        x = np.maximum(x @ np.asarray(p["mlp"][f"dense{i}"]["kernel"]) + np.asarray(p["mlp"][f"dense{i}"]["bias"]), 0)
    return x @ np.asarray(p["out"]["kernel"]) + np.asarray(p["out"]["bias"])


def numpy_abs_cos(z_exo: np.ndarray, z_endo: np.ndarray) -> np.ndarray:
    """Eq. 7: L_sim = |z_exo^(exo) . z_exo^(endo)| / (||z_exo^(exo)||_2 ||z_exo^(endo)||_2), per example."""
    return np.abs((z_exo * z_endo).sum(-1)) / (np.linalg.norm(z_exo, axis=-1) * np.linalg.norm(z_endo, axis=-1))


def numpy_experts(p: dict, x: np.ndarray) -> np.ndarray:
    """Z (B, L, K) of `Experts`' L members from their stacked parameters: member l is Dense -
    ReLU ... Dense with kernel0[:, l], kernel_i[l]."""
    h = np.einsum("bf,flh->blh", np.asarray(x, np.float64), np.asarray(p["kernel0"])) + np.asarray(p["bias0"])
    i = 1
    while f"kernel{i}" in p:
        h = np.einsum("blf,lfh->blh", np.maximum(h, 0), np.asarray(p[f"kernel{i}"])) + np.asarray(p[f"bias{i}"])
        i += 1
    return h


def _random_digits(n: int) -> dict:
    """`n` random 28 x 28 grey images and rotation bins (the oracle's gate input)."""
    rng = np.random.default_rng(0)
    return {"image": jnp.asarray(rng.integers(0, 256, (n, 28, 28, 1)), jnp.uint8),
            "rotation_bin": jnp.asarray(rng.integers(0, 18, n), jnp.int32)}


def _thin_on_random_digits(arg: str, n: int) -> tuple:
    """(config, parameters, outputs) of THIN as `configs/thin.py:arg` builds it, initialised
    and applied on `_random_digits(n)`."""
    from fergate.models import thin

    cfg = C.load(f"configs/thin.py:{arg}")
    m = thin.build(cfg)
    batch = _random_digits(n)
    variables = m.init(jax.random.key(0), batch)
    return cfg, variables["params"], m.apply(variables, batch)


def _assert_experts_mixed_by_gate(out: dict, p: dict, cfg, h_endo: np.ndarray, h_gate: np.ndarray | None) -> None:
    """The module's logits are z = Z g (Eq. 1-2), Z the experts' logits on h_endo and g the tree
    gate (Eq. 3-5) on h_gate, which is also the gate the module reports (h_gate None: 1/L each,
    the simple deep ensemble's g_0), each in NumPy from the parameters."""
    members = cfg.thin.members
    if h_gate is None:
        g = np.full((len(h_endo), members), 1 / members)
    else:
        g = numpy_tree_gate(h_gate, np.asarray(p["gate"]["nodes"]["kernel"]), np.asarray(p["gate"]["nodes"]["bias"]),
                            cfg.thin.depth)
        np.testing.assert_allclose(out["introspect"]["gate"], g, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["logits"], np.einsum("blk,bl->bk", numpy_experts(p["experts"], h_endo), g),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["ensemble", "tree_gated", "oracle"])
def test_each_ensemble_mixes_its_experts_by_its_gate(variant):
    """z = Z g (Eq. 1-2) with Z the experts' logits on h_endo and g: 1/L each for the simple
    deep ensemble (g_0), the tree gate (Eq. 3-5) on h_endo (tree-gated), or on the one-hot
    true rotation bin (oracle), each in NumPy from the parameters."""
    cfg, p, out = _thin_on_random_digits(f"task=digits_rotated,variant={variant}", 5)
    h_endo = np.asarray(out["representations"]["expression"])
    h_gate = None if variant == "ensemble" else h_endo if variant == "tree_gated" else \
        np.eye(18)[np.asarray(_random_digits(5)["rotation_bin"])]
    _assert_experts_mixed_by_gate(out, p, cfg, h_endo, h_gate)


def test_thin_is_equations_2_to_8_on_its_own_representations():
    """Given the representations the module computed (h_endo, h_exo), the rest of THIN in
    NumPy from its parameters: the gate g on h_exo (Eq. 3-5), the logits Z g (Eq. 2, 6), |cos|
    of c_sigma's logits on h_exo and h_endo (Eq. 7) and the dispelling term lambda L_sim (Eq. 8)."""
    cfg, p, out = _thin_on_random_digits("task=digits_rotated,variant=thin", 6)
    reps = out["representations"]
    h_endo, h_exo = np.asarray(reps["expression"]), np.asarray(reps["rotation"])
    _assert_experts_mixed_by_gate(out, p, cfg, h_endo, h_exo)
    c_sigma = p["exo_classifier_rotation"]
    cos = numpy_abs_cos(numpy_mlp_classifier(c_sigma, h_exo), numpy_mlp_classifier(c_sigma, h_endo))
    np.testing.assert_allclose(out["introspect"]["abs_cos"][:, 0], cos, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["metrics"]["abs_cos"], cos.mean(), rtol=1e-4)
    np.testing.assert_allclose(out["losses"]["dispel"], cfg.thin.dispel_weight * cos.mean(), rtol=1e-4)


def test_vmapped_experts_equal_members_applied_one_by_one():
    x = jax.random.normal(jax.random.key(0), (4, 20))
    ens = Experts((16, 8), 5, members=6)
    params = ens.init(jax.random.key(1), x)["params"]
    assert params["kernel0"].shape == (20, 6, 16) and params["kernel1"].shape == (6, 16, 8)
    assert params["bias2"].shape == (6, 5)
    z = ens.apply({"params": params}, x)
    assert z.shape == (4, 6, 5)
    member = MLPClassifier((16, 8), 5)  # the same MLP as one module, fed member i's slices
    kernel = [params["kernel0"].transpose(1, 0, 2), params["kernel1"], params["kernel2"]]  # member-major
    members = [{"mlp": {f"dense{j}": {"kernel": kernel[j][i], "bias": params[f"bias{j}"][i]} for j in range(2)},
                "out": {"kernel": kernel[2][i], "bias": params["bias2"][i]}} for i in range(6)]
    for i in range(6):
        np.testing.assert_allclose(z[:, i], member.apply({"params": members[i]}, x), rtol=1e-5, atol=1e-6)
    loop = LoopExperts((16, 8), 5, members=6)
    lp = {f"member{i}": members[i] for i in range(6)}
    np.testing.assert_allclose(loop.apply({"params": lp}, x), z, rtol=1e-5, atol=1e-6)


def test_dsprites_factor_grid():
    from data_prep import synthetic as S

    areas = [(S.sprite(1, scale, 0, 16, 16) > 127).sum() for scale in range(len(S.DSPRITES_SCALES))]
    assert all(a < b for a, b in zip(areas, areas[1:]))  # the exogenous factor: scale
    shapes = [S.sprite(s, 5, 0, 16, 16) for s in range(3)]
    assert all((shapes[i] != shapes[j]).sum() > 50 for i in range(3) for j in range(i + 1, 3))
    moved = S.sprite(0, 5, 0, 31, 0)
    assert np.argwhere(moved > 127)[:, 1].mean() > np.argwhere(shapes[0] > 127)[:, 1].mean() + 10
    rotated = S.sprite(0, 5, 5, 16, 16)  # 45 degrees: a square becomes a diamond
    assert (rotated != shapes[0]).sum() > 50 and abs(int((rotated > 127).sum()) - int((shapes[0] > 127).sum())) < 40


def test_rotated_digits_bins():
    from data_prep import synthetic as S

    img = np.zeros((28, 28), np.uint8)
    img[4:24, 12:16] = 255  # a vertical bar
    rng = np.random.default_rng(0)
    for _ in range(20):
        rec = S.rotated_digit(img, rng, scaled=True)
        assert 0 <= rec["rotation_bin"] < S.ROTATION_BINS and rec["rotation_bin"] == int((rec["rotation"] + 90) // 10)
        assert 0 <= rec["scale_bin"] < S.SCALE_BINS and 0.5 <= rec["scale"] <= 1.0
    ys, xs = np.nonzero(S.rotate_scale(img, 90.0)[..., None][..., 0] > 127)
    assert np.ptp(xs) > 3 * np.ptp(ys)  # the vertical bar is horizontal after 90 degrees
    ys, xs = np.nonzero(S.rotate_scale(img, 0.0, 0.5) > 127)
    assert 8 <= np.ptp(ys) <= 11  # half the 20-pixel bar


def test_exogenous_variable_choice_for_table_3():
    c = C.load("configs/thin.py:task=digits_rotated_scaled,variant=exo_tree_gated,exo=scale")
    assert (c.thin.exo_fields, c.thin.exo_classes) == (("scale_bin",), (10,))
    assert "variant=exo,exo=scale" in c.pretrain.configs.scale
    assert c.optim.frozen == ("exo_encoder_scale", "exo_classifier_scale")
    stage1 = C.pretrain_stages(c)["scale"]
    assert stage1.data.label_field == "scale_bin" and stage1.thin.exo_classes == (10,)
    both = C.load("configs/thin.py:task=digits_rotated_scaled,variant=thin,exo=rotation+scale")
    assert set(both.pretrain.configs) == {"rotation", "scale"} and both.thin.exo_classes == (18, 10)
    assert set(both.init.params) == set(both.optim.frozen) == {
        "exo_encoder_rotation", "exo_classifier_rotation", "exo_encoder_scale", "exo_classifier_scale"}
    for arg in ("task=digits_rotated,exo=scale", "task=digits_rotated_scaled,exo=rotation+rotation"):
        with pytest.raises(UserError, match="does not apply"):
            C.load(f"configs/thin.py:{arg}")
    with pytest.raises(UserError, match="one exogenous variable"):
        C.load("configs/thin.py:task=digits_rotated_scaled,variant=exo,exo=rotation+scale")


def test_the_plan_line_says_each_stage_s_steps_and_pretrain_steps_sets_stage_1s(tmp_path):
    """`--config.train.steps=300` on THIN once trained its stage 1 for 6,000 steps unsaid: the
    line that opens a run names every stage's steps, and `pretrain.steps` sets stage 1's."""
    w = str(tmp_path / "w")
    cfg = C.load("configs/thin.py:variant=thin", ["--config.train.steps=300"])
    line = trainer.plan(cfg, w)
    assert line.startswith(f"[train] plan: stage 1 rotation (thin/exo) 6,000 steps -> {w}/pretrain/rotation; "
                           f"stage 2 thin/thin 300 steps -> {w}")
    assert "--config.pretrain.steps=N" in line
    cfg = C.load("configs/thin.py:variant=thin", ["--config.train.steps=300", "--config.pretrain.steps=300"])
    assert trainer.earlier_stages(cfg)["rotation"].train.steps == 300  # what the stage trains with
    assert "stage 1 rotation (thin/exo) 300 steps" in trainer.plan(cfg, w)
    os.makedirs(f"{w}/pretrain/rotation")
    open(f"{w}/pretrain/rotation/eval.json", "w").write("{}")  # finished: reused, not trained
    assert trainer.plan(cfg, w).startswith(f"[train] plan: stage 1 rotation (thin/exo) finished in {w}/pretrain/")
    baseline = C.load("configs/thin.py:variant=baseline")  # no earlier stage
    assert trainer.plan(baseline, w) == f"[train] plan: thin/baseline 6,000 steps -> {w}"


def test_two_exogenous_variables_gate_on_the_concatenation():
    """Table 3's rotation + scale: one gamma_tau per variable, the gate reads both, and the
    dispelling loss has one |cos| per variable."""
    cfg, p, out = _thin_on_random_digits("task=digits_rotated_scaled,variant=thin,exo=rotation+scale", 5)
    assert {"exo_encoder_rotation", "exo_encoder_scale", "exo_classifier_rotation", "exo_classifier_scale"} <= set(p)
    assert p["gate"]["nodes"]["kernel"].shape[0] == 2 * 7 * 7 * 16  # both representations, concatenated
    reps = out["representations"]
    cos = np.stack([numpy_abs_cos(numpy_mlp_classifier(p[f"exo_classifier_{n}"], reps[n]),
                                  numpy_mlp_classifier(p[f"exo_classifier_{n}"], reps["expression"]))
                    for n in ("rotation", "scale")], -1)  # Eq. 7 per variable, with that variable's c_sigma
    np.testing.assert_allclose(out["introspect"]["abs_cos"], cos, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["losses"]["dispel"], cfg.thin.dispel_weight * cos.mean(), rtol=1e-4)
    np.testing.assert_allclose(out["introspect"]["gate"].sum(-1), 1.0, rtol=1e-5)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from data_prep import prep

    out = str(tmp_path_factory.mktemp("digits"))
    m = prep.run("digits_rotated", None, out, reader_options={"copies": 4}, workers=1)
    assert m["splits"]["train"]["records"] == 4 * 1437
    return out


def _train(variant, data, workdir, *extra):
    cfg = C.load(f"configs/thin.py:task=digits_rotated,variant={variant}",
                 [f"--config.data.dir={data}", "--config.train.log_every=500", *extra])
    return trainer.train(cfg, str(workdir))


def test_small_table_2_on_rotated_digits(digits, tmp_path):
    """Two-stage THIN from one command; the exogenous tree-gated ensemble learns as well as
    the baseline of comparable size (on scikit-learn's digits its gain is within seed noise:
    +1.7 and -0.1 points at 3000 steps, see the issue notes), and the oracle (gate on the
    true rotation bin) stays close to it."""
    steps = "--config.train.steps=1500"
    res = {v: _train(v, digits, tmp_path / v, steps, "--config.pretrain.steps=1500")["accuracy"]
           for v in ("baseline", "exo_tree_gated", "oracle")}
    print(res)
    assert "abs_cos_histogram" in json.load(open(tmp_path / "exo_tree_gated" / "eval.json"))  # no dispelling
    exo = json.load(open(tmp_path / "exo_tree_gated" / "pretrain" / "rotation" / "eval.json"))
    assert exo["accuracy"] > 0.5  # rotation bins (18) of held-out digits, chance 0.056
    assert min(res.values()) > 0.85  # 10 classes: chance is 0.1
    assert res["exo_tree_gated"] > res["baseline"] - 0.02
    assert abs(res["oracle"] - res["exo_tree_gated"]) < 0.03


def test_thin_dispelling_loss_is_trained_and_the_exogenous_network_stays_frozen(digits, tmp_path):
    _train("exo", digits, tmp_path / "exo", "--config.train.steps=200")
    _train("thin", digits, tmp_path / "thin", "--config.train.steps=100", "--config.train.log_every=20",
           f"--config.init.params_from={tmp_path / 'exo'}")
    rows = [r for r in map(json.loads, open(tmp_path / "thin" / "metrics.jsonl")) if "loss" in r]
    weight = C.load_workdir(str(tmp_path / "thin")).thin.dispel_weight
    assert rows
    for r in rows:  # Eq. 8: L = L_sup + lambda L_sim, L_sim the batch's mean |cos| (Eq. 7), logged as abs_cos
        assert r["dispel"] == pytest.approx(weight * r["abs_cos"], rel=1e-5)
        assert r["loss"] == pytest.approx(r["ce"] + r["dispel"], rel=1e-5)

    def params(w):
        from fergate.train.checkpoint import Checkpointer

        state = Checkpointer(str(w)).restore(Program(C.load_workdir(w)).abstract_sharded_state())[0]
        return jax.device_get(state.params)

    before, after = params(tmp_path / "exo"), params(tmp_path / "thin")
    for name in ("exo_encoder_rotation", "exo_classifier_rotation"):
        jax.tree.map(np.testing.assert_array_equal, before[name], after[name])
    intro = json.load(open(tmp_path / "thin" / "introspection.json"))
    assert set(intro) == {"gate", "abs_cos"}
    hist = json.load(open(tmp_path / "thin" / "eval.json"))["abs_cos_histogram"]  # Fig. 8
    assert sum(hist["counts"]) == json.load(open(tmp_path / "thin" / "eval.json"))["examples"]
    assert (tmp_path / "thin" / "top_inputs_per_expert.png").exists()  # Fig. 10
    # Fig. 8 as a command: this run's |cos| against the same ensemble trained without dispelling
    _train("exo_tree_gated", digits, tmp_path / "etg", "--config.train.steps=50",
           f"--config.init.params_from=('{tmp_path / 'exo'}',)")
    fergate = [sys.executable, "-m", "fergate", "eval", "--workdir", str(tmp_path / "thin"),
               "--out", str(tmp_path / "cmp")]
    r = subprocess.run([*fergate, "--compare", str(tmp_path / "etg")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "cmp" / "abs_cos_compare.png").exists() and "2 runs compared" in r.stdout
    r = subprocess.run([*fergate, "--compare", str(tmp_path / "exo")], capture_output=True, text=True)
    assert r.returncode == 2 and "no |cos| introspection in" in r.stderr


def test_fer_thin_trains_on_the_sample_set(sample_data, tmp_path):
    """FER: identity = the source photo; c_sigma learns the training subjects from the
    128-d dlib embeddings, then gates and dispels."""
    small = ["--config.thin.endo_convs=(8, 8, 16)", "--config.thin.members=4", "--config.thin.expert_hidden=(16,)",
             "--config.thin.depth=2", "--config.input.image_size=32", "--config.input.batch_size=8",
             "--config.eval.batch_size=16", "--config.optim.lr=1e-3", "--config.optim.end_lr=1e-3"]
    cfg = C.load("configs/thin.py:task=fer,variant=thin,identity=embedding,smoke=True",
                 [f"--config.data.dir={sample_data}", "--config.train.steps=20", "--config.pretrain.steps=60", *small])
    res = trainer.train(cfg, str(tmp_path / "fer"))
    assert res["examples"] == json.load(open(os.path.join(sample_data, "manifest.json")))["splits"]["test"]["records"]
    pre = json.load(open(tmp_path / "fer" / "pretrain" / "identity" / "eval.json"))
    assert pre["classes"] == json.load(open(os.path.join(sample_data, "manifest.json")))["splits"]["train"]["subjects"]
    assert pre["accuracy"] > 0.9  # dlib embeddings separate the training subjects


def test_fer_identity_cnn_as_the_exogenous_network(sample_data, tmp_path):
    """The option to the dlib embedding: an identity CNN trained on the faces (stage 1),
    then loaded frozen as gamma_tau of the exogenous tree-gated ensemble."""
    small = ["--config.thin.endo_convs=(8, 8, 16)", "--config.thin.exo_convs=(8, 16, 16)", "--config.thin.members=4",
             "--config.thin.expert_hidden=(16,)", "--config.thin.depth=2", "--config.input.image_size=32",
             "--config.input.batch_size=8", "--config.eval.batch_size=16"]
    cfg = C.load("configs/thin.py:task=fer,variant=exo_tree_gated,identity=cnn,smoke=True",
                 [f"--config.data.dir={sample_data}", "--config.train.steps=10", "--config.pretrain.steps=150",
                  *small])
    assert cfg.thin.exo_input == "image" and cfg.optim.frozen == ("exo_encoder_identity", "exo_classifier_identity")
    trainer.train(cfg, str(tmp_path / "fer"))
    pre = json.load(open(tmp_path / "fer" / "pretrain" / "identity" / "eval.json"))
    assert pre["accuracy"] > 3 / len(pre["classes"])  # the CNN learned the training subjects' faces
    from test_export import check_export

    check_export(tmp_path / "fer", tmp_path / "E", "test")
    # Table 1 / Fig. 9: same / different-person pairs of an LFW layout, in the model's two
    # representation spaces and dlib's
    from data_prep import prep

    root, n_pairs = _lfw_layout(tmp_path / "lfw")
    prep.run("lfw", str(root), str(tmp_path / "lfw_data"), workers=1)
    r = subprocess.run([sys.executable, "-m", "fergate", "eval", "--workdir", str(tmp_path / "fer"), "--pairs",
                        str(tmp_path / "lfw_data"), "--out", str(tmp_path / "pairs")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.load(open(tmp_path / "pairs" / "pairs.json"))
    assert rep["pairs"] + rep["pairs_dropped"] == n_pairs and rep["pairs_dropped"] == 1  # the missing photo's pair
    names = set(rep["representations"])
    assert names == {"thin/exo_tree_gated: expression", "thin/exo_tree_gated: identity",
                     "dlib face recognition (records)"}, names
    for res in rep["representations"].values():
        assert 0 <= res["iou"] <= 1 and 0 <= res["pair_accuracy"] <= 1
        assert sum(res["same"]["counts"]) == rep["same"] and sum(res["different"]["counts"]) == rep["different"]
    dlib = rep["representations"]["dlib face recognition (records)"]
    assert dlib["pair_accuracy"] >= 0.9 and dlib["iou"] < 0.3  # a face-recognition network tells people apart
    assert (tmp_path / "pairs" / "pairs.png").exists() and "pair accuracy" in r.stdout


def _lfw_layout(root) -> tuple:
    """LFW's layout from the sample set's people: `lfw/<Name>/<Name>_000k.jpg` (3 expressive
    photos each) and a View 2 `pairs.txt` of 2 folds, same-person then different-person
    lines, one naming a photo that is not there. Returns (root, number of pairs)."""
    from PIL import Image

    from data_prep import sample as S
    from fergate import face as F

    people = sorted({n for n, *_ in S.sample_photos()})[:4]
    sources = {n: (p, i) for n, p, i in S.sample_photos()}
    rng = np.random.default_rng(0)
    for name in people:
        person = name.title().replace(" ", "_")
        os.makedirs(root / "lfw" / person, exist_ok=True)
        subject = S.Subject(name, *sources[name])
        for k, expression in enumerate(("neutral", "happiness", "surprise"), 1):
            for _ in range(10):  # a draw dlib finds a face in: only the missing photo's pair is to be lost
                img = S.synthesize(subject, expression, 0.8 * (k > 1), rng)
                if len(F.models().detector(img, 0)):
                    break
            Image.fromarray(img).save(root / "lfw" / person / f"{person}_{k:04d}.jpg")
    names = [n.title().replace(" ", "_") for n in people]
    same = [f"{n}\t{a}\t{b}" for n in names for a, b in ((1, 2), (2, 3))]
    diff = [f"{x}\t{a}\t{y}\t{b}" for i, x in enumerate(names) for y in names[i + 1:] for a, b in ((1, 3),)]
    diff = (diff * 2)[: len(same)]
    half = len(same) // 2
    folds = [same[:half] + diff[:half], same[half:] + diff[half:] + [f"{names[0]}\t1\t{names[-1]}\t9"]]
    with open(root / "pairs.txt", "w") as f:
        f.write(f"2\t{half}\n" + "".join(line + "\n" for fold in folds for line in fold))
    return root, sum(map(len, folds))


def test_tensorflow_datasets_sources_without_tensorflow(tmp_path):
    """MNIST and dSprites through tensorflow-datasets' random-access sources (its mock data
    here: nothing can be downloaded), with the factor labels of the tfds records."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from test_prep import _records

    from data_prep import prep

    with tfds.testing.mock_data(num_examples=12):
        m = prep.run("digits_rotated", "tfds", str(tmp_path / "mnist"), reader_options={"copies": 2}, workers=1)
        assert m["splits"]["train"]["records"] == 24 and m["splits"]["test"]["records"] == 24
        digits = _records(str(tmp_path / "mnist"), "train")
        assert digits[0]["image"].shape == (28, 28, 1) and 0 <= digits[0]["rotation_bin"] < 18
        m = prep.run("dsprites", "tfds", str(tmp_path / "dsprites"), reader_options={"size": 10}, workers=1)
        assert sum(s["records"] for s in m["splits"].values()) == 10
        ds = tfds.data_source("dsprites", split="train")
        for r in _records(str(tmp_path / "dsprites"), "train"):
            src = ds[int(r["subject"].removeprefix("sprite"))]
            assert (r["label"], r["scale_bin"], r["rotation_bin"]) == (
                src["label_shape"], src["label_scale"], src["label_orientation"])
    with pytest.raises(UserError, match="cannot open 'mnist'"):
        prep.run("digits_rotated", "tfds", str(tmp_path / "none"), workers=1)


def test_fer_thin_benches_without_data():
    """`fergate bench` has no manifest to count subjects: c_sigma gets BENCH_SUBJECTS outputs."""
    from fergate.models.thin import BENCH_SUBJECTS
    from fergate.train import bench

    cfg = C.load("configs/thin.py:task=fer,variant=thin",
                 ["--config.thin.endo_convs=(8,)", "--config.thin.exo_convs=(8,)", "--config.input.image_size=32",
                  "--config.thin.members=4", "--config.thin.depth=2", "--config.thin.expert_hidden=(16,)"])
    res = bench.bench(cfg, batch=4, steps=2, warmup=1)
    assert cfg.thin.exo_classes == (BENCH_SUBJECTS,) and res["model"] == "thin/thin" and res["step_ms"] > 0


def test_fer_setup_of_section_4_3():
    """Oracle has no exogenous label on FER; the identity network has the expression
    network's architecture; exo_tree_gated computes and logs |cos| (Fig. 8's lambda = 0)
    without training on it, through a fixed projection when c_sigma reads the 128-d dlib
    embedding; the FER baseline head is as large as the ensemble."""
    from fergate import models
    from fergate.models import thin
    from fergate.train.data import resolve

    with pytest.raises(UserError, match="variant=oracle gates on the true exogenous label"):
        C.load("configs/thin.py:task=fer,variant=oracle")
    cfg = C.load("configs/thin.py:task=fer,variant=thin")
    assert cfg.thin.exo_convs == cfg.thin.endo_convs and cfg.thin.exo_input == "image"
    # lambda: Fig. 8's 0.01 for FER, 4.1's 0.005 on MNIST-R
    assert cfg.thin.dispel_weight == 0.01 and C.load("configs/thin.py:variant=thin").thin.dispel_weight == 0.005
    base = C.load("configs/thin.py:task=fer,variant=baseline")
    ens = C.load("configs/thin.py:task=fer,variant=ensemble")

    def head_params(c):
        resolve(c, None)
        fam = models.family("thin")
        p = jax.eval_shape(lambda: fam.build(c).init(jax.random.key(0), fam.example_batch(c, 1)))["params"]
        return sum(int(np.prod(x.shape)) for k, v in p.items() if k != "endo" for x in jax.tree.leaves(v))

    assert abs(head_params(base) / head_params(ens) - 1) < 0.05
    small = ["--config.thin.endo_convs=(8,)", "--config.input.image_size=32", "--config.thin.members=4",
             "--config.thin.depth=2", "--config.thin.expert_hidden=(16,)"]
    for variant in ("exo_tree_gated", "thin"):
        c = C.load(f"configs/thin.py:task=fer,variant={variant},identity=embedding", small)
        assert c.init.params == ("exo_classifier_identity",) and "identity" in c.pretrain.configs
        resolve(c, None)
        fam = models.family("thin")
        batch = fam.example_batch(c, 3)
        m = fam.build(c)
        variables = m.init(jax.random.key(0), batch)
        out = m.apply(variables, batch)
        # Eq. 7 with c_sigma on the embedding and on h_endo in the embedding's width (the fixed projection)
        h_exo, h_endo = np.asarray(out["representations"]["identity"]), np.asarray(out["representations"]["expression"])
        c_sigma = variables["params"]["exo_classifier_identity"]
        cos = numpy_abs_cos(numpy_mlp_classifier(c_sigma, h_exo), numpy_mlp_classifier(
            c_sigma, np.asarray(thin.fixed_projection(jnp.asarray(h_endo), h_exo.shape[-1]))))
        np.testing.assert_allclose(out["introspect"]["abs_cos"][:, 0], cos, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out["metrics"]["abs_cos"], cos.mean(), rtol=1e-4)
        assert ("dispel" in out["losses"]) == (variant == "thin")
        if variant == "thin":  # Eq. 8's lambda L_sim with the FER preset's lambda
            np.testing.assert_allclose(out["losses"]["dispel"], 0.01 * cos.mean(), rtol=1e-4)


def test_experts_sharded_over_a_model_axis_train_like_one_device(digits, tmp_path):
    """`mesh.model=2` on 4 emulated devices (2 data x 2 model): the experts' kernels split
    over the model axis (config's rules), the loss curve of a single device, the sharded
    checkpoint restored whole by `fergate export` on one device; rules that do not fit are
    one-line errors."""
    def run(w, *extra):
        return subprocess.run([sys.executable, "-m", "fergate", "train", "--config",
                               "configs/thin.py:task=digits_rotated,variant=ensemble", "--workdir", str(w),
                               f"--config.data.dir={digits}", "--config.train.steps=12", "--config.train.log_every=2",
                               "--config.train.ckpt_every=6", *extra], capture_output=True, text=True)

    curves = []
    for name, extra in (("one", ()), ("sharded", ("--cpu_devices=4", "--config.mesh.model=2"))):
        r = run(tmp_path / name, *extra)
        assert r.returncode == 0, r.stderr[-2000:]
        with open(tmp_path / name / "metrics.jsonl") as f:
            curves.append([(m["step"], m["loss"]) for m in map(json.loads, f) if "loss" in m])
    assert "[mesh] {'data': 2, 'model': 2}" in r.stdout and "experts/kernel0 (None, 'model', None)" in r.stdout
    (s1, l1), (s2, l2) = (zip(*c) for c in curves)
    assert s1 == s2 and len(s1) == 6
    np.testing.assert_allclose(l1, l2, rtol=2e-4)
    for cmd in (["export", "--out", str(tmp_path / "export")], ["eval"]):  # read whole, on one device
        r = subprocess.run([sys.executable, "-m", "fergate", *cmd, "--workdir", str(tmp_path / "sharded")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    for extra, message in ((("--config.mesh.model=3",), "must divide the 4 devices"),
                           (("--config.mesh.rules=('experts/kernel0=model',)",), "does not fit"),
                           (("--config.mesh.rules=('kernel0=-,tensor,-',)",), "is not REGEX=AXES"),
                           (("--config.mesh.rules=('kernel0=model,model,-',)",), "each axis once"),
                           (("--config.mesh.rules=('params/experts/kernel0=-,model,-',)",), "within the parameters")):
        r = run(tmp_path / "bad", "--cpu_devices=4", *extra)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
