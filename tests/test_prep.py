"""`fergate prep`: bad input is counted and skipped, interrupted runs resume, machines split work."""

import glob
import json
import os
import subprocess
import sys

import cv2
import grain
import numpy as np
import pytest

from data_prep import prep
from fergate import face as F
from fergate.data import schema


def _records(out, split):
    files = sorted(glob.glob(os.path.join(out, f"{split}-*.array_record")))
    src = grain.sources.ArrayRecordDataSource(files)
    return [schema.decode(src[i]) for i in range(len(src))]


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory, photos):
    """A folder-per-class dataset with one good photo of each kind and every kind of bad input."""
    root = tmp_path_factory.mktemp("messy")
    for c in ("happy", "sad"):
        (root / c).mkdir()
    face = photos["astronaut"]
    cv2.imwrite(str(root / "happy" / "rgb.jpg"), face[..., ::-1])
    cv2.imwrite(str(root / "happy" / "grey.png"), cv2.cvtColor(face, cv2.COLOR_RGB2GRAY))
    cv2.imwrite(str(root / "happy" / "rgba.png"), np.dstack([face[..., ::-1], np.full(face.shape[:2], 255, np.uint8)]))
    cv2.imwrite(str(root / "sad" / "deep.png"), face[..., ::-1].astype(np.uint16) * 257)
    (root / "sad" / "notes.jpg").write_text("this is not an image")
    good = (root / "happy" / "rgb.jpg").read_bytes()
    (root / "sad" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    cv2.imwrite(str(root / "sad" / "noface.png"), np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8))
    cv2.imwrite(str(root / "sad" / "pixel.png"), np.zeros((1, 1, 3), np.uint8))
    os.symlink(root / "gone.jpg", root / "sad" / "dangling.jpg")  # unreadable
    return str(root)


def test_bad_input_is_skipped_and_counted(messy_folder, tmp_path):
    m = prep.run("folder", messy_folder, str(tmp_path), prep.PrepOptions(test_fraction=0), workers=1)
    assert m["complete"] and m["classes"] == ["happy", "sad"]
    assert sorted(m["folds"]) == m["splits"]["train"]["subjects"] == ["deep", "grey", "rgb", "rgba"]  # no skipped file
    assert m["splits"]["train"]["records"] == 4  # rgb, grey, rgba, 16-bit
    assert m["splits"]["train"]["per_class"] == {"happy": 3, "sad": 1}
    assert m["skipped"] == {"not_an_image": 1, "truncated": 1, "no_face": 1, "too_small": 1, "unreadable": 1}
    recs = _records(str(tmp_path), "train")
    assert all(r["face"].shape == (96, 96, 3) and r["patches"].shape == (68, 30, 30) for r in recs)
    sources = {os.path.basename(r["source"]) for r in recs}
    assert sources == {"rgb.jpg", "grey.png", "rgba.png", "deep.png"}


def test_a_stray_file_in_a_class_folder_is_skipped_and_no_subject(tmp_path, caplog):
    """notes.txt beside the photos is counted as not_an_image, never drawn as a held-out
    subject (a test split of one text file); hidden files (.DS_Store) are not items at all."""
    from data_prep import readers

    for c in ("happy", "sad"):
        (tmp_path / c).mkdir()
        for person in ("ann", "bob"):
            (tmp_path / c / f"{person}__{c}.jpg").write_bytes(b"")
    (tmp_path / "happy" / "notes.txt").write_text("taken on a Tuesday")
    (tmp_path / "sad" / ".DS_Store").write_bytes(b"")
    items = readers.reader("folder", str(tmp_path)).items()
    assert sorted(it.key for it in items) == ["train/happy/ann__happy.jpg", "train/happy/bob__happy.jpg",
                                              "train/happy/notes.txt", "train/sad/ann__sad.jpg",
                                              "train/sad/bob__sad.jpg"]
    stray = next(it for it in items if it.key.endswith("notes.txt"))
    assert stray.kind == "bad" and stray.params[0] == "not_an_image"
    with caplog.at_level("INFO", logger="data_prep"):
        held = prep.hold_out(items, 0.5)
    assert "1 of its 2 subjects" in caplog.text  # ann and bob; not "notes"
    assert {it.subject for it in held if it.split == "test"} in ({"ann"}, {"bob"})


