"""The data a run reads, built once as a value (`DataPlan`): where it is (the source the
config names, or the copy holding an earlier stage's features), its manifest, the classes
it trains on and how the data's labels map onto them, the datasets mixed into training,
and the portions it trains, validates and evaluates on (the config's splits, or a
cross-validation fold); its input pipelines and record readers follow from it.

Building a plan resolves the config against the data first (`resolve`): every caller
(trainer, evaluator, exports, `fergate features` / `eval --pairs`) sees the same config.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np

from fergate import models, options
from fergate.data import labels, pipeline, shards
from fergate.data.cache import builtin_dir
from fergate.errors import UserError
from fergate.files import read_json


# ----------------------------------------------------------------------------- directories
def data_dir(config, workdir: str | None = None) -> str:
    """`config.data.dir`, or the built-in dataset `config.data.dataset` prepared in the cache
    with `config.data.prep_options` (the `fergate` command prepares it on first use); with
    `config.data.features_from`, the copy of that data holding the earlier stage's features,
    in the training `workdir` (`features_dir`; the trainer writes it)."""
    stage = config.data.get("features_from", "")
    if stage and workdir is not None:
        out = features_dir(workdir, stage, config.pretrain.get("folds", 0))
        if not features_ready(out):
            raise UserError(f"{out} holds no complete features: train {workdir} first (it writes them)")
        return out
    return source_dir(config)


def features_ready(out: str) -> bool:
    """Whether `out` holds a complete copy of the data with features."""
    return bool(read_json(os.path.join(out, "manifest.json"), {}).get("complete"))


def features_dir(workdir: str, stage: str, folds: int = 0) -> str:
    """Where a run keeps its data with the features of its earlier stage `stage`: with
    `folds` (`pretrain.folds`), the out-of-fold ones, beside that stage's fold models."""
    return os.path.join(workdir, "pretrain", stage, *((f"oof-{folds}",) if folds else ()), "features")


def source_dir(config, checked: bool = True) -> str:
    """The data the config names (before any features are added to it), `checked` to be
    there."""
    out = config.data.dir or builtin_dir(config.data.dataset, dict(config.data.prep_options))
    if checked and not config.data.dir and not os.path.exists(os.path.join(out, "manifest.json")):
        raise UserError(f"config data.dir is empty and the built-in {config.data.dataset} dataset is not prepared "
                        f"in {out}: run `fergate train` (it prepares it) or `fergate.plugins.prepare_builtin(...)`, "
                        "or pass --config.data.dir=DIR")
    return out


# ----------------------------------------------------------------------------- resolution
def resolve(config, manifest: dict | None) -> None:
    """Fills the config fields that depend on the data, before anything is built (None: no
    data, a benchmark): `data.classes` from the manifest (a config that names other classes
    trains on the data's classes mapped onto them by name, `relabel`; one that cannot be
    mapped is refused), the datasets `data.mix` draws from are checked, then whatever the
    model family derives (e.g. its number of outputs)."""
    with config.unlocked():
        if config.train.dtype == "auto":  # recorded as what it is on this backend (a resume elsewhere is checked)
            config.train.dtype = models.compute_dtype(config).name
        if manifest is not None:
            # a cross-validation fold evaluates on its own subjects: the eval split may be missing
            for split in [config.data.train_split] + ([config.data.eval_split] if config.data.fold < 0 else []):
                try:
                    pipeline.split_parts(manifest, split)
                except UserError:
                    raise UserError(
                        f"split {split!r} is not in the data (it has {', '.join(sorted(manifest['splits']))}): "
                        "prepare a held-out split with `fergate prep ... --test_fraction 0.2`, or evaluate on "
                        f"another one with --config.data.eval_split={config.data.train_split}") from None
            names = class_names(config, manifest)
            if config.data.label_field == "label" and not config.data.classes:  # `label_map` FROM=- drops classes
                drop = {k for k, v in options.parsed(config, "data.label_map").items() if v == labels.DROP}
                names = [c for c in names if labels.canonical(c) not in drop]
            config.data.classes = tuple(config.data.classes or names)
            relabel(config, manifest)
        models.family(config.model).resolve(config, manifest)


def relabel(config, manifest: dict, what: str | None = None) -> tuple[int, ...] | None:
    """The data's class index -> `data.classes` index (-1: dropped, `data.label_map`
    FROM=- entries), or None when the data's classes are the config's."""
    if config.data.label_field != "label":
        return None
    mine, theirs = tuple(config.data.classes), tuple(manifest["classes"])
    if mine == theirs and not config.data.label_map:
        return None
    table = tuple(labels.relabel(theirs, mine, options.parsed(config, "data.label_map"),
                                 what or f"the data ({manifest.get('dataset', '?')})"))
    return None if table == tuple(range(len(theirs))) else table


