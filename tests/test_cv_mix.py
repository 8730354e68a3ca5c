"""Subject-independent k-fold cross-validation (`fergate cv`) and training on mixed datasets."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fergate import config as C
from fergate.data import labels, pipeline, shards
from fergate.errors import UserError
from fergate.train import cv, program
from fergate.train.data import DataPlan, resolve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.modul.dist_hidden=(32, 16)", "--config.modul.patch_convs=(4, 8, 8)",
         "--config.modul.patch_hidden=(32, 16)", "--config.modul.gate_convs=(4, 4, 4)",
         "--config.modul.gate_hidden=8", "--config.input.batch_size=8", "--config.eval.batch_size=16",
         "--config.train.eval_every=0"]


def test_subject_folds_are_disjoint_deterministic_and_class_balanced():
    rng = np.random.default_rng(0)
    ys, subjects = [], []
    for s in range(60):  # subjects with 3-20 records of skewed classes
        n = int(rng.integers(3, 21))
        ys += rng.choice(7, n, p=[0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05]).tolist()
        subjects += [f"s{s:02d}"] * n
    folds = shards.subject_folds(ys, subjects, 10)
    assert folds == shards.subject_folds(ys[::-1], subjects[::-1], 10)  # order of the records does not matter
    assert set(folds) == set(subjects) and set(folds.values()) == set(range(10))
    counts = np.zeros((10, 7))
    for y, s in zip(ys, subjects):
        counts[folds[s], y] += 1
    # every class close to its 1/k share in every fold: within the largest subject's records
    # of it; round-robin over sorted names is measurably worse on the same data
    largest = max(np.bincount([y for y, s2 in zip(ys, subjects) if s2 == s], minlength=7).max() for s in set(subjects))
    assert np.abs(counts - counts.sum(0) / 10).max() <= largest
    rr = {s: i % 10 for i, s in enumerate(sorted(set(subjects)))}
    rr_counts = np.zeros((10, 7))
    for y, s in zip(ys, subjects):
        rr_counts[rr[s], y] += 1
    assert np.abs(counts - counts.sum(0) / 10).sum() < np.abs(rr_counts - rr_counts.sum(0) / 10).sum()


def test_manifest_records_folds_and_a_fold_holds_out_its_subjects(sample_data):
    manifest = pipeline.read_manifest(sample_data)
    everyone = {s for v in manifest["splits"].values() for s in v["subjects"]}
    assert set(manifest["folds"]) == everyone
    n = sum(v["records"] for v in manifest["splits"].values())
    assert np.sum(manifest["fold_counts"]) == n and len(manifest["fold_counts"]) == shards.FOLDS
    pool = "train+test"
    subjects = pipeline.split_subjects(pipeline.split_files(sample_data, pool))
    assert len(subjects) == manifest["splits"]["train"]["records"] + manifest["splits"]["test"]["records"]
    seen = []
    for fold in range(3):
        cfg = C.load("configs/modul.py:smoke=True", [f"--config.data.dir={sample_data}", f"--config.data.fold={fold}",
                                                     "--config.data.folds=3", "--config.data.val_split=val"])
        p = DataPlan.build(cfg, data=sample_data).portions
        assert p.train.split == p.eval.split == pool
        train, val, held = (set(subjects[x.records]) for x in (p.train, p.val, p.eval))
        assert held and train and val and not (train | val) & held and not train & val  # subject-independent
        assert len(p.train.records) + len(p.val.records) + len(p.eval.records) == len(subjects)
        seen += list(p.eval.records)
    assert sorted(seen) == list(range(len(subjects)))  # every record held out exactly once
    cfg = C.load("configs/modul.py:smoke=True", [f"--config.data.dir={sample_data}", "--config.data.fold=3",
                                                 "--config.data.folds=3"])
    with pytest.raises(UserError, match="data.fold=3 of data.folds=3"):
        program.validate(cfg)


def test_cv_folds_as_separate_jobs_then_aggregate(sample_data, tmp_path):
    """Two folds run as separate processes (as on two machines), then `--aggregate`: the
    means are the folds' eval.json means, the confusion matrices summed; a fold that failed
    is reported, not averaged in."""
    w = tmp_path / "cv"
    base = [sys.executable, "-m", "fergate", "cv", "--config", "configs/modul.py:smoke=True", "--workdir", str(w),
            "--folds", "3", f"--config.data.dir={sample_data}", "--config.train.steps=6", *SMALL]
    for fold in (0, 1):
        r = subprocess.run([*base, "--fold", str(fold)], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
    assert "waiting for 2" in r.stdout and not (w / "cv.json").exists()
    os.makedirs(cv.fold_dir(str(w), 2))
    with open(os.path.join(cv.fold_dir(str(w), 2), "fold.json"), "w") as f:  # as a diverged fold leaves it
        json.dump({"status": "failed", "error": "TrainingDiverged: loss became nan"}, f)
    r = subprocess.run([*base, "--aggregate"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.load(open(w / "cv.json"))
    evals = [json.load(open(os.path.join(cv.fold_dir(str(w), i), "eval.json"))) for i in (0, 1)]
    assert rep["finished"] == [0, 1] and list(rep["failed"]) == ["2"] and "nan" in rep["failed"]["2"]
    assert rep["accuracy"]["mean"] == pytest.approx(np.mean([e["accuracy"] for e in evals]))
    assert rep["mean_class_accuracy"]["std"] == pytest.approx(np.std([e["mean_class_accuracy"] for e in evals],
                                                                     ddof=1))
    assert rep["confusion_matrix"] == (np.add(*[np.asarray(e["confusion_matrix"]) for e in evals])).tolist()
    assert "1 failed (2) (not averaged in)" in r.stdout
    assert (w / "confusion_matrix.png").exists()
    # each fold evaluated exactly the records of its subjects (3 folds: recomputed, not the manifest's 10)
    files = pipeline.split_files(sample_data, "train+test")
    ys, subjects = pipeline.split_labels(files), pipeline.split_subjects(files)
    folds = shards.subject_folds(ys, subjects, 3)
    assert [e["examples"] for e in evals] == [sum(folds[s] == f for s in subjects) for f in (0, 1)]
    assert evals[0]["fold"] == 0 and evals[1]["split"] == "train+test (fold 1 of 3: held out)"


def test_cv_stops_on_a_signal_and_refuses_what_would_mislead(sample_data, tmp_path, monkeypatch):
    """Ctrl-C / SIGTERM in a fold stops the whole run (the fold resumes later), not just the
    fold; more folds than subjects is said before any training; an eval.json that is not the
    fold's held-out evaluation is not averaged in."""
    from fergate.errors import Interrupted
    from fergate.train import trainer

    spec, over = "configs/modul.py:smoke=True", [f"--config.data.dir={sample_data}"]

    def interrupted(cfg, workdir):
        raise Interrupted("SIGTERM at step 3: checkpoint saved", 15)

    monkeypatch.setattr(trainer, "train", interrupted)
    with pytest.raises(Interrupted):
        cv.run(spec, over, str(tmp_path / "cv"), 2)
    assert json.load(open(tmp_path / "cv" / "fold-00" / "fold.json"))["status"] == "interrupted"
    assert not (tmp_path / "cv" / "fold-01").exists()  # the next fold did not start
    subjects = len(pipeline.split_entry(pipeline.read_manifest(sample_data), "train+test")["subjects"])
    with pytest.raises(UserError, match=f"has {subjects} subjects in train\\+test, so at most {subjects}"):
        cv.run(spec, over, str(tmp_path / "cv2"), subjects + 1)
    out = tmp_path / "cv3" / "fold-00"
    out.mkdir(parents=True)
    (out / "fold.json").write_text(json.dumps({"status": "done"}))
    (out / "eval.json").write_text(json.dumps({"split": "train", "classes": ["a"], "accuracy": 1.0}))
    with pytest.raises(UserError, match="is not fold 0 of 2's held-out evaluation"):
        cv.aggregate(str(tmp_path / "cv3"), 2)


