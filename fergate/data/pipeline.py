"""grain input pipelines: ArrayRecord shards -> per-process batches of numpy arrays.

    EpochSampler (seeded shuffle / class balancing, repeat) -> slice by process
      -> Load+Decode -> random transforms (augmentation) -> map transforms -> batch

Every random choice derives from (seed, epoch) or (seed, element index), so the stream is
a pure function of the seed and the iterator's position: the iterator state saved in a
checkpoint restores exactly the batches an uninterrupted run would have seen. Transforms
are module-level classes so they pickle to grain's worker processes.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence
from typing import Any

import cv2
import grain
import numpy as np

from fergate.data import schema
from fergate.data.landmarks import MIRROR_68, iod
from fergate.errors import UserError

#: Fields that are strings in a record; they are not batched.
STRING_FIELDS = ("label_name", "subject", "source")


def read_manifest(data_dir: str) -> dict:
    """The dataset's manifest, checked for this schema version and completeness."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.isdir(data_dir):
        raise UserError(f"data directory not found: {data_dir}")
    if not os.path.exists(path):
        raise UserError(f"{path} missing: not a `fergate prep` output (or prep did not finish)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable: {e}") from None
    if manifest.get("schema_version") != schema.SCHEMA_VERSION:
        raise UserError(f"{data_dir} holds schema version {manifest.get('schema_version')}, this fergate reads "
                        f"version {schema.SCHEMA_VERSION}; re-run `fergate prep`")
    if not manifest.get("complete", False):
        raise UserError(f"{data_dir} is incomplete ({manifest.get('missing_shards')} shards missing): finish "
                        "`fergate prep` on every machine first")
    return manifest


def split_files(data_dir: str, split: str) -> list[str]:
    """The shard files of a split, in order."""
    manifest = read_manifest(data_dir)
    if split not in manifest["splits"]:
        raise UserError(f"split {split!r} not in {data_dir}; it has {sorted(manifest['splits'])}")
    files = sorted(glob.glob(os.path.join(data_dir, f"{split}-*-of-*.array_record")))
    if len(files) != manifest["splits"][split]["files"]:
        raise UserError(f"{data_dir}: found {len(files)} {split} shards, manifest says "
                        f"{manifest['splits'][split]['files']}")
    return files


def split_labels(files: Sequence[str]) -> np.ndarray:
    """Labels of every record of `files` in order, from the shards' stats sidecars (read
    from the records themselves when a sidecar is missing)."""
    out = []
    for path in files:
        stats = os.path.join(os.path.dirname(path), ".stats", os.path.basename(path) + ".json")
        if os.path.exists(stats):
            with open(stats) as f:
                out.extend(json.load(f)["labels"])
        else:
            src = grain.sources.ArrayRecordDataSource([path])
            out.extend(int(schema.decode(src[i], ("label",))["label"]) for i in range(len(src)))
    return np.asarray(out, np.int64)


