"""grain input pipelines: ArrayRecord shards -> per-process batches of numpy arrays.

    EpochSampler (seeded shuffle / class balancing, repeat)
      -> Load: decode + the family's deterministic maps (resizing), cached in host memory
      -> the family's random maps (on the host only when an augmentation cannot run in the
         jitted step) -> slice by process -> batch

Training's augmentation runs in the jitted step (`fergate.data.augment.on_device`), so the
host reads, decodes and batches fixed-shape uint8 arrays: each record is decoded and
resized once, then served from `Load`'s cache (up to `config.data.cache_mb` per process).

Every random choice derives from (seed, epoch) or (seed, element index), so the stream is
a pure function of the seed and the iterator's position: the iterator state saved in a
checkpoint restores exactly the batches an uninterrupted run would have seen. Transforms
are module-level classes so they pickle to grain's worker processes; which fields they
move, and how, is each field's kind (`fergate.data.fields`).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from fergate.data import fields as _fields
from fergate.data import schema
from fergate.data.records import Records, expected_counts
from fergate.errors import UserError
from fergate.files import need_json, read_json


def read_manifest(data_dir: str) -> dict:
    """The dataset's manifest, checked for this schema version and completeness."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.isdir(data_dir):
        raise UserError(f"data directory not found: {data_dir}")
    manifest = need_json(path, f"{path} missing: not a `fergate prep` output (or prep did not finish)")
    if manifest.get("schema_version") != schema.SCHEMA_VERSION:
        raise UserError(f"{data_dir} holds schema version {manifest.get('schema_version')}, this fergate reads "
                        f"version {schema.SCHEMA_VERSION}; re-run `fergate prep`")
    if not manifest.get("complete", False):
        raise UserError(f"{data_dir} is incomplete ({manifest.get('missing_shards')} shards missing): finish "
                        "`fergate prep` on every machine first")
    return manifest


def split_files(data_dir: str, split: str) -> list[str]:
    """The shard files of a split, in order; `a+b` joins splits a and b (their files in turn)."""
    manifest = read_manifest(data_dir)
    files = []
    for part in split_parts(manifest, split, data_dir):
        found = sorted(glob.glob(os.path.join(data_dir, f"{part}-*-of-*.array_record")))
        if len(found) != manifest["splits"][part]["files"]:
            raise UserError(f"{data_dir}: found {len(found)} {part} shards, manifest says "
                            f"{manifest['splits'][part]['files']}")
        files += found
    return files


def split_parts(manifest: dict, split: str, data_dir: str = "the data") -> list[str]:
    """The splits `split` names (`a+b`: a and b), each checked to be in the manifest."""
    parts = list(dict.fromkeys(p for p in split.split("+") if p))
    for part in parts or [split]:
        if part not in manifest["splits"]:
            raise UserError(f"split {part!r} not in {data_dir}; it has {', '.join(sorted(manifest['splits']))}")
    return parts


def training_split(manifest: dict, data: Any) -> str:
    """The split a run draws its training records from, for a config's `data` section:
    `data.train_split`, or for a cross-validation fold (`data.fold` >= 0) the training and
    held-out splits joined (`a+b`, those the manifest has; `data.cv_splits` when set: an
    earlier stage takes its later stage's)."""
    if data.fold < 0:
        return data.train_split
    pool = data.get("cv_splits") or (data.train_split, data.eval_split)
    return "+".join(s for s in dict.fromkeys(pool) if s in manifest["splits"])


def split_entry(manifest: dict, split: str) -> dict:
    """The manifest's entry of a split (`a+b`: its parts' records, files and per-class counts
    summed, their subjects joined)."""
    entries = [manifest["splits"][p] for p in split_parts(manifest, split)]
    if len(entries) == 1:
        return entries[0]
    return {"records": sum(e["records"] for e in entries), "files": sum(e["files"] for e in entries),
            "per_class": {c: sum(e["per_class"].get(c, 0) for e in entries) for c in manifest["classes"]},
            "subjects": sorted({s for e in entries for s in e["subjects"]})}


