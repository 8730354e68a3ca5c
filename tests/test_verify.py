"""Faults in prepared data, each named in one line: `fergate verify` tells damaged, changed,
truncated and stray shards from good ones; reading a damaged shard (in this process, in
grain's workers, in training) stops naming the shard, the record and `fergate verify`; a
workdir refuses to resume on data prepared again since it started."""

import json
import os
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from helpers import RESUME_AUGMENT, RESUME_STEPS, run_fergate, train_cmd

from fergate.data import pipeline, shards
from fergate.data import verify as V
from fergate.errors import UserError
from fergate.train.trainer import check_workdir_data


def _copy(sample_data, tmp_path, name="data") -> str:
    """A copy of the shared sample data to damage (never the shared one)."""
    return shutil.copytree(sample_data, str(tmp_path / name))


def _names(data, split) -> list[str]:
    files = json.load(open(os.path.join(data, "manifest.json")))["splits"][split]["files"]
    return [shards.shard_name(split, i, files) for i in range(files)]


def _flip(path) -> None:
    """16 bytes inverted in the middle of the file (past a 64 KiB block's header): inside a
    record's chunk."""
    data = bytearray(open(path, "rb").read())
    mid = len(data) // 2 // 65536 * 65536 + 1000
    data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    open(path, "wb").write(data)


def _truncate(path) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


def _reverse(path) -> None:
    """The same records written again in reverse order: every one reads, the file differs."""
    reader = ArrayRecordReader(path)
    records = reader.read_all()
    reader.close()
    writer = ArrayRecordWriter(path, "group_size:1")
    for r in reversed(records):
        writer.write(r)
    writer.close()


def _damaged_copy(sample_data, tmp_path, damage=_flip, split="train", name="data") -> tuple[str, str]:
    """A copy of the sample data whose first `split` shard `damage` changed, and that shard's name."""
    data = _copy(sample_data, tmp_path, name)
    shard = _names(data, split)[0]
    damage(os.path.join(data, shard))
    return data, shard


def test_verify_names_each_damaged_changed_truncated_and_stray_shard(sample_data, tmp_path, capsys):
    assert run_fergate("verify", sample_data) == 0
    lines = capsys.readouterr().out.splitlines()
    manifest = pipeline.read_manifest(sample_data)
    assert len(lines) == sum(v["files"] for v in manifest["splits"].values()) + 1
    assert all(line.startswith("OK ") for line in lines[:-1])
    assert lines[-1].endswith("every record reads, as prep wrote it")

    data = _copy(sample_data, tmp_path)
    train, test = _names(data, "train"), _names(data, "test")
    _flip(os.path.join(data, train[0]))
    _reverse(os.path.join(data, train[1]))
    _truncate(os.path.join(data, test[-1]))
    stray = "train-00000-of-00009.array_record"
    shutil.copy(os.path.join(data, train[2]), os.path.join(data, stray))
    assert run_fergate("verify", data) == 1
    lines = capsys.readouterr().out.splitlines()
    by_shard = {line.split()[1]: line for line in lines[:-1]}
    assert re.fullmatch(rf"DAMAGED +{train[0]}  record \d+ of \d+ cannot be read \(Corrupted Riegeli/records file: "
                        r"[a-z ]+ hash mismatch\)", by_shard[train[0]])
    assert by_shard[train[1]].startswith("CHANGED") and "its SHA-256 is not the one prep recorded" in by_shard[train[1]]
    assert by_shard[test[-1]].startswith("DAMAGED") and "its end is damaged" in by_shard[test[-1]]
    assert by_shard[stray].startswith("EXTRA")
    assert by_shard[train[3]].startswith("OK ")
    assert lines[-1].startswith(f"[verify] {data}: 4 of {len(lines) - 1} shards have problems (2 damaged, 1 changed "
                                f"since prep, 1 not in the manifest): delete each such shard and its .stats/NAME.json, "
                                f"then rerun `fergate prep --dataset sample --out {data}`")

    assert run_fergate("verify", str(tmp_path)) == 2  # no prepared data: a usage error
    err = capsys.readouterr().err
    assert err == f"fergate verify: error: {tmp_path} holds no manifest.json: not a `fergate prep` output (or prep " \
                  "has not finished)\n"


