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
import hashlib
import json
import os
import time
from collections.abc import Sequence

import numpy as np

from fergate.data import schema
from fergate.data.schema import SCHEMA_VERSION


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def stats_path(out: str, name: str) -> str:
    return os.path.join(out, ".stats", name + ".json")


class ShardWriter:
    """Writes one shard atomically: records go to a temporary file renamed on `close`;
    `inputs` (prep's digest of the items and options the shard is made of) goes into its
    sidecar, so that a rerun tells a shard made of other inputs from a finished one."""

    def __init__(self, out: str, name: str, inputs: str | None = None):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.out, self.name, self.inputs = out, name, inputs
        self.tmp = os.path.join(out, ".tmp-" + name)
        self.writer = ArrayRecordWriter(self.tmp, "group_size:1")
        self.labels: list[int] = []
        self.subjects: list[str] = []
        self.skipped: collections.Counter = collections.Counter()
        self.skipped_items: list[tuple[str, str]] = []
        self.landmark_sums: dict[str, np.ndarray] = {}
        self.landmark_counts: collections.Counter = collections.Counter()
        self.crop_fitted: list[int] = []  #: records whose landmarks were fitted in the whole crop
        self.box_sources: collections.Counter = collections.Counter()

    def write(self, data: bytes, label: int, subject: str) -> None:
        self.writer.write(data)
        self.labels.append(int(label))
        self.subjects.append(subject)
        wanted = tuple(f for f in ("box_source", "landmarks") if f in schema.read_header(data)[1]["fields"])
        rec = schema.decode(data, wanted) if wanted else {}
        if "box_source" in rec:
            source = schema.BOX_SOURCES[rec["box_source"]]
            self.box_sources[source] += 1
            if source == "crop":
                self.crop_fitted.append(len(self.labels) - 1)
        if "landmarks" in rec:
            lm = rec["landmarks"].astype(np.float64)
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
                 "landmark_counts": dict(self.landmark_counts), "crop_fitted": self.crop_fitted,
                 "box_sources": dict(self.box_sources), "bytes": os.path.getsize(self.tmp),
                 "sha256": file_digest(self.tmp), **({"inputs": self.inputs} if self.inputs else {})}
        path = stats_path(self.out, self.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(stats, f)
        os.replace(path + ".tmp", path)
        os.replace(self.tmp, os.path.join(self.out, self.name))


def file_digest(path: str) -> str:
    """The SHA-256 of a file (hex): hashlib's fastest here, SHA-NI on current x86."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def shard_done(out: str, name: str, inputs: str | None = None) -> bool:
    """Whether shard `name` is finished in `out` (the file and its sidecar there) and, given
    `inputs`, made of them (a sidecar written before inputs were recorded: taken as made of them)."""
    if not (os.path.exists(os.path.join(out, name)) and os.path.exists(stats_path(out, name))):
        return False
    if inputs is None:
        return True
    with open(stats_path(out, name)) as f:
        return json.load(f).get("inputs", inputs) == inputs


#: k of the subject-independent folds a manifest records (`fergate cv --folds` may ask for others)
FOLDS = 10


def subject_folds(labels: Sequence[int], subjects: Sequence[str], k: int = FOLDS) -> dict[str, int]:
    """Subject-independent k-fold assignment, balanced by class where the subjects allow:
    subjects in decreasing order of their record count (ties by name) each go to the fold
    where the squared shortfall of every class against its 1/k share shrinks most (ties: the
    fold with fewest records). Deterministic; every subject of one fold only."""
    per_subject: dict[str, collections.Counter] = {}
    for y, s in zip(labels, subjects):
        per_subject.setdefault(s, collections.Counter())[int(y)] += 1
    if not per_subject:
        return {}
    classes = sorted({c for v in per_subject.values() for c in v})
    col = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(per_subject), len(classes)))
    names = sorted(per_subject, key=lambda s: (-sum(per_subject[s].values()), s))
    for i, s in enumerate(names):
        for c, n in per_subject[s].items():
            counts[i, col[c]] = n
    target = counts.sum(0) / k
    folds, out = np.zeros((k, len(classes))), {}
    for i, s in enumerate(names):
        after = folds + counts[i]
        # gain of adding here: reduction of sum_c max(target_c - fold_c, 0)^2, scaled per class
        short_before = np.maximum(target - folds, 0) ** 2 / np.maximum(target, 1)
        short_after = np.maximum(target - after, 0) ** 2 / np.maximum(target, 1)
        over = np.maximum(after - target, 0) ** 2 / np.maximum(target, 1)
        score = (short_before - short_after - over).sum(1)
        best = max(range(k), key=lambda f: (round(score[f], 9), -folds[f].sum(), -f))
        folds[best] += counts[i]
        out[s] = best
    return dict(sorted(out.items()))


def write_manifest(out: str, expected: dict[str, int], info: dict, folds: dict[str, int] | None = None) -> dict:
    """Assembles `manifest.json` from the stats of all finished shards; `complete` says
    whether every expected shard (split -> file count) is there; `folds` assigns the
    subjects of the written records of every split (skipped items are no subjects) to
    `FOLDS` subject-independent folds balanced by class (`subject_folds`), or as the given
    `folds` say (a protocol file's: `fergate prep --splits`), `fold_counts` the
    records of each class in each fold; each split's `box_source` counts its records by where
    their face box came from, `crop_fitted` lists the records (indices in the split) whose
    landmarks were fitted in the whole pre-aligned crop."""
    classes = info["classes"]
    splits, skipped, missing = {}, collections.Counter(), 0
    all_labels, all_subjects, files = [], [], {}
    for split, count in expected.items():
        per_class, subjects, records, split_skipped = collections.Counter(), set(), 0, collections.Counter()
        crop_fitted, box_sources = [], collections.Counter()
        for i in range(count):
            name = shard_name(split, i, count)
            if not shard_done(out, name):
                missing += 1
                continue
            with open(stats_path(out, name)) as f:
                st = json.load(f)
            files[name] = {k: st[k] for k in ("records", "bytes", "sha256", "inputs") if k in st}
            crop_fitted += [records + j for j in st.get("crop_fitted", [])]
            box_sources.update(st.get("box_sources", {}))
            records += st["records"]
            per_class.update(classes[c] for c in st["labels"])
            subjects.update(st["subjects"])
            split_skipped.update(st["skipped"])
            all_labels += st["labels"]
            all_subjects += st["subjects"]
        skipped.update(split_skipped)
        splits[split] = {"records": records, "files": count,
                         "per_class": {c: per_class.get(c, 0) for c in classes},
                         "subjects": sorted(subjects), "skipped": dict(split_skipped)}
        if box_sources:
            splits[split]["box_source"] = dict(box_sources)
            splits[split]["crop_fitted"] = crop_fitted
    if folds is None:
        folds, k = subject_folds(all_labels, all_subjects), FOLDS
    else:
        k = max(folds.values(), default=0) + 1
        folds = {s: int(folds[s]) for s in sorted(set(all_subjects))}
    fold_counts = [[0] * len(classes) for _ in range(k)]
    for y, s in zip(all_labels, all_subjects):
        fold_counts[folds[s]][y] += 1
    manifest = {"schema_version": SCHEMA_VERSION, **info, "splits": splits, "folds": folds,
                "fold_counts": fold_counts, "shards": files,
                "skipped": dict(skipped), "complete": missing == 0, "missing_shards": missing,
                "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = os.path.join(out, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out, "manifest.json"))
    return manifest


#: what a manifest's fingerprint covers besides its splits and shards: how the records were made
FINGERPRINTED = ("schema_version", "dataset", "classes", "options")
#: face options added since data was first fingerprinted, at the value every earlier
#: preparation had: left out of fingerprints and shard digests at that value, so that data
#: prepared before them keeps its fingerprint and its shards
FACE_OPTIONS_ADDED = {"detector": "hog"}


def digested_options(options: dict) -> dict:
    """A preparation's options as digests see them: `FACE_OPTIONS_ADDED` at their old value
    left out."""
    face = options.get("face")
    if not isinstance(face, dict):
        return options
    return {**options, "face": {k: v for k, v in face.items() if FACE_OPTIONS_ADDED.get(k, object()) != v}}


def fingerprint(*manifests: dict) -> str:
    """12 hex digits telling prepared data apart: a hash over each manifest's options, classes,
    every split's record counts (per class) and subjects, and every shard's inputs (else its
    SHA-256). Not its time, path or `source`: the data moved, or a damaged shard prepared
    again from the same inputs, keeps its fingerprint; data prepared with other options or
    from other items (a photo added, changed or removed) gets another."""
    h = hashlib.sha256()
    for m in manifests:
        splits = {s: {k: v.get(k) for k in ("records", "files", "per_class", "subjects")}
                  for s, v in m["splits"].items()}
        made = {name: x for name, e in m.get("shards", {}).items() if (x := e.get("inputs") or e.get("sha256"))}
        made_with = {k: digested_options(m[k]) if k == "options" and isinstance(m.get(k), dict) else m.get(k)
                     for k in FINGERPRINTED}
        h.update(json.dumps([made_with, splits, made], sort_keys=True).encode())
    return h.hexdigest()[:12]
