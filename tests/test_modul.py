"""MoDuL: gates, input sizes, the variants of Table I and parameter counts of Table IV."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fergate import config as C
from fergate import models
from fergate.data.landmarks import pairwise_distances
from fergate.errors import UserError
from fergate.models import modul as M
from fergate.models.layers import FaceGates, conv3_im2col
from fergate.train.data import resolve

TABLE_IV = {"distances": 1.77, "patches": 2.79, "joint": 5.76, "joint_modal": 5.82, "distances_rw": 3.20,
            "patches_rw": 3.02, "joint_rw": 6.22, "modul": 6.27}


def _params(variant, landmarks=68):
    cfg = C.load(f"configs/modul.py:variant={variant},landmarks={landmarks}")
    resolve(cfg, None)  # no data: the 7 basic expressions
    batch = models.family("modul").example_batch(cfg, 2)
    return jax.eval_shape(lambda: models.family("modul").build(cfg).init(jax.random.key(0), batch))["params"]


@pytest.mark.parametrize("variant", list(TABLE_IV))
def test_parameter_counts_with_49_landmarks_within_10_percent_of_table_iv(variant):
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(_params(variant, 49))) / 1e6
    print(f"{variant}: {n:.2f}M (Table IV {TABLE_IV[variant]}M, {100 * (n / TABLE_IV[variant] - 1):+.0f}%)")
    assert abs(n / TABLE_IV[variant] - 1) < 0.10


def test_distance_input_sizes():
    # unweighted: upper triangle N(N-1)/2; region-weighted: D_ij * g_j for all i != j, N(N-1)
    assert _params("distances")["F_dist"]["dense0"]["kernel"].shape == (68 * 67 // 2, 1024)
    assert _params("modul")["F_dist"]["dense0"]["kernel"].shape == (68 * 67, 1024)
    assert _params("modul", 49)["F_patch_conv"]["conv0"]["kernel"].shape == (3, 3, 49, 64)
    gates = _params("joint_modal")["gates"]
    assert "G_mod_out" in gates and "G_dist_out" not in gates


def test_gate_value_ranges():
    face = jax.random.uniform(jax.random.key(1), (8, 64, 64, 1)) * 50  # large inputs saturate the sigmoid
    gates = FaceGates([("g", 68, "landmark"), ("m", 2, "modal")])
    out = gates.apply(gates.init(jax.random.key(0), face), face)
    g, m = out["g"], out["m"]
    assert g.shape == (8, 68) and float(g.min()) >= 0 and float(g.max()) <= 2
    np.testing.assert_allclose(m.sum(-1), 1, rtol=1e-6)
    assert float(m.min()) >= 0


def test_im2col_convolution_matches_xla_convolution():
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, 3))
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
    ref = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv3_im2col(x, k), ref, rtol=1e-5, atol=1e-5)


def test_distance_matrix_matches_eq_1_and_has_finite_gradients():
    lm = np.random.default_rng(0).uniform(0, 64, (3, 68, 2)).astype(np.float32)
    iod = np.array([20.0, 25.0, 30.0], np.float32)
    np.testing.assert_allclose(M.distance_matrix(jnp.asarray(lm), jnp.asarray(iod)),
                               pairwise_distances(lm, iod), rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda x: M.distance_matrix(x, jnp.asarray(iod)).sum())(jnp.asarray(lm))
    assert np.isfinite(np.asarray(g)).all()


def test_modal_gate_and_patch_gate_act_on_the_output():
    cfg = C.load("configs/modul.py")
    resolve(cfg, None)
    model = models.family("modul").build(cfg)
    rng = np.random.default_rng(0)
    batch = models.family("modul").example_batch(cfg, 4)
    batch.update(landmarks=rng.uniform(0, 64, (4, 68, 2)).astype(np.float32), iod=np.full(4, 25, np.float32),
                 patches=rng.integers(0, 255, (4, 68, 30, 30), np.uint8),
                 face=rng.integers(0, 255, (4, 64, 64, 1), np.uint8))
    variables = model.init(jax.random.key(0), batch)
    out = model.apply(variables, batch)
    intro = out["introspect"]
    assert set(intro) == {"dist_gate", "patch_gate", "modal_gate"}
    # forcing the modal gate onto the distance branch removes the patches' influence
    p = jax.tree.map(lambda x: x, variables["params"])
    p["gates"]["G_mod_out"]["bias"] = jnp.array([30.0, -30.0])
    p["gates"]["G_mod_out"]["kernel"] = jnp.zeros_like(p["gates"]["G_mod_out"]["kernel"])
    a = model.apply({**variables, "params": p}, batch)["logits"]
    b = model.apply({**variables, "params": p}, {**batch, "patches": np.zeros_like(batch["patches"])})["logits"]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_joint_models_read_all_pairs_as_table_iv_or_the_upper_triangle_as_the_text():
    assert _params("joint")["F_dist"]["dense0"]["kernel"].shape == (68 * 67, 1024)
    cfg = C.load("configs/modul.py:variant=joint", ["--config.modul.all_pairs=False"])
    resolve(cfg, None)
    batch = models.family("modul").example_batch(cfg, 2)
    p = jax.eval_shape(lambda: models.family("modul").build(cfg).init(jax.random.key(0), batch))["params"]
    assert p["F_dist"]["dense0"]["kernel"].shape == (68 * 67 // 2, 1024)


def test_distance_standardisation_uses_the_training_split_only(sample_data, tmp_path):
    """The statistics in the checkpoint are the mean and spread of D_ij over the training
    records (not the test ones), and the model's distance inputs are standardised with them."""
    from fergate.data import pipeline
    from fergate.train import trainer
    from fergate.train.checkpoint import Checkpointer
    from fergate.train.program import Program

    cfg = C.load("configs/modul.py:variant=distances", [f"--config.data.dir={sample_data}", "--config.train.steps=1",
                                                        "--config.train.eval_every=0"])
    w = tmp_path / "w"
    trainer.train(cfg, str(w))
    state, _ = Checkpointer(str(w)).restore(Program(C.load_workdir(w)).abstract_sharded_state())
    stats = state.model_state["stats"]

    def distances(split):
        recs = pipeline.read_records(sample_data, split, range(pipeline.num_records(sample_data, split)),
                                     ("landmarks", "iod"))
        return pairwise_distances(recs["landmarks"], recs["iod"])

    train, test = distances("train"), distances("test")
    np.testing.assert_allclose(stats["dist_mean"], train.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["dist_std"][~np.eye(68, dtype=bool)], train.std(0)[~np.eye(68, dtype=bool)],
                               rtol=1e-3, atol=1e-5)
    assert np.abs(stats["dist_mean"] - test.mean(0)).max() > 1e-3  # the test split's would differ


def test_unknown_config_key_is_a_clear_error_and_overrides_are_typed():
    with pytest.raises(UserError, match="unknown config key 'train.stpes'"):
        C.load("configs/modul.py", ["--config.train.stpes=3"])
    cfg = C.load("configs/modul.py:variant=joint", ["--config.train.steps=7", "--config.optim.lr=1e-4",
                                                     "--config.modul.dist_hidden=(8, 4)"])
    assert cfg.train.steps == 7 and cfg.optim.lr == 1e-4 and tuple(cfg.modul.dist_hidden) == (8, 4)
    # a tuple of names takes bare comma-separated words (paths); a tuple of numbers does not
    cfg = C.load("configs/thin.py:variant=thin", ["--config.init.params_from=/tmp/a,/tmp/b"])
    assert cfg.init.params_from == ("/tmp/a", "/tmp/b")
    with pytest.raises(UserError, match="cannot read 'wide' as tuple"):
        C.load("configs/modul.py", ["--config.modul.dist_hidden=wide"])