def test_mixed_groups_are_drawn_by_weight_and_classes_balanced_within():
    ys = np.array([0] * 80 + [1] * 20 + [0] * 10 + [2] * 10)
    groups = np.array([0] * 100 + [1] * 20)
    s = pipeline.EpochSampler(ys, seed=1, groups=groups, weights=[1.0, 3.0])
    picked = np.array([s[i][0] for i in range(s.epoch_len)])
    share = np.mean(groups[picked] == 1)
    assert share == pytest.approx(0.75, abs=0.01)  # 3:1, though the second group has 1/6 of the records
    s = pipeline.EpochSampler(ys, seed=1, groups=groups, weights=[1.0, 1.0], balance=True)
    picked = np.array([s[i][0] for i in range(s.epoch_len)])
    first = picked[groups[picked] == 0]
    assert np.mean(ys[first] == 1) == pytest.approx(0.5, abs=0.02)  # balanced within the first group
    # without groups, the plain balanced epoch is unchanged: every class round(n / classes) times
    s = pipeline.EpochSampler(ys, seed=1, balance=True)
    assert np.bincount(ys[s.epoch(0)]).tolist() == [40, 40, 40]


def test_labels_map_by_name_and_unmappable_ones_are_clear():
    assert labels.relabel(labels.DATASET_CLASSES["fer2013"], labels.BASIC7) == [2, 5, 4, 1, 3, 6, 0]
    assert labels.relabel(labels.DATASET_CLASSES["rafdb"], labels.BASIC7) == [6, 4, 5, 1, 3, 2, 0]
    with pytest.raises(UserError, match=r"class contempt is not one of .*'contempt=-'"):
        labels.relabel(labels.DATASET_CLASSES["ckplus"], labels.BASIC7, what="CK+")
    table = labels.relabel(labels.DATASET_CLASSES["ckplus"], labels.BASIC7, labels.parse_mapping(["contempt=-"]))
    assert table[2] == -1 and table[5] == labels.BASIC7.index("happiness")
    assert labels.relabel(["smile"], ["happiness"], labels.parse_mapping(["smile=happy"])) == [0]
    with pytest.raises(UserError, match="expected FROM=TO"):
        labels.parse_mapping(["contempt"])


