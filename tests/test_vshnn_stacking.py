"""VSHNN's stages without the stacking leak: one `fergate train` of LRMAF fitted on held-out
scores (CNN-GRU as the video branch, the quickest to compile) trains stage 1 and its
out-of-fold frame CNNs, the branches (video model and LMED-CF) and their out-of-fold copies,
then the fusion layer alone. No training clip's appearance features, nor its branch scores,
come from a model that trained on its subject."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fergate import config as config_lib
from fergate.data import pipeline
from fergate.train.checkpoint import restore_selected
from fergate.train.data import DataPlan, resolve
from fergate.train.program import Program

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "vshnn.py")
FOLDS = 2


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    w = tmp_path_factory.mktemp("stacking") / "w"
    r = subprocess.run([sys.executable, "-m", "fergate", "train", "--config",
                        f"{CONFIG}:variant=cnn_gru,fusion=lrmaf,smoke=True", "--workdir", str(w),
                        "--config.train.steps=5", "--config.pretrain.steps=5", f"--config.pretrain.folds={FOLDS}"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return w


def _trained_subjects(workdir, data: str) -> set:
    """The subjects a stage's model trained on, from its own config and the data."""
    cfg = config_lib.load_workdir(str(workdir))
    train = DataPlan.of(cfg, data).portions.train
    subjects = pipeline.split_subjects(pipeline.split_files(data, train.split))
    return set(subjects if train.records is None else subjects[train.records])


def _check_out_of_fold(stage, features, field: str) -> dict:
    """Every training clip of `features` (the copy holding stage `stage`'s `field`) was
    written by an out-of-fold model that never trained on its subject, every held-out clip by
    the stage's own model; returns the copy's out-of-fold record."""
    info = json.loads((features / "manifest.json").read_text())["features"]
    oof = info["out_of_fold"]
    assert info["field"] == field
    assert oof["models"] == [os.path.realpath(p) for p in (stage, *(stage / f"oof-{FOLDS}" / f"fold-{j:02d}"
                                                                      for j in range(FOLDS)))]
    source = info["source_data"]
    trained = [_trained_subjects(m, source) for m in oof["models"]]
    subjects = pipeline.split_subjects(pipeline.split_files(str(features), "train_clips"))
    owners = np.asarray(oof["owners"]["train_clips"])
    assert len(owners) == len(subjects) and set(owners) == set(range(1, FOLDS + 1))
    for s, m in zip(subjects, owners):
        assert s not in trained[m], (s, oof["models"][m])
    assert set(subjects) == trained[0]  # the stage itself trained on every training subject
    assert "test_clips" not in oof["owners"]  # held-out clips: the stage's own model
    return oof


def _forward(workdir, batch: dict) -> dict:
    cfg = config_lib.load_workdir(str(workdir))
    resolve(cfg, None)
    prog = Program(cfg)
    state = restore_selected(str(workdir), prog.abstract_sharded_state())[0]
    return prog.module.apply({"params": state.params, **state.model_state}, batch, train=False)


def test_no_training_clips_stage_1_features_come_from_a_model_that_saw_its_subject(fused):
    """Stage 1's out-of-fold features: each training clip's from the frame CNN that held out
    its subject's fold (its own forward pass on the clip, not the full frame CNN's)."""
    stage = fused / "pretrain" / "branches" / "pretrain" / "frames"
    feats = stage / f"oof-{FOLDS}" / "features"
    oof = _check_out_of_fold(stage, feats, "clip_features")
    owners = np.asarray(oof["owners"]["train_clips"])
    for i in (0, int(np.flatnonzero(owners != owners[0])[0])):  # a clip of each fold model
        rec = pipeline.read_records(str(feats), "train_clips", [i], ("clip", "clip_features"))
        own = _forward(oof["models"][owners[i]], {"clip": rec["clip"]})["features"]
        full = _forward(stage, {"clip": rec["clip"]})["features"]
        np.testing.assert_allclose(own, rec["clip_features"], rtol=1e-4, atol=1e-4)
        assert np.abs(np.asarray(full) - rec["clip_features"]).max() > 1e-3


def test_the_late_fusion_is_fitted_on_held_out_branch_scores_only(fused):
    """The fusion layer trains on the training clips' branch scores, each from a branches model
    that never trained on the clip's subject; the fused model holds the fusion layer alone (the
    branches are frozen in their own stage)."""
    branches = fused / "pretrain" / "branches"
    scores = branches / f"oof-{FOLDS}" / "features"
    _check_out_of_fold(branches, scores, "branch_scores")
    cfg = config_lib.load_workdir(str(fused))
    assert cfg.data.features_from == "branches" and cfg.vshnn.fusion_fit == "held_out"
    state = restore_selected(str(fused), Program(cfg).abstract_sharded_state())[0]
    assert set(state.params) == {"fusion"}
    # the branches stage is the video model and LMED-CF, its own scores [p, q] its features
    rec = pipeline.read_records(str(scores), "test_clips", [0], ("clip_features", "clip_landmarks", "branch_scores"))
    out = _forward(branches, {k: rec[k] for k in ("clip_features", "clip_landmarks")})
    want = np.concatenate([out["branch_logits"]["video"], out["branch_logits"]["landmark"]], -1)
    np.testing.assert_allclose(rec["branch_scores"], want, rtol=1e-4, atol=1e-4)
    assert json.loads((fused / "eval.json").read_text())["split"] == "test_clips"