def test_the_progress_lines_group_thousands_and_wait_for_a_measured_rate(tmp_path, caplog):
    """2,940 items -> 5 shards; the first progress line has no ETA (the workers' start-up
    would make it absurd), the last says how long it took. (Empty .jpg files: each is
    skipped without the face pipeline.)"""
    for c in ("happy", "sad"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(1470):
            (tmp_path / "src" / c / f"p{i}__{c}.jpg").write_bytes(b"")
    with caplog.at_level("INFO", logger="data_prep"):
        m = prep.run("folder", str(tmp_path / "src"), str(tmp_path / "out"),
                     prep.PrepOptions(test_fraction=0, records_per_file=600), workers=1)
    assert m["skipped"] == {"not_an_image": 2940}
    lines = [x for x in caplog.messages if x.startswith("[prep]")]
    assert lines[0] == "[prep] folder: 2,940 items -> 5 shards; this machine (0/1): 2,940 of 2,940 items left to do"
    progress = [x for x in lines if " items, " in x]
    assert progress[0].startswith("[prep] 1/2,940 items, first results after ") and "ETA" not in progress[0]
    assert progress[-1].startswith("[prep] 2,940/2,940 items, ") and " in all, 2,940 skipped" in progress[-1]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fergate", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (("prep", "/nonexistent/dir", "--dataset", "folder", "--out", "/tmp/x"),
     "source folder not found: /nonexistent/dir"),
    (("prep", "--dataset", "affectnet9", "--out", "/tmp/x"), "unknown dataset 'affectnet9'"),
])
def test_user_errors_are_one_line(args, message):
    r = _cli(*args)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def _keys(out):
    return sorted((s, r["source"], r["label"], r["landmarks"].tobytes())
                  for s in ("train", "test") for r in _records(out, s))


def test_rerun_after_interruption_neither_duplicates_nor_loses(sample_data, tmp_path, caplog):
    out = str(tmp_path / "again")
    opts, reader = prep.PrepOptions(records_per_file=16), {"size": 70, "clips": 7}
    prep.run("sample", None, out, opts, reader, workers=1)
    # an interrupted run: one shard never renamed (left as .tmp), one finished
    victim = sorted(glob.glob(os.path.join(out, "train-*.array_record")))[0]
    name = os.path.basename(victim)
    with open(os.path.join(out, ".stats", name + ".json")) as f:
        n_victim = json.load(f)["records"]
    os.rename(victim, os.path.join(out, ".tmp-" + name))
    caplog.clear()
    with caplog.at_level("INFO", logger="data_prep"):
        m = prep.run("sample", None, out, opts, reader, workers=1)
    assert f"{n_victim} of 77 items left to do" in caplog.messages[0]  # only the unfinished shard is redone
    assert m["complete"] and not glob.glob(os.path.join(out, ".tmp-*"))
    assert _keys(out) == _keys(sample_data)


def test_machines_split_the_work(sample_data, tmp_path):
    out = str(tmp_path / "split")
    opts, reader = prep.PrepOptions(records_per_file=16), {"size": 70, "clips": 7}
    m0 = prep.run("sample", None, out, opts, reader, workers=1, shard_index=0, num_shards=2)
    assert not m0["complete"]
    m1 = prep.run("sample", None, out, opts, reader, workers=1, shard_index=1, num_shards=2)
    assert m1["complete"]
    assert _keys(out) == _keys(sample_data)