def test_reading_a_damaged_shard_stops_in_one_line_naming_it_in_process_and_in_workers(sample_data, tmp_path):
    data, shard = _damaged_copy(sample_data, tmp_path)
    record = int(re.search(r"record (\d+)", V.check_shard(data, shard, None).detail)[1])
    for workers in (0, 1):  # grain's worker processes hand the same message back
        with pytest.raises(UserError) as e:
            for _ in pipeline.make_dataset(data, "train", ("face",), 4, train=False, workers=workers):
                pass
        assert re.fullmatch(rf"damaged shard {data}/{shard}: record {record} cannot be read \(Corrupted "
                            rf"Riegeli/records file: [a-z ]+ hash mismatch\); run `fergate verify {data}` to check "
                            "every shard and see what to do", str(e.value))
    # a truncated shard reads as fewer records without an error: every later index would shift
    cut, shard = _damaged_copy(sample_data, tmp_path, _truncate, "test", "cut")
    with pytest.raises(UserError) as e:
        next(iter(pipeline.make_dataset(cut, "test", ("face",), 4, train=False)))
    assert re.match(rf"damaged shard {cut}/{shard}: it (holds 0 records, prep wrote \d+|cannot be opened)",
                    str(e.value))


def test_a_workdir_resumes_only_on_the_data_it_trained_on(uninterrupted, sample_data, tmp_path):
    saved = json.load(open(uninterrupted / "data.json"))
    assert saved["fingerprint"] == shards.fingerprint(pipeline.read_manifest(sample_data))
    assert saved["dir"] == sample_data
    w = shutil.copytree(uninterrupted, tmp_path / "w")
    json.dump({**saved, "fingerprint": "0123456789ab", "dir": "/data/before"}, open(w / "data.json", "w"))
    r = subprocess.run(train_cmd(w, sample_data, f"--config.train.steps={RESUME_STEPS}", RESUME_AUGMENT),
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr[-2000:]
    assert f"workdir {w} trained on data 0123456789ab (/data/before), this run reads data {saved['fingerprint']} " \
           f"({sample_data}): it was prepared again since" in r.stderr

    plan = SimpleNamespace(fingerprint="aaaaaaaaaaaa", dir="/data/now")
    json.dump({"dataset": "sample"}, open(w / "data.json", "w"))
    check_workdir_data(str(w), plan)  # a workdir from before fingerprints resumes
    json.dump({"fingerprint": "0123456789ab"}, open(w / "data.json", "w"))
    shutil.rmtree(w / "checkpoints")
    check_workdir_data(str(w), plan)  # no checkpoint: nothing to resume, the data is free to change


def test_training_on_a_damaged_shard_stops_in_one_line(sample_data, tmp_path):
    data, shard = _damaged_copy(sample_data, tmp_path)
    r = subprocess.run(train_cmd(tmp_path / "w", data, "--config.train.steps=6"), capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith(f"fergate train: error: damaged shard {data}/{shard}: record ")
    assert f"run `fergate verify {data}`" in r.stderr and len(r.stderr.splitlines()) == 1


def test_the_fingerprint_follows_how_the_records_were_made_not_where_or_when(sample_data):
    m = pipeline.read_manifest(sample_data)
    same = {**m, "written": "2030-01-01T00:00:00", "source": "/elsewhere"}
    assert shards.fingerprint(same) == shards.fingerprint(m)
    other = {**m, "options": {**m["options"], "face": {**m["options"]["face"], "face_size": 64}}}
    assert shards.fingerprint(other) != shards.fingerprint(m)
    name = next(iter(m["shards"]))
    added = {**m, "shards": {**m["shards"], name: {**m["shards"][name], "inputs": "another item"}}}
    assert shards.fingerprint(added) != shards.fingerprint(m)