@pytest.fixture(scope="module")
def renamed(sample_data, tmp_path_factory):
    """The sample data with its classes spelled and ordered as FER-2013 names them (the
    records' labels remapped accordingly in the manifest): another dataset's label set."""
    out = str(tmp_path_factory.mktemp("renamed") / "data")
    shutil.copytree(sample_data, out)
    m = json.load(open(os.path.join(out, "manifest.json")))
    fer = labels.DATASET_CLASSES["fer2013"]
    # a record labelled k means BASIC7[k]; FER-2013 puts that class at index fer_index[k]
    fer_index = labels.relabel(labels.BASIC7, fer)
    for f in glob.glob(os.path.join(out, ".stats", "*.array_record.json")):  # each shard's sidecar
        path = f
        st = json.load(open(path))
        st["labels"] = [fer_index[y] for y in st["labels"]]
        json.dump(st, open(path, "w"))
    m["classes"] = list(fer)
    m["dataset"] = "fer2013-like"
    json.dump(m, open(os.path.join(out, "manifest.json"), "w"))
    return out, fer_index


def test_mixing_maps_each_datasets_labels_onto_the_config_classes(sample_data, renamed, tmp_path):
    other, fer_index = renamed
    cfg = C.load("configs/modul.py:smoke=True",
                 [f"--config.data.dir={sample_data}", f"--config.data.mix=('{other}=3',)"])
    (m,) = DataPlan.build(cfg, data=sample_data).mix
    assert m.weight == 3 and [m.relabel[fer_index[k]] for k in range(7)] == list(range(7))
    # the mixed stream: its records (indices past the main split's) carry their mapped label;
    # the sidecar labels of `renamed` are FER-2013's, the record fields still the sample's
    mine, theirs = pipeline.split_files(sample_data, "train"), pipeline.split_files(other, "train")
    n_main, files = len(pipeline.split_labels(mine)), mine + theirs
    table = np.concatenate([pipeline.split_labels(mine), np.asarray(m.relabel)[pipeline.split_labels(theirs)]])
    load = pipeline.Load(files, ("label",), labels=table)
    for i in (0, n_main, n_main + 3):
        rec = load.map((i, True))
        stored = pipeline.Load(files, ("label",)).map((i, True))["label"]
        assert rec["label"] == stored  # the sample's own label, after FER-2013's spelling and order were mapped back
    # training draws 3:1 from the mixed dataset and runs end to end
    w = str(tmp_path / "w")
    r = subprocess.run([sys.executable, "-m", "fergate", "train", "--config", "configs/modul.py:smoke=True",
                        "--workdir", w, f"--config.data.dir={sample_data}", f"--config.data.mix=('{other}=3',)",
                        "--config.train.steps=4", *SMALL], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "at weight 3 against 1" in r.stdout, r.stderr[-3000:]
    # a dataset prepared another way is refused, naming the option
    m2 = json.load(open(os.path.join(other, "manifest.json")))
    m2["options"]["face"]["face_size"] = 48
    odd = str(tmp_path / "odd")
    shutil.copytree(other, odd)
    json.dump(m2, open(os.path.join(odd, "manifest.json"), "w"))
    cfg = C.load("configs/modul.py:smoke=True", [f"--config.data.dir={sample_data}", f"--config.data.mix=('{odd}',)"])
    data = DataPlan.build(cfg, data=sample_data)  # evaluation needs none of the mixed datasets
    with pytest.raises(UserError, match=r"prepared with face_size=48, the main data with face_size=96"):
        _ = data.mix
    cfg = C.load("configs/modul.py:smoke=True", [f"--config.data.dir={sample_data}", f"--config.data.mix=('{other}',)",
                                                 "--config.data.label_map=('suprise=-',)"])
    data = DataPlan.build(cfg, data=sample_data)
    with pytest.raises(UserError, match="label_map names suprise, a class of none of the data"):
        _ = data.mix


def test_training_on_fewer_classes_drops_the_rest_from_training_and_evaluation(sample_data, tmp_path):
    """data.classes naming 6 of the 7 classes with neutral dropped: no neutral record is
    drawn for training, and evaluation counts only the 6 classes' records."""
    six = tuple(c for c in labels.BASIC7 if c != "neutral")
    cfg = C.load("configs/modul.py:smoke=True", [f"--config.data.dir={sample_data}",
                                                 "--config.data.label_map=('neutral=-',)"])
    data = DataPlan.build(cfg, data=sample_data)
    manifest = data.manifest
    assert cfg.modul.num_classes == 6 and cfg.data.classes == six  # the dropped class is no output
    ds = data.input_pipeline("train", train=True)
    it = iter(ds)
    got = np.concatenate([next(it)["label"] for _ in range(10)])
    assert got.max() == 5 and len(set(got.tolist())) == 6
    ev = data.input_pipeline("test", train=False)
    masks = np.concatenate([b["mask"] for b in ev])
    assert masks.sum() == manifest["splits"]["test"]["records"] - manifest["splits"]["test"]["per_class"]["neutral"]
    cfg = C.load("configs/modul.py:smoke=True", [f"--config.data.dir={sample_data}", f"--config.data.classes={six}"])
    with pytest.raises(UserError, match="class neutral is not one of"):
        resolve(cfg, manifest)


def test_eval_on_another_dataset_maps_its_classes_by_name(sample_data, renamed, tmp_path):
    """`fergate eval --data` on the sample data's copy whose classes are spelled and ordered as
    FER-2013's (angry, ..., neutral): the same records, so the same confusion matrix as the
    model's evaluation on its own test split, once its labels are mapped back by name; eval.json
    names the other data, its fingerprint and protocol digest. A class the model lacks is a
    one-line error naming --label_map, which maps it onto one of the model's or drops it."""
    from fergate.data import protocol

    other, fer_index = renamed
    w = str(tmp_path / "w")
    r = subprocess.run([sys.executable, "-m", "fergate", "train", "--config", "configs/modul.py:smoke=True",
                        "--workdir", w, f"--config.data.dir={sample_data}", "--config.train.steps=4", *SMALL],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    own = json.load(open(os.path.join(w, "eval.json")))
    assert own["data_fingerprint"] == shards.fingerprint(pipeline.read_manifest(sample_data))

    def evaluate(data, *extra):
        return subprocess.run([sys.executable, "-m", "fergate", "eval", "--workdir", w, "--data", data, *extra],
                              capture_output=True, text=True, cwd=REPO)

    r = evaluate(other)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.load(open(os.path.join(w, f"eval-{os.path.basename(other)}-test", "eval.json")))
    m = pipeline.read_manifest(other)
    assert rep["confusion_matrix"] == own["confusion_matrix"] and rep["classes"] == own["classes"]
    assert rep["data"] == other and rep["dataset"] == "fer2013-like" and rep["split"] == "test"
    assert rep["data_fingerprint"] == shards.fingerprint(m) != own["data_fingerprint"]
    assert rep["protocol_digest"] == protocol.of_manifest(m)["digest"] == own["protocol_digest"]  # same subjects
    # FER-2013's "neutral" renamed to a class the model lacks
    calm = str(tmp_path / "calm")
    shutil.copytree(other, calm)
    m["classes"] = [("calm" if c == "neutral" else c) for c in m["classes"]]
    json.dump(m, open(os.path.join(calm, "manifest.json"), "w"))
    r = evaluate(calm)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]
    assert "class calm is not one of neutral" in r.stderr and "--label_map calm=CLASS" in r.stderr
    r = evaluate(calm, "--label_map", "calm=-", "--out", str(tmp_path / "dropped"))
    assert r.returncode == 0, r.stderr[-3000:]
    dropped = json.load(open(tmp_path / "dropped" / "eval.json"))
    neutral = own["classes"].index("neutral")
    assert dropped["examples"] == own["examples"] - sum(own["confusion_matrix"][neutral])
    assert dropped["absent_classes"] == ["neutral"]