def test_sample_manifest(sample_data):
    with open(os.path.join(sample_data, "manifest.json")) as f:
        m = json.load(f)
    assert m["schema_version"] == schema.SCHEMA_VERSION and m["complete"]
    tr, te = m["splits"]["train"], m["splits"]["test"]
    assert set(tr["subjects"]).isdisjoint(te["subjects"])  # subject-independent
    skipped = sum(tr["skipped"].values()) + sum(te["skipped"].values())
    assert tr["records"] + te["records"] + skipped == 70 and skipped < 10 and min(tr["per_class"].values()) > 0
    assert m["splits"]["train_clips"]["records"] + m["splits"].get("test_clips", {"records": 0})["records"] == 7
    assert "shape_predictor_68" in m["landmark_model"]
    clip = _records(sample_data, "train_clips")[0]
    assert clip["clip"].shape == (16, 64, 64, 3) and clip["clip_landmarks"].shape == (16, 68, 2)


def test_the_library_reaches_the_offline_stage_only_through_entry_points(monkeypatch):
    """No module of fergate imports data_prep (the offline stage builds on the library); what
    fergate needs of it (`fergate prep`, the built-in datasets, `bench --prep`) comes through
    entry points, and without them it is a one-line error that says how to get them."""
    import ast

    from fergate import plugins
    from fergate.errors import UserError

    root = os.path.join(os.path.dirname(__file__), "..", "fergate")
    for path in glob.glob(os.path.join(root, "**", "*.py"), recursive=True):
        for node in ast.walk(ast.parse(open(path).read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "data_prep" for n in names), path
    assert [e.module for e in plugins.provided(plugins.COMMANDS)] == ["data_prep.command"]
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    with pytest.raises(UserError, match="the built-in sample dataset .*no `fergate.builtin_data` entry point"):
        plugins.prepare_builtin("sample", {})
    with pytest.raises(UserError, match="no `fergate.prep_bench` entry point"):
        plugins.prep_bench([1], 1)


def _class_folder(root, counts: dict[str, int]) -> str:
    """A folder-per-class dataset of `counts` files per class, each its own subject."""
    for c, k in counts.items():
        os.makedirs(root / c)
        for i in range(k):
            (root / c / f"{c}{i}.jpg").write_bytes(b"")
    return str(root)


def test_held_out_subjects_give_the_test_split_every_class(tmp_path):
    """16 happy photos, 2 displeased and 2 surprised, one subject each, 20% held out: the 4
    subjects a random draw holds out (this seed's) miss a class; those held out have every
    class, and those left keep every class too."""
    from data_prep import readers

    items = readers.reader("folder", _class_folder(tmp_path, {"happy": 16, "displeased": 2, "surprise": 2})).items()
    subjects = sorted({it.subject for it in items})
    drawn = set(np.random.default_rng(0).permutation(subjects)[:4].tolist())
    assert len({it.label for it in items if it.subject in drawn}) < 3
    split = prep.hold_out(items, 0.2, seed=0)
    assert sum(it.split == "test" for it in split) == 4
    for name in ("train", "test"):
        assert {it.label for it in split if it.split == name} == {0, 1, 2}, name
    # every class in every subject: a plain random draw, as before
    same = [readers.Item(f"{s}/{c}", "train", c, s, "") for s in ("s0", "s1", "s2", "s3", "s4") for c in range(3)]
    assert {it.subject for it in prep.hold_out(same, 0.2, seed=0) if it.split == "test"} == \
        set(np.random.default_rng(0).permutation(["s0", "s1", "s2", "s3", "s4"])[:1].tolist())


def test_a_split_without_a_class_is_said_at_prep(photos, tmp_path, caplog):
    """One surprised subject, two happy ones, a third held out: the surprised one stays for
    training (the last with its class), and prep says in one line that `test` lacks it."""
    from fergate import face as F

    root = tmp_path / "src"
    for c, names in (("happy", ("astronaut", "grace_hopper")), ("surprise", ("astronaut",))):
        os.makedirs(root / c)
        for n in names:
            cv2.imwrite(str(root / c / f"{c}_{n}.png"), photos[n][..., ::-1])
    opts = prep.PrepOptions(face=F.FaceOptions(patches=False, identity=False), test_fraction=0.34)
    with caplog.at_level("INFO", logger="data_prep"):
        m = prep.run("folder", str(root), str(tmp_path / "out"), opts, workers=1)
    assert m["splits"]["test"]["per_class"] == {"happy": 1, "surprise": 0}
    assert m["splits"]["train"]["per_class"] == {"happy": 1, "surprise": 1}
    lines = [r.getMessage() for r in caplog.records if "lacks" in r.getMessage()]
    assert lines == ["[prep] test lacks surprise (accuracy on such a split says nothing of those classes)"]


#: the quickest face pipeline: no patches, no identity embedding; two records per shard
FAST = prep.PrepOptions(face=F.FaceOptions(patches=False, identity=False), test_fraction=0, records_per_file=2)


def _photo(path, image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image[..., ::-1])


def _sources(out) -> list[str]:
    return sorted(os.path.basename(r["source"]) for r in _records(out, "train"))


def test_a_rerun_brings_out_up_to_date_with_its_source(photos, tmp_path, caplog):
    """Added, replaced and removed photos: the shards made of them are redone, those the new
    plan has no place for removed, the others kept; the manifest always agrees with the
    records (`fergate verify` finds nothing wrong)."""
    from fergate.data import verify

    src, out = tmp_path / "src", str(tmp_path / "out")
    _photo(src / "happy" / "ann__1.jpg", photos["astronaut"])
    _photo(src / "sad" / "grace__1.jpg", photos["grace_hopper"])

    def again() -> dict:
        caplog.clear()
        with caplog.at_level("INFO", logger="data_prep"):
            m = prep.run("folder", str(src), out, FAST, workers=1)
        assert not [c for c in verify.verify(out, m) if c.problem]
        return m

    assert again()["splits"]["train"]["files"] == 1
    _photo(src / "happy" / "ann__2.jpg", photos["astronaut"][:, ::-1])  # a photo added: 3 items, 2 files
    m = again()
    assert m["splits"]["train"]["records"] == 3 and m["splits"]["train"]["per_class"] == {"happy": 2, "sad": 1}
    assert _sources(out) == ["ann__1.jpg", "ann__2.jpg", "grace__1.jpg"]
    assert any("removed 1 shards of an earlier preparation" in x and "train-00000-of-00001" in x
               for x in caplog.messages)
    again()
    assert "0 of 3 items left to do" in caplog.text  # nothing changed: nothing redone
    (src / "happy" / "ann__2.jpg").write_text("now a note")  # replaced under the same name
    m = again()
    assert m["splits"]["train"]["records"] == 2 and m["skipped"] == {"not_an_image": 1}
    assert "finished shards of" in caplog.text and "they are redone" in caplog.text
    (src / "sad" / "grace__1.jpg").unlink()  # removed
    m = again()
    assert _sources(out) == ["ann__1.jpg"] and m["splits"]["train"]["per_class"] == {"happy": 1, "sad": 0}


def test_a_rerun_with_other_options_is_refused_in_one_line_or_overwritten(photos, tmp_path, capsys):
    from helpers import run_fergate

    _photo(tmp_path / "src" / "happy" / "ann__1.jpg", photos["astronaut"])
    _photo(tmp_path / "src" / "sad" / "grace__1.jpg", photos["grace_hopper"])
    out = str(tmp_path / "out")
    args = ("prep", str(tmp_path / "src"), "--dataset", "folder", "--out", out, "--workers", "1", "--no_patches",
            "--no_identity", "--test_fraction", "0")
    assert run_fergate(*args) == 0
    before = open(os.path.join(out, "manifest.json")).read()
    capsys.readouterr()
    assert run_fergate(*args, "--face_size", "64") == 2
    assert capsys.readouterr().err == (f"fergate prep: error: --out {out} was prepared with face_size 96, this run "
                                       "asks 64: use another --out, or --overwrite to prepare it anew\n")
    assert open(os.path.join(out, "manifest.json")).read() == before  # nothing touched
    assert run_fergate(*args, "--face_size", "64", "--overwrite") == 0
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["options"]["face"]["face_size"] == 64 and m["splits"]["train"]["records"] == 2
    assert all(r["face"].shape == (64, 64, 3) for r in _records(out, "train"))


def test_a_prep_that_cannot_fit_is_refused_before_any_work(photos, tmp_path, monkeypatch, capsys):
    """The space estimate bounds what prep writes (within 2x of the shards it wrote), and a
    device with less free space than it is refused in one line before a face is processed."""
    from helpers import run_fergate

    from data_prep import readers

    _photo(tmp_path / "src" / "happy" / "ann__1.jpg", photos["astronaut"])
    _photo(tmp_path / "src" / "sad" / "grace__1.jpg", photos["grace_hopper"])
    args = ("prep", str(tmp_path / "src"), "--dataset", "folder", "--workers", "1", "--no_patches", "--no_identity",
            "--test_fraction", "0")
    assert run_fergate(*args, "--out", str(tmp_path / "fits")) == 0
    written = sum(os.path.getsize(p) for p in glob.glob(str(tmp_path / "fits" / "*.array_record")))
    opts = prep.PrepOptions(face=F.FaceOptions(patches=False, identity=False), test_fraction=0)
    needed = prep.space_needed(readers.reader("folder", str(tmp_path / "src")).items(), opts)
    assert written <= needed <= 2 * written, (written, needed)
    monkeypatch.setattr(prep, "free_bytes", lambda path: needed - 1)
    capsys.readouterr()
    assert run_fergate(*args, "--out", str(tmp_path / "full")) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"fergate prep: error: --out {tmp_path / 'full'}: its 2 items need "
                                               "about ") and "free: free space or choose another --out" in err[0]
    assert not glob.glob(str(tmp_path / "full" / "*.array_record"))