class EpochSampler(Sequence):
    """Random-access stream of (record index, valid) over epochs.

    Train: each epoch is a seeded permutation; with `balance`, per-epoch rejection
    resampling first draws the same number of records from every class (majority classes
    down-sampled without replacement, minority classes over-sampled), SPEC.md 5.1.
    Eval (`shuffle=False, num_epochs=1`): records in order, padded with invalid entries to a
    multiple of `pad_to` so every process gets the same number of full batches.
    """

    def __init__(self, labels: np.ndarray, seed: int = 0, shuffle: bool = True, balance: bool = False,
                 num_epochs: int | None = None, pad_to: int = 1):
        self.labels, self.seed, self.shuffle, self.balance = np.asarray(labels), seed, shuffle, balance
        n = len(self.labels)
        if n == 0:
            raise UserError("the split has no records")
        if balance:
            present = np.unique(self.labels)
            self.per_class = int(round(n / len(present)))
            self.epoch_len = self.per_class * len(present)
        else:
            self.epoch_len = n
        self.num_epochs = num_epochs
        total = self.epoch_len * (num_epochs or 1_000_000)
        self.length = -(-total // pad_to) * pad_to
        self._cache: dict[int, np.ndarray] = {}

    def epoch(self, e: int) -> np.ndarray:
        if e not in self._cache:
            rng = np.random.default_rng([self.seed, e])
            if self.balance:
                parts = []
                for c in np.unique(self.labels):
                    idx = rng.permutation(np.flatnonzero(self.labels == c))
                    if len(idx) >= self.per_class:
                        parts.append(idx[: self.per_class])
                    else:
                        parts.append(np.concatenate([idx, rng.choice(idx, self.per_class - len(idx))]))
                order = np.concatenate(parts)
                order = rng.permutation(order) if self.shuffle else np.sort(order)
            else:
                order = rng.permutation(len(self.labels)) if self.shuffle else np.arange(len(self.labels))
            if len(self._cache) > 2:
                self._cache.clear()
            self._cache[e] = order
        return self._cache[e]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[int, bool]:
        e, k = divmod(int(i), self.epoch_len)
        if self.num_epochs is not None and e >= self.num_epochs:
            return 0, False  # padding
        return int(self.epoch(e)[k]), True


class Load(grain.transforms.Map):
    """(record index, valid) -> decoded record with the requested fields, `label` as int32
    (read from `label_field`, through `label_map` for string labels such as the subject;
    an unmapped value gets mask 0) and a `mask` (0 for padding)."""

    def __init__(self, files: Sequence[str], fields: Sequence[str], label_field: str = "label",
                 label_map: dict | None = None):
        self.files, self.label_field, self.label_map = list(files), label_field, label_map
        self.fields = tuple(dict.fromkeys([*fields, label_field]))
        self._source = None

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def map(self, element: tuple[int, bool]) -> dict[str, Any]:
        if self._source is None:
            self._source = grain.sources.ArrayRecordDataSource(self.files)
        index, valid = element
        rec = schema.decode(self._source[index], self.fields)
        out = {k: np.int32(v) if isinstance(v, int) else v for k, v in rec.items()
               if k not in STRING_FIELDS and k != self.label_field}
        label = rec[self.label_field]
        if self.label_map is not None:
            label = self.label_map.get(label, -1)
            valid = valid and label >= 0
        out["label"] = np.int32(max(label, 0))
        if "iod" in out:
            out["iod"] = np.float32(out["iod"])
        out["mask"] = np.float32(valid)
        return out


# ----------------------------------------------------------------------------- transforms
@dataclasses.dataclass
class RandomFlip(grain.transforms.RandomMap):
    """Horizontal flip with probability p, consistently for face, landmarks (mirrored and
    re-indexed), patches (re-ordered, each mirrored) and clips."""

    p: float = 0.5

    def random_map(self, rec: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return rec
        rec = dict(rec)
        if "face" in rec:
            w = rec["face"].shape[1]
            rec["face"] = np.ascontiguousarray(rec["face"][:, ::-1])
            if "landmarks" in rec:
                lm = rec["landmarks"][MIRROR_68].copy()
                lm[:, 0] = w - 1 - lm[:, 0]
                rec["landmarks"] = lm
        if "patches" in rec:
            rec["patches"] = np.ascontiguousarray(rec["patches"][MIRROR_68][:, :, ::-1])
        if "clip" in rec:
            w = rec["clip"].shape[2]
            rec["clip"] = np.ascontiguousarray(rec["clip"][:, :, ::-1])
            if "clip_landmarks" in rec:
                lm = rec["clip_landmarks"][:, MIRROR_68].copy()
                lm[..., 0] = w - 1 - lm[..., 0]
                rec["clip_landmarks"] = lm
        return rec


@dataclasses.dataclass
class BrightnessContrast(grain.transforms.RandomMap):
    """x -> (x - mean) * c + mean + b on every image field, c in [1-contrast, 1+contrast],
    b in [-brightness, brightness] (grey levels); one draw per example."""

    brightness: float = 20.0
    contrast: float = 0.2

    def random_map(self, rec: dict, rng: np.random.Generator) -> dict:
        c = rng.uniform(1 - self.contrast, 1 + self.contrast)
        b = rng.uniform(-self.brightness, self.brightness)
        rec = dict(rec)
        for k in ("face", "patches", "clip"):
            if k in rec:
                x = rec[k].astype(np.float32)
                rec[k] = np.clip((x - x.mean()) * c + x.mean() + b, 0, 255).astype(np.uint8)
        return rec


@dataclasses.dataclass
class ResizeFace(grain.transforms.Map):
    """Resizes the stored face crop to the model's input (landmarks and iod follow) and
    optionally converts it to grey."""

    size: tuple[int, int]  #: (height, width)
    grey: bool = False

    def map(self, rec: dict) -> dict:
        rec = dict(rec)
        face = rec["face"]
        h, w = face.shape[:2]
        if (h, w) != tuple(self.size):
            face = cv2.resize(face, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
            face = face.reshape(self.size[0], self.size[1], -1)
            sx, sy = self.size[1] / w, self.size[0] / h
            if "landmarks" in rec:
                rec["landmarks"] = (rec["landmarks"] * np.float32([sx, sy])).astype(np.float32)
                if "iod" in rec:
                    rec["iod"] = np.float32(rec["iod"] * sx) if sx == sy else iod(rec["landmarks"])
        if self.grey and face.shape[-1] == 3:
            face = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)[..., None]
        rec["face"] = face
        return rec


# ----------------------------------------------------------------------------- pipeline
def make_dataset(data_dir: str, split: str, fields: Sequence[str], batch_size: int, *, seed: int = 0,
                 train: bool = True, balance: bool = False, random_transforms: Sequence = (),
                 transforms: Sequence = (), process_index: int = 0, process_count: int = 1,
                 num_epochs: int | None = None, workers: int = 0, read_threads: int = 4,
                 label_field: str = "label", label_map: dict | None = None) -> grain.IterDataset:
    """Per-process batches (dicts of numpy arrays, leading axis `batch_size`) of a split.

    Train: shuffled (and class-balanced with `balance`), repeated forever unless
    `num_epochs`, random transforms applied, incomplete batches dropped. Eval: one pass in
    order, last batch padded (`mask` = 0 on padding). Process p of P reads elements
    p, p + P, ... of the global stream, so the P per-process batches form one global batch.
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain reads absl flags; fergate does not use absl.app
    files = split_files(data_dir, split)
    labels = split_labels(files)
    sampler = EpochSampler(labels, seed, shuffle=train, balance=balance and train,
                           num_epochs=num_epochs if train else 1,
                           pad_to=1 if train else batch_size * process_count)
    ds = grain.MapDataset.source(sampler)
    if process_count > 1:
        ds = ds.slice(slice(process_index, None, process_count))
    ds = ds.map(Load(files, fields, label_field, label_map))
    if train:
        for i, t in enumerate(random_transforms):
            ds = ds.random_map(t, seed=seed * 1000 + i + 1)
    for t in transforms:
        ds = ds.map(t)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(8, 2 * batch_size)))
    if workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return ds


def num_records(data_dir: str, split: str) -> int:
    return read_manifest(data_dir)["splits"][split]["records"]