def split_labels(files: Sequence[str]) -> np.ndarray:
    """Labels of every record of `files` in order."""
    return np.asarray(_sidecar(files, "labels", "label"), np.int64)


def split_subjects(files: Sequence[str]) -> np.ndarray:
    """Subjects of every record of `files` in order."""
    return np.asarray(_sidecar(files, "subjects", "subject"), object)


def _sidecar(files: Sequence[str], key: str, field: str) -> list:
    """A per-record value from the shards' stats sidecars, read from the records themselves
    where a sidecar is missing."""
    out = []
    for path in files:
        stats = os.path.join(os.path.dirname(path), ".stats", os.path.basename(path) + ".json")
        sidecar = read_json(stats)
        if sidecar is not None:
            out.extend(sidecar[key])
        else:
            src = Records([path])
            out.extend(schema.decode(src[i], (field,))[field] for i in range(len(src)))
    return out


def subject_mean_landmarks(files: Sequence[str]) -> dict[str, np.ndarray]:
    """{subject: the mean (68, 2) landmarks of its records in `files`} (one split's), from
    the shards' stats sidecars (per-subject sums and counts), or from the records themselves
    for shards written without them; computed once per process and set of files."""
    return _subject_mean_landmarks(tuple(files))


@functools.lru_cache(maxsize=8)
def _subject_mean_landmarks(files: tuple[str, ...]) -> dict[str, np.ndarray]:
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for path in files:
        stats = os.path.join(os.path.dirname(path), ".stats", os.path.basename(path) + ".json")
        st = read_json(stats, {})
        if "landmark_counts" in st:
            pairs = [(k, np.asarray(v, np.float64), st["landmark_counts"][k]) for k, v in st["landmark_sums"].items()]
        else:
            src = Records([path])
            recs = [schema.decode(src[i], ("subject", "landmarks")) for i in range(len(src))]
            pairs = [(r["subject"], r["landmarks"].astype(np.float64), 1) for r in recs]
        for subject, total, n in pairs:
            sums[subject] = sums.get(subject, 0.0) + total
            counts[subject] = counts.get(subject, 0) + n
    return {k: (v / counts[k]).astype(np.float32) for k, v in sums.items()}


