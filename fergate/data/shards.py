"""ArrayRecord shard writing: atomic files, per-shard stats, and the dataset manifest (for
`fergate prep` and for `fergate features`, which writes a model's outputs into a copy of the data).

A shard is written as `.tmp-<name>` and renamed when complete, after its stats sidecar
(`.stats/<name>.json`: labels, subjects, skipped items, and the per-subject sums and counts
of the landmarks, from which a reader gets a subject's mean face shape without reading the
records) is in place. So a shard file under
its final name is always whole, an interrupted run redoes only the shards it had not
finished, and the manifest is assembled from the sidecars of the shards that exist, by
whichever machine finishes last (`write_manifest`).
"""

from __future__ import annotations

import collections
import json
import os
import time

import numpy as np

from fergate.data import schema
from fergate.data.schema import SCHEMA_VERSION


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def stats_path(out: str, name: str) -> str:
    return os.path.join(out, ".stats", name + ".json")


class ShardWriter:
    """Writes one shard atomically: records go to a temporary file renamed on `close`."""

    def __init__(self, out: str, name: str):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.out, self.name = out, name
        self.tmp = os.path.join(out, ".tmp-" + name)
        self.writer = ArrayRecordWriter(self.tmp, "group_size:1")
        self.labels: list[int] = []
        self.subjects: list[str] = []
        self.skipped: collections.Counter = collections.Counter()
        self.skipped_items: list[tuple[str, str]] = []
        self.landmark_sums: dict[str, np.ndarray] = {}
        self.landmark_counts: collections.Counter = collections.Counter()

    def write(self, data: bytes, label: int, subject: str) -> None:
        self.writer.write(data)
        self.labels.append(int(label))
        self.subjects.append(subject)
        if "landmarks" in schema.read_header(data)[1]["fields"]:
            lm = schema.decode(data, ("landmarks",))["landmarks"].astype(np.float64)
            self.landmark_sums[subject] = self.landmark_sums.get(subject, 0.0) + lm
            self.landmark_counts[subject] += 1

    def skip(self, key: str, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.skipped_items) < 1000:
            self.skipped_items.append((key, reason))

    def close(self) -> None:
        self.writer.close()
        stats = {"records": len(self.labels), "labels": self.labels, "subjects": self.subjects,
                 "skipped": dict(self.skipped), "skipped_items": self.skipped_items,
                 "landmark_sums": {k: v.tolist() for k, v in self.landmark_sums.items()},
                 "landmark_counts": dict(self.landmark_counts)}
        path = stats_path(self.out, self.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(stats, f)
        os.replace(path + ".tmp", path)
        os.replace(self.tmp, os.path.join(self.out, self.name))


def shard_done(out: str, name: str) -> bool:
    return os.path.exists(os.path.join(out, name)) and os.path.exists(stats_path(out, name))


def subject_folds(subjects: list[str], k: int = 10) -> dict[str, int]:
    """Subject-independent k-fold assignment (round-robin over sorted subjects)."""
    return {s: i % k for i, s in enumerate(sorted(set(subjects)))}


def write_manifest(out: str, expected: dict[str, int], info: dict) -> dict:
    """Assembles `manifest.json` from the stats of all finished shards; `complete` says
    whether every expected shard (split -> file count) is there; `folds` assigns the
    subjects of the written records (skipped items are no subjects) to 10 folds."""
    classes = info["classes"]
    splits, skipped, missing = {}, collections.Counter(), 0
    for split, count in expected.items():
        per_class, subjects, records, split_skipped = collections.Counter(), set(), 0, collections.Counter()
        for i in range(count):
            name = shard_name(split, i, count)
            if not shard_done(out, name):
                missing += 1
                continue
            with open(stats_path(out, name)) as f:
                st = json.load(f)
            records += st["records"]
            per_class.update(classes[c] for c in st["labels"])
            subjects.update(st["subjects"])
            split_skipped.update(st["skipped"])
        skipped.update(split_skipped)
        splits[split] = {"records": records, "files": count,
                         "per_class": {c: per_class.get(c, 0) for c in classes},
                         "subjects": sorted(subjects), "skipped": dict(split_skipped)}
    folds = subject_folds([s for v in splits.values() for s in v["subjects"]])
    manifest = {"schema_version": SCHEMA_VERSION, **info, "splits": splits, "folds": folds,
                "skipped": dict(skipped), "complete": missing == 0, "missing_shards": missing,
                "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = os.path.join(out, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out, "manifest.json"))
    return manifest