#: prep options two mixed datasets must share: they shape or mean the records' fields
MIX_OPTIONS = ("face_size", "color", "illumination", "patch_size", "patch_side", "patches", "identity", "align",
               "face_scale", "clip_size", "frames")


def mixed(config, manifest: dict) -> list[pipeline.Mix]:
    """The datasets `data.mix` ("DIR" or "DIR=WEIGHT" entries) draws into training: their
    `data.train_split`, labels mapped onto `data.classes`; each is checked to hold records
    made the same way as the main data's (`MIX_OPTIONS`)."""
    out = []
    known = [manifest["classes"]]
    mapping = options.parsed(config, "data.label_map")
    for path, weight, entry in options.parsed(config, "data.mix"):
        try:
            other = pipeline.read_manifest(path)
        except UserError as e:
            raise UserError(f"config data.mix entry {entry!r}: {e}") from None
        known.append(other["classes"])
        if differ := unlike(manifest, other):
            k, main, theirs = differ
            raise UserError(f"config data.mix: {path} was prepared with {k}={theirs}, the main data with {k}={main}: "
                            f"prepare both alike (fergate prep --{k} ...)")
        pipeline.split_parts(other, config.data.train_split, path)
        table = labels.relabel(other["classes"], config.data.classes, mapping,
                               f"config data.mix: {path} ({other.get('dataset', '?')})")
        out.append(pipeline.Mix(path, config.data.train_split, weight, tuple(table)))
    unused = set(mapping) - {labels.canonical(c) for cs in known for c in cs}
    if unused and config.data.label_field == "label":
        raise UserError(f"config data.label_map names {', '.join(sorted(unused))}, a class of none of the data "
                        f"(classes: {', '.join(sorted({c for cs in known for c in cs}))})")
    return out


def unlike(manifest: dict, other: dict) -> tuple[str, Any, Any] | None:
    """(option, `manifest`'s value, `other`'s) of the first of the `MIX_OPTIONS` two datasets
    were prepared with differently (their records differ in shape or meaning), or None."""
    mine, theirs = _prep_options(manifest), _prep_options(other)
    return next(((k, mine[k], theirs[k]) for k in MIX_OPTIONS if k in mine and k in theirs and mine[k] != theirs[k]),
                None)


def _prep_options(manifest: dict) -> dict:
    opts = manifest.get("options", {})
    return {**{k: v for k, v in opts.items() if k != "face"}, **opts.get("face", {})}


def label_map(config, manifest: dict | None) -> dict | None:
    """Training on `subject` labels: subject name -> index over the training subjects."""
    if config.data.label_field != "subject" or manifest is None:
        return None
    return {s: i for i, s in enumerate(class_names(config, manifest))}


def class_names(config, manifest: dict) -> list[str]:
    """Names of the labels `data.label_field` holds: the dataset's classes, the training
    subjects, or none known (a family's own labels, e.g. exogenous bins: its `resolve`
    names them)."""
    if config.data.label_field == "label":
        return list(manifest["classes"])
    if config.data.label_field == "subject":
        return list(pipeline.split_entry(manifest, pipeline.training_split(manifest, config.data))["subjects"])
    return []



# ----------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class Portion:
    """Records of a split: all, or `records` (indices in the split)."""

    split: str
    records: np.ndarray | None = None
    name: str = ""  #: how logs and reports call it

    def __post_init__(self):
        object.__setattr__(self, "name", self.name or self.split)