def test_prep_splits_reproduces_a_protocol_and_its_digest_tells_a_moved_subject(tmp_path):
    """A protocol exported from one preparation (`fergate protocol export`), one subject moved
    from `train` to `test` and the folds renumbered by hand: `fergate prep --splits` puts every
    subject exactly where the file says (not where --test_fraction would), the manifest has the
    file's folds, and the result's exported protocol has the file's digest, which differs from
    the first preparation's by the one moved subject."""
    from fergate.data import protocol

    opts, reader = prep.PrepOptions(face=F.FaceOptions(patches=False, identity=False)), {"size": 21, "clips": 0}
    first = str(tmp_path / "first")
    prep.run("sample", None, first, opts, reader, workers=1)
    r = _cli("protocol", "export", first, "--out", str(tmp_path / "p0.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    p0 = json.load(open(tmp_path / "p0.json"))
    assert f"digest {p0['digest']}" in r.stderr and p0["digest"] == protocol.digest(p0["splits"], p0["folds"])
    moved = p0["splits"]["train"][0]
    p1 = {"format": protocol.FORMAT, "splits": {"train": p0["splits"]["train"][1:],
                                                "test": sorted(p0["splits"]["test"] + [moved])},
          "folds": {s: i % 3 for i, s in enumerate(sorted(p0["folds"]))}}
    (tmp_path / "p1.json").write_text(json.dumps(p1))
    again = str(tmp_path / "again")
    r = _cli("prep", "--dataset", "sample", "--out", again, "--splits", str(tmp_path / "p1.json"), "--workers", "1",
             "--no_patches", "--no_identity", "--size", "21", "--clips", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.load(open(os.path.join(again, "manifest.json")))
    assert {s: m["splits"][s]["subjects"] for s in ("train", "test")} == p1["splits"]
    assert m["folds"] == p1["folds"] and len(m["fold_counts"]) == 3
    p1_digest = protocol.digest(p1["splits"], p1["folds"])
    assert m["protocol"]["digest"] == protocol.of_manifest(m)["digest"] == p1_digest != p0["digest"]
    # moving the subject back is the first preparation's splits, with p1's folds
    assert protocol.digest(p0["splits"], p1["folds"]) != p1_digest
    # a file edited after it was written is refused in one line
    (tmp_path / "p2.json").write_text(json.dumps({**p0, "splits": p1["splits"]}))
    r = _cli("prep", "--dataset", "sample", "--out", str(tmp_path / "x"), "--splits", str(tmp_path / "p2.json"))
    assert r.returncode == 2 and "was edited since it was written" in r.stderr and len(r.stderr.splitlines()) == 1