class EpochSampler(Sequence):
    """Random-access stream of (record index, valid) over epochs.

    Train: each epoch is a seeded permutation; with `balance`, per-epoch rejection
    resampling first draws the same number of records from every class (majority classes
    down-sampled without replacement, minority classes over-sampled), as MoDuL trains. With
    `groups` (a group id per record: the dataset it comes from) and their `weights`, an
    epoch draws each group's share of records in proportion to its weight the same way
    (mixed datasets); with both, each class of a group gets an equal part of its group's share.
    Eval (`shuffle=False, num_epochs=1`): records in order, padded with invalid entries to a
    multiple of `pad_to` so every process gets the same number of full batches. `records`
    restricts the stream to those record indices (`labels` are theirs).
    """

    def __init__(self, labels: np.ndarray, seed: int = 0, shuffle: bool = True, balance: bool = False,
                 num_epochs: int | None = None, pad_to: int = 1, records: np.ndarray | None = None,
                 groups: np.ndarray | None = None, weights: Sequence[float] | None = None):
        self.labels, self.seed, self.shuffle, self.balance = np.asarray(labels), seed, shuffle, balance
        self.records = None if records is None else np.asarray(records, np.int64)
        n = len(self.labels)
        if n == 0:
            raise UserError("the split has no records")
        self.draws: list[tuple[np.ndarray, int]] = []  # (the records of a stratum, how many an epoch draws)
        if balance or groups is not None:
            groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups, np.int64)
            weights = np.ones(groups.max() + 1) if weights is None else np.asarray(weights, np.float64)
            present = np.unique(groups)
            total = weights[present].sum()
            for g in present:
                members = np.flatnonzero(groups == g)
                strata = [members[self.labels[members] == c] for c in np.unique(self.labels[members])] \
                    if balance else [members]
                for idx in strata:
                    self.draws.append((idx, int(round(n * weights[g] / total / len(strata)))))
            self.epoch_len = sum(k for _, k in self.draws)
            if self.epoch_len == 0:
                raise UserError("the data's weights draw no records")
        else:
            self.epoch_len = n
        self.num_epochs = num_epochs
        total = self.epoch_len * (num_epochs or 1_000_000)
        self.length = -(-total // pad_to) * pad_to
        self._cache: dict[int, np.ndarray] = {}

    def epoch(self, e: int) -> np.ndarray:
        if e not in self._cache:
            rng = np.random.default_rng([self.seed, e])
            if self.draws:
                parts = []
                for members, k in self.draws:
                    idx = rng.permutation(members)
                    if len(idx) >= k:
                        parts.append(idx[:k])
                    else:
                        parts.append(np.concatenate([idx, rng.choice(idx, k - len(idx))]))
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
        pos = int(self.epoch(e)[k])
        return (pos if self.records is None else int(self.records[pos])), True


class Load(grain.transforms.Map):
    """(record index, valid) -> decoded record with the requested fields, `label` as int32
    (read from `label_field`, through `label_map` for string labels such as the subject;
    or `labels[index]` when given: classes mapped onto another list; an unmapped value or a
    negative one gets mask 0), a `mask` (0 for padding) and, with `with_index`, the
    record's `index` in the split (for evaluation reports). Derived fields
    (`fields.Field.derive`, e.g. a subject's mean landmarks) are computed over these `files`.

    `maps` (deterministic grain `Map`s: resizing) then bring it to the model's fixed shapes,
    `keep` (with label, mask, index) selects the fields batches hold, and the result is kept
    in memory, up to `cache_mb` MiB in this process (its worker's own in a grain worker): an
    epoch after the first reads and decodes nothing."""

    def __init__(self, files: Sequence[str], fields: Sequence[str], label_field: str = "label",
                 label_map: dict | None = None, with_index: bool = False, labels: np.ndarray | None = None,
                 maps: Sequence = (), keep: Sequence[str] | None = None, cache_mb: float = 0):
        self.files, self.label_field, self.label_map = list(files), label_field, label_map
        self.counts = expected_counts(self.files)  #: each file's records by its sidecar, read once, not per worker
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        self.with_index = with_index
        #: the declarations themselves (not names): they pickle to grain's workers with their module
        self.derived = {n: _fields.get(n) for n in _fields.derived(fields)}
        needs = [k for f in self.derived.values() for k in f.derive.needs]
        self.fields = tuple(dict.fromkeys([*(f for f in fields if f not in self.derived), label_field, *needs]))
        self.maps, self.keep, self.cache_bytes = tuple(maps), keep, int(cache_mb * 2**20)
        self._source, self._derive, self._cache, self._cached = None, None, {}, 0

    def __getstate__(self):
        return {**self.__dict__, "_source": None, "_derive": None, "_cache": {}, "_cached": 0}

    def map(self, element: tuple[int, bool]) -> dict[str, Any]:
        index, valid = element
        hit = self._cache.get(index)
        if hit is None:
            hit = self.read(index)
            size = sum(v.nbytes for v in hit[0].values() if isinstance(v, np.ndarray))
            if self._cached + size <= self.cache_bytes:
                self._cache[index], self._cached = hit, self._cached + size
        rec, labelled = hit
        return {**rec, "mask": np.float32(valid and labelled)}

    def read(self, index: int) -> tuple[dict[str, Any], bool]:
        """Record `index` decoded, labelled and mapped (without its mask), and whether its
        label is one trained on."""
        if self._source is None:
            self._source = Records(self.files, self.counts)
            self._derive = {n: f.derive.over_files(self.files) for n, f in self.derived.items()}
        try:
            rec = schema.decode(self._source[index], self.fields)
        except schema.ForeignRecord as e:  # read, but no record prep wrote: the shard was replaced
            raise self._source.undecodable(index, e) from None
        for name, fn in self._derive.items():
            rec[name] = fn(rec)
        out = record_for_model({k: v for k, v in rec.items() if k != self.label_field})
        label = rec[self.label_field] if self.labels is None else int(self.labels[index])
        if self.label_map is not None:
            label = self.label_map.get(label, -1)
        out["label"] = np.int32(max(label, 0))
        if self.with_index:
            out["index"] = np.int32(index)
        for t in self.maps:
            out = t.map(out)
        if self.keep is not None:
            out = {k: out[k] for k in (*self.keep, "label", "index") if k in out}
        return out, label >= 0


def record_for_model(rec: dict) -> dict:
    """A decoded record's fields as the model's transforms take them: strings dropped, whole
    numbers as int32, the iod as float32 (for `Load`, and for `fergate predict`'s records)."""
    strings = _fields.of_kind(_fields.String)
    out = {k: np.int32(v) if isinstance(v, int) else v for k, v in rec.items() if k not in strings}
    if "iod" in out:
        out["iod"] = np.float32(out["iod"])
    return out


@dataclasses.dataclass
class Select(grain.transforms.Map):
    """Keeps `fields` (those present) and drops the rest."""

    fields: Sequence[str]

    def map(self, rec: dict) -> dict:
        return {k: rec[k] for k in self.fields if k in rec}


# ----------------------------------------------------------------------------- transforms
# Augmentations are `fergate.data.augment`'s ops; the deterministic maps below bring records
# to a model's input. Both move each field as its kind says (`fergate.data.fields`).
@dataclasses.dataclass
class ResizeFace(grain.transforms.Map):
    """Resizes the stored image `field` (a face crop by default) to the model's input, the
    points and lengths measured on it following, and optionally converts it to grey."""

    size: tuple[int, int]  #: (height, width)
    grey: bool = False
    field: str = "face"

    def map(self, rec: dict) -> dict:
        return _fields.resize(rec, self.field, tuple(self.size), self.grey)


@dataclasses.dataclass
class ResizeClip(ResizeFace):
    """Every frame of the `clip` resized to the model's input (and made grey), its
    landmarks following."""

    field: str = "clip"


@dataclasses.dataclass
class CenterCrop(grain.transforms.Map):
    """The centre `size` (height, width) of each image field of `images` (the points on it
    follow): the evaluation's counterpart of a training crop (`augment.Crop`)."""

    size: tuple[int, int]
    images: Sequence[str] = ("face",)

    def map(self, rec: dict) -> dict:
        for f in self.images:
            if f in rec:
                dy, dx = rec[f].shape[0] - self.size[0], rec[f].shape[1] - self.size[1]
                if dy < 0 or dx < 0:
                    raise ValueError(f"cannot crop {tuple(self.size)} from an image of {rec[f].shape[:2]}")
                rec = _fields.crop(rec, f, (dy // 2, dx // 2, *self.size))
        return rec


# ----------------------------------------------------------------------------- pipeline
@dataclasses.dataclass(frozen=True)
class Mix:
    """Another prepared dataset's split drawn into training (`make_dataset(mix=...)`)."""

    data_dir: str
    split: str
    weight: float  #: its share of training draws, against the main split's weight
    relabel: tuple[int, ...]  #: its class index -> the training classes' index (-1: dropped)


def make_dataset(data_dir: str, split: str, fields: Sequence[str], batch_size: int, *, seed: int = 0,
                 train: bool = True, keep: Sequence[str] | None = None, balance: bool = False,
                 transforms: Sequence = (), process_index: int = 0,
                 process_count: int = 1, num_epochs: int | None = None, workers: int = 0, read_threads: int = 4,
                 label_field: str = "label", label_map: dict | None = None,
                 records: np.ndarray | None = None, labels: np.ndarray | None = None,
                 mix: Sequence[Mix] = (), weight: float = 1.0, cache_mb: float = 0) -> grain.IterDataset:
    """Per-process batches (dicts of numpy arrays, leading axis `batch_size`) of a split.

    Train: shuffled (and class-balanced with `balance`), repeated forever unless
    `num_epochs`, incomplete batches dropped. Eval: one pass in order, last batch padded
    (`mask` = 0 on padding), each example's record `index`. `transforms` run in order; the
    random ones (`grain.transforms.RandomMap`, augmentations) in training only. Process p
    of P reads elements p, p + P, ... of the global stream, so the P per-process batches
    form one global batch. With `keep`, batches hold those fields (plus label, mask, index)
    and no others; with `records`, only those record indices of the split are read; with
    `labels` (one per record of the split; -1: dropped), those are the labels. `mix`: other
    datasets' records drawn alongside, each in proportion to its weight against `weight`
    (the split's own; `EpochSampler`), their labels mapped onto this split's classes.
    The deterministic transforms before the first random one run in `Load`, whose results
    are cached up to `cache_mb` MiB.
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain reads absl flags; fergate does not use absl.app
    files = split_files(data_dir, split)
    table = split_labels(files) if labels is None else np.asarray(labels, np.int64)
    records = np.arange(len(table)) if records is None else np.asarray(records, np.int64)
    if train:  # a dropped class takes no place in a batch (evaluation masks it)
        records = records[table[records] >= 0]
    groups, weights = np.zeros(len(records), np.int64), [weight]
    for g, m in enumerate(mix, 1):
        more = split_files(m.data_dir, m.split)
        their = np.asarray(m.relabel, np.int64)[split_labels(more)]
        mine = np.flatnonzero(their >= 0)
        records = np.concatenate([records, mine + len(table)])
        groups = np.concatenate([groups, np.full(len(mine), g)])
        files, table, weights = files + more, np.concatenate([table, their]), weights + [m.weight]
    override = table if mix or labels is not None else None
    sampler = EpochSampler(table[records], seed, shuffle=train, balance=balance and train,
                           num_epochs=num_epochs if train else 1,
                           pad_to=1 if train else batch_size * process_count, records=records,
                           groups=groups if mix and train else None, weights=weights)
    random = [isinstance(t, grain.transforms.RandomMap) for t in transforms]
    first = random.index(True) if train and any(random) else len(transforms)  # evaluation: no random map runs
    maps = [t for t, r in zip(transforms[:first], random) if not r]
    rest = transforms[first:]
    ds = grain.MapDataset.source(sampler).map(Load(files, fields, label_field, label_map, with_index=not train,
                                                   labels=override, maps=maps, keep=None if rest else keep,
                                                   cache_mb=cache_mb))
    n_random = 0
    for t in rest:
        if isinstance(t, grain.transforms.RandomMap):
            n_random += 1
            ds = ds.random_map(t, seed=seed * 1000 + n_random)
        else:
            ds = ds.map(t)
    if keep is not None and rest:
        ds = ds.map(Select((*keep, "label", "mask", "index")))
    if process_count > 1:  # after the random maps, which draw by global element index: any process count sees
        ds = ds.slice(slice(process_index, None, process_count))  # the same augmentations (the map is lazy)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(8, 2 * batch_size)))
    if workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return ds


def read_records(data_dir: str, split: str, indices: Sequence[int], fields: Sequence[str],
                 transforms: Sequence = (), label_field: str = "label",
                 label_map: dict | None = None, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Records `indices` of a split as an evaluation batch sees them (the deterministic
    `transforms` applied), stacked field by field."""
    load = Load(split_files(data_dir, split), fields, label_field, label_map, labels=labels)
    maps = [t for t in transforms if not isinstance(t, grain.transforms.RandomMap)]
    recs = []
    for i in indices:
        rec = load.map((int(i), True))
        for t in maps:
            rec = t.map(rec)
        recs.append(rec)
    return {k: np.stack([r[k] for r in recs]) for k in recs[0]} if recs else {}


def num_records(data_dir: str, split: str) -> int:
    return split_entry(read_manifest(data_dir), split)["records"]