@dataclasses.dataclass(frozen=True)
class DataPlan:
    """The data a resolved config reads: `dir` (the source, or the copy with an earlier
    stage's features) and its manifest, read once; the classes, the data's class index ->
    `classes` index (`relabel`, None: the same) and, training on subjects, subject -> index
    (`label_map`). The datasets `data.mix` draws (`mix`) and the `portions` are worked out
    when first read: evaluation needs no mixed dataset, reading other records no split.

    `build` resolves the config against the data; the constructor `of` reads data with a
    config already resolved (another dataset's records, as they are)."""

    config: Any
    dir: str
    manifest: dict
    source: str  #: the data the config names (`dir` when no earlier stage's features are added)
    classes: tuple[str, ...]
    relabel: tuple[int, ...] | None
    label_map: dict | None

    @classmethod
    def build(cls, config, workdir: str | None = None, data: str | None = None) -> DataPlan:
        """The data of `config` (`data_dir`: with `workdir`, the copy holding its earlier
        stage's features), or the prepared directory `data`, with the config resolved
        against it."""
        path = data or data_dir(config, workdir)
        manifest = pipeline.read_manifest(path)
        resolve(config, manifest)
        return cls.of(config, path, manifest, data or source_dir(config, checked=False))

    @classmethod
    def of(cls, config, path: str, manifest: dict | None = None, source: str | None = None) -> DataPlan:
        """The plan of a resolved `config` reading the prepared directory `path`."""
        manifest = manifest or pipeline.read_manifest(path)
        return cls(config, path, manifest, source or path, tuple(config.data.classes), relabel(config, manifest),
                   label_map(config, manifest))

    def with_features(self, path: str) -> DataPlan:
        """This plan reading `path`, the copy of its data that holds an earlier stage's features."""
        return self.of(self.config, path, source=self.source)

    @functools.cached_property
    def fingerprint(self) -> str:
        """What tells this data from data prepared otherwise (`shards.fingerprint`): over its
        manifest and those of the datasets `data.mix` draws."""
        return shards.fingerprint(self.manifest, *(pipeline.read_manifest(m.data_dir) for m in self.mix))

    @functools.cached_property
    def mix(self) -> tuple[pipeline.Mix, ...]:
        """The datasets `data.mix` draws into training, checked (`mixed`)."""
        return tuple(mixed(self.config, self.manifest))

    @functools.cached_property
    def portions(self) -> Portions:
        """What the run trains, validates and evaluates on (`portions`)."""
        return portions(self.config, self.dir, self.manifest)

    def input_pipeline(self, portion: Portion | str, *, train: bool, all_processes: bool = False,
                       mix: bool = False) -> grain.IterDataset:
        """Batches of `portion` (a split, or some of its records) for the config's model: its
        fields and transforms, the training batch size (shuffled, balanced, augmented,
        repeated) or the evaluation one (one ordered, padded pass); labels mapped onto
        `classes`, and with `mix` the `data.mix` datasets drawn alongside. This process's part
        of each global batch, or with `all_processes` the whole pass in every process.
        Training batches are not yet augmented where the step augments them
        (`Family.device_ops`); their records are cached up to `data.cache_mb`."""
        config, portion = self.config, Portion(portion) if isinstance(portion, str) else portion
        fam = models.family(config.model)
        n = 1 if all_processes else jax.process_count()
        batch = (config.input.batch_size if train else config.eval.batch_size) // n
        return pipeline.make_dataset(
            self.dir, portion.split, fam.record_fields(config), batch, seed=config.seed, train=train,
            keep=tuple(fam.inputs(config)), balance=config.data.balance,
            transforms=fam.host_transforms(config, train), cache_mb=config.data.get("cache_mb", 0) if train else 0,
            process_index=0 if all_processes else jax.process_index(), process_count=n,
            workers=config.data.workers if train else 0, label_field=config.data.label_field,
            label_map=self.label_map, records=portion.records, labels=self.relabelled(portion.split),
            mix=self.mix if mix else (), weight=config.data.weight)

    def relabelled(self, split: str) -> np.ndarray | None:
        """Every record's label of `split` mapped onto `classes` (None: no mapping)."""
        if self.relabel is None:
            return None
        return np.asarray(self.relabel, np.int64)[pipeline.split_labels(pipeline.split_files(self.dir, split))]

    def record_reader(self, split: str) -> Callable:
        """read(indices, fields) -> those records of `split` as the model sees them in
        evaluation: the model's inputs after the family's transforms, or other record fields
        as stored."""
        config = self.config
        fam = models.family(config.model)
        transforms, inputs, needed = fam.transforms(config, False), fam.inputs(config), fam.record_fields(config)
        mapped = self.relabelled(split)

        def read(indices, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
            load = tuple(dict.fromkeys([*needed, *(f for f in fields if f not in inputs)]))
            recs = pipeline.read_records(self.dir, split, indices, load, transforms, config.data.label_field,
                                         self.label_map, mapped)
            return {f: recs[f] for f in fields}

        return read


@dataclasses.dataclass(frozen=True)
class Portions:
    """What a run trains on, validates on (`data.val_split`; None: no validation) and
    evaluates on: the config's splits, or with `data.fold` = i, fold i of `data.folds`
    subject-independent folds of the training and held-out splits joined (evaluation) and
    the other folds (training); validation is then `data.val_fraction` of the training
    subjects. `held` names the training subjects held out for validation."""

    train: Portion
    val: Portion | None
    eval: Portion
    held: tuple[str, ...] = ()


def portions(config, data_dir: str, manifest: dict) -> Portions:
    d = config.data
    if d.fold < 0:
        train, test = Portion(d.train_split), Portion(d.eval_split)
    else:
        train, test = cv_fold(config, data_dir, manifest)
    if d.get("oof_folds", 0):  # an earlier stage's out-of-fold model: one subject fold of its training records
        train, test = oof_fold(train, d.oof_fold, d.oof_folds, data_dir)
    name = d.val_split
    if not name:
        return Portions(train, None, test)
    if name in manifest["splits"] and d.fold < 0:
        return Portions(train, Portion(name), test)
    subjects = pipeline.split_subjects(pipeline.split_files(data_dir, train.split))
    pool = np.arange(len(subjects)) if train.records is None else train.records
    names = sorted(set(subjects[pool]))
    if len(names) < 2:
        raise UserError(f"config data.val_split={name}: the data has no such split, and its {len(names)} training "
                        "subject cannot be split into training and validation subjects (data.val_split='' trains "
                        "without validation)")
    n = min(len(names) - 1, max(1, round(d.val_fraction * len(names))))
    held = set(np.random.default_rng(0).permutation(names)[:n].tolist())
    mask = np.isin(subjects[pool], sorted(held))
    return Portions(Portion(train.split, pool[~mask], train.name), Portion(train.split, pool[mask], "val"), test,
                    tuple(sorted(held)))


def cv_folds(config, data_dir: str, manifest: dict) -> dict[str, int]:
    """Subject -> fold of `data.folds` folds: the manifest's (its own class-balanced ones, or
    a protocol file's) when it has that many for every subject of the pooled splits, else
    recomputed the same way for this k (`shards.subject_folds`)."""
    files = pipeline.split_files(data_dir, pipeline.training_split(manifest, config.data))
    subjects = pipeline.split_subjects(files)
    folds = manifest.get("folds", {})
    if len(manifest.get("fold_counts", ())) != config.data.folds or not set(subjects) <= set(folds):
        folds = shards.subject_folds(pipeline.split_labels(files), subjects, config.data.folds)
    return folds


def oof_fold(train: Portion, fold: int, folds: int, data_dir: str) -> tuple[Portion, Portion]:
    """(training, held-out) records of an out-of-fold model (`pretrain.folds`): the subjects of
    `train`'s records in `folds` class-balanced subject folds (`shards.subject_folds`, as `fergate
    cv` draws its folds), fold `fold` held out."""
    files = pipeline.split_files(data_dir, train.split)
    records = np.arange(len(pipeline.split_labels(files))) if train.records is None else train.records
    subjects = pipeline.split_subjects(files)[records]
    if len(set(subjects)) < folds:
        raise UserError(f"config pretrain.folds={folds}: the training records ({train.name}) have "
                        f"{len(set(subjects))} subjects, so at most that many out-of-fold models")
    assign = shards.subject_folds(pipeline.split_labels(files)[records], subjects, folds)
    held = np.array([assign[s] == fold for s in subjects], bool)
    tag = f"out-of-fold {fold} of {folds}"
    return Portion(train.split, records[~held], f"{train.name} ({tag}: training)"), \
        Portion(train.split, records[held], f"{train.name} ({tag}: held out)")


def cv_fold(config, data_dir: str, manifest: dict) -> tuple[Portion, Portion]:
    """(training, held-out) records of fold `data.fold` of `data.folds`: the subjects of the
    training and held-out splits (those the data has) in the manifest's class-balanced folds
    (recomputed the same way for another k), the fold's subjects held out."""
    d, pool = config.data, pipeline.training_split(manifest, config.data)
    subjects = pipeline.split_subjects(pipeline.split_files(data_dir, pool))
    folds = cv_folds(config, data_dir, manifest)
    fold = np.array([folds[s] for s in subjects])
    held = fold == d.fold
    if not held.any():
        raise UserError(f"fold {d.fold} of {d.folds} holds no records: {data_dir} has {len(set(subjects))} "
                        f"subjects in {pool} (fewer folds: --folds)")
    tag = f"fold {d.fold} of {d.folds}"
    return Portion(pool, np.flatnonzero(~held), f"{pool} ({tag}: training)"), \
        Portion(pool, np.flatnonzero(held), f"{pool} ({tag}: held out)")
