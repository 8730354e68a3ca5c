"""Everything built from a config, for the trainer, the evaluator and `fergate bench` alike:
the mesh, the data the config names, its input pipeline, and the `Program` (the family's
module, the optimizer, shardings and the jitted init / train / predict steps).

Parallelism: a mesh of `data` x `model` devices (`config.mesh.model`, 1 by default).
Batches are built per process and assembled into one global array split over `data`;
the train state is replicated, except the leaves `config.mesh.rules` shard (the widest
layers over `model`, or any leaf over `data`), and donated to the step. XLA's SPMD
partitioner inserts the collectives the sharded layers need.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fergate import models
from fergate.config import choice
from fergate.data import labels, pipeline, shards
from fergate.data.cache import builtin_dir
from fergate.errors import UserError
from fergate.files import read_json

#: metrics `train.select` can pick the best checkpoint by (higher is better)
SELECT_METRICS = ("accuracy", "mean_class_accuracy")
log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # non-trainable collections (e.g. batch_stats); {} when none


# ----------------------------------------------------------------------------- devices
def setup_distributed(coordinator: str | None = None, num_processes: int | None = None,
                      process_id: int | None = None, auto: bool = False) -> None:
    """jax.distributed for multi-host runs: explicit peers (`coordinator`, e.g. processes on
    one CPU machine, with gloo collectives), or `auto` detection (TPU pods, SLURM)."""
    if coordinator or num_processes:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by the CPU backend only
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    elif auto:
        jax.distributed.initialize()


def make_mesh(model: int = 1) -> jax.sharding.Mesh:
    """A `data` x `model` mesh: `model` devices of one process hold each shard of the
    sharded layers (the fast interconnect of a host or a TPU slice's neighbours), `data`
    spans the rest, every process included."""
    local = jax.local_device_count()
    if model < 1 or local % model:
        raise UserError(f"config mesh.model={model}: the model axis must divide the {local} devices of each process "
                        f"(--config.mesh.model=1 runs without one)")
    auto = jax.sharding.AxisType.Auto
    mesh = jax.make_mesh((jax.device_count() // model, model), ("data", "model"), axis_types=(auto, auto))
    if any(len({d.process_index for d in row}) > 1 for row in mesh.devices.reshape(-1, model)):
        raise UserError(f"config mesh.model={model}: this platform's device order puts a model group on several "
                        "processes; use a model axis within one process's devices")
    return mesh


def config_mesh(config) -> tuple[jax.sharding.Mesh, tuple[str, ...]]:
    """The mesh `config.mesh` asks for and its sharding rules, both checked: a mesh this
    process cannot build and a malformed rule are one-line errors."""
    m = config.get("mesh", {})
    mesh, rules = make_mesh(m.get("model", 1)), tuple(m.get("rules", ()))
    parse_rules(rules, mesh)
    return mesh, rules


def leaf_name(path) -> str:
    """A pytree path as "params/sarnn/input/kernel" (dict keys, attributes, indices)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def parse_rules(rules: Sequence[str], mesh: jax.sharding.Mesh) -> list[tuple[re.Pattern, jax.P, str]]:
    """`config.mesh.rules` entries "REGEX=AXES": a leaf whose path ends in a match of REGEX
    gets the partition spec AXES, one mesh axis name per array dimension, "-" for none
    (e.g. "experts/kernel0=-,model,-"). The first matching rule wins."""
    out = []
    for rule in rules:
        pattern, sep, axes = rule.rpartition("=")
        pattern, spec = pattern.strip(), tuple(None if a.strip() in ("-", "") else a.strip() for a in axes.split(","))
        named = [a for a in spec if a is not None]
        bad = [a for a in named if a not in mesh.axis_names] or len(set(named)) != len(named)
        if pattern.startswith("params/"):
            raise UserError(f"config mesh.rules: {rule!r}: name the parameter's path within the parameters "
                            f"({pattern.removeprefix('params/')!r}), so that its optimizer moments match too")
        if not sep or not pattern or bad:
            raise UserError(f"config mesh.rules: {rule!r} is not REGEX=AXES with AXES among "
                            f"{', '.join(mesh.axis_names)} or - per dimension, each axis once "
                            "(e.g. 'experts/kernel0=-,model,-')")
        try:
            out.append((re.compile(f"(^|/)(?:{pattern})$"), jax.P(*spec), rule))
        except re.error as e:
            raise UserError(f"config mesh.rules: {rule!r}: {e}") from None
    return out


def state_shardings(mesh: jax.sharding.Mesh, abstract_state, rules: Sequence[str]):
    """The sharding of every leaf of a train state: the first rule whose pattern the leaf's
    path ends in (the optimizer's moments follow their parameters, whose paths they end
    in), else replicated. A rule whose axes do not fit the leaf (rank, a dimension not a
    multiple of the axis size) is a one-line error naming both."""
    parsed, sharded = parse_rules(rules, mesh), {}

    def one(path, x):
        name = leaf_name(path)
        for pattern, spec, rule in parsed:
            if pattern.search(name):
                if len(spec) != x.ndim or any(a and x.shape[i] % mesh.shape[a] for i, a in enumerate(spec)):
                    raise UserError(f"config mesh.rules: {rule!r} does not fit {name} {tuple(x.shape)} on a mesh of "
                                    f"{dict(mesh.shape)}")
                if name.startswith("params/"):
                    sharded[name.removeprefix("params/")] = spec
                return jax.NamedSharding(mesh, spec)
        return jax.NamedSharding(mesh, jax.P())

    shardings = jax.tree_util.tree_map_with_path(one, abstract_state)
    if any(a and mesh.shape[a] > 1 for spec in sharded.values() for a in spec):
        log.info(f"[mesh] {dict(mesh.shape)}: {len(sharded)} parameters sharded "
                 f"({', '.join(f'{k} {tuple(v)}' for k, v in sharded.items())})")
    return shardings


def global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Per-process batches -> one global batch sharded over the data axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


# ----------------------------------------------------------------------------- data
def data_dir(config, workdir: str | None = None) -> str:
    """`config.data.dir`, or the built-in dataset `config.data.dataset` prepared in the cache
    with `config.data.prep_options` (the `fergate` command prepares it on first use); with
    `config.data.features_from`, the copy of that data holding the earlier stage's features,
    in the training `workdir` (`features_dir`; the trainer writes it)."""
    stage = config.data.get("features_from", "")
    if stage and workdir is not None:
        out = features_dir(workdir, stage)
        if not features_ready(out):
            raise UserError(f"{out} holds no complete features: train {workdir} first (it writes them)")
        return out
    return source_dir(config)


def features_ready(out: str) -> bool:
    """Whether `out` holds a complete copy of the data with features."""
    return bool(read_json(os.path.join(out, "manifest.json"), {}).get("complete"))


def features_dir(workdir: str, stage: str) -> str:
    """Where a run keeps its data with the features of its earlier stage `stage`."""
    return os.path.join(workdir, "pretrain", stage, "features")


def source_dir(config) -> str:
    """The data the config names (before any features are added to it)."""
    if config.data.dir:
        return config.data.dir
    out = builtin_dir(config.data.dataset, dict(config.data.prep_options))
    if not os.path.exists(os.path.join(out, "manifest.json")):
        raise UserError(f"config data.dir is empty and the built-in {config.data.dataset} dataset is not prepared "
                        f"in {out}: run `fergate train` (it prepares it) or `data_prep.prep.builtin(...)`, or pass "
                        "--config.data.dir=DIR")
    return out


def validate(config, workdir: str | None = None) -> None:
    """Checks of the config and the workdir that need no data: run before preparing data or
    compiling, so that a mistake costs nothing."""
    c = config.train
    for key, value, least in (("train.steps", c.steps, 1), ("input.batch_size", config.input.batch_size, 1),
                              ("eval.batch_size", config.eval.batch_size, 1), ("train.log_every", c.log_every, 1),
                              ("train.ckpt_every", c.ckpt_every, 1), ("train.keep", c.keep, 1),
                              ("train.eval_every", c.eval_every, -1),
                              ("optim.decay_steps", config.optim.decay_steps, 0),
                              ("optim.step_every", config.optim.get("step_every", 0), 0),
                              ("optim.clip_value", config.optim.get("clip_value", 0), 0)):
        if value < least:
            raise UserError(f"config {key}={value}: must be at least {least}")
    if c.profile_steps and (len(c.profile_steps) != 2 or not 1 <= c.profile_steps[0] <= c.profile_steps[1]):
        raise UserError(f"config train.profile_steps={tuple(c.profile_steps)}: expected A,B with 1 <= A <= B")
    if c.select:
        choice(c.select, SELECT_METRICS, "config train.select metric")
        if not config.data.val_split or not c.eval_every:
            raise UserError(f"config train.select={c.select} picks the best checkpoint on a validation split: it "
                            "needs data.val_split (e.g. val) and train.eval_every (not 0)")
    if config.optim.get("step_every", 0) and not 0 < config.optim.step_factor:
        raise UserError(f"config optim.step_factor={config.optim.step_factor}: must be above 0")
    if config.optim.get("step_every", 0) and config.optim.decay_steps:
        raise UserError("config optim.decay_steps applies to the polynomial decay; with optim.step_every the rate "
                        "steps down every step_every steps: set one of them")
    if not 0 < config.data.val_fraction < 1:
        raise UserError(f"config data.val_fraction={config.data.val_fraction}: must be in (0, 1)")
    d = config.data
    if d.fold >= 0 and (d.folds < 2 or d.fold >= d.folds):
        raise UserError(f"config data.fold={d.fold} of data.folds={d.folds}: expected 0 <= fold < folds, folds >= 2")
    if d.mix and (d.get("features_from") or d.label_field != "label"):
        raise UserError("config data.mix draws other datasets' expression labels into training: it does not apply to "
                        f"a model reading an earlier stage's features or data.label_field={d.label_field}")
    if d.weight <= 0:
        raise UserError(f"config data.weight={d.weight}: the main data's share of training draws must be above 0")
    if workdir is not None:
        if os.path.exists(workdir) and not os.path.isdir(workdir):
            raise UserError(f"--workdir {workdir} is a file, not a directory")
        parent = os.path.abspath(workdir)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK):
            raise UserError(f"--workdir {workdir}: {parent} is not writable")


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
                drop = {k for k, v in labels.parse_mapping(config.data.label_map).items() if v == labels.DROP}
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
    table = tuple(labels.relabel(theirs, mine, labels.parse_mapping(config.data.label_map),
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
    mine = _prep_options(manifest)
    known = [manifest["classes"]]
    for entry in config.data.mix:
        path, _, w = str(entry).rpartition("=") if "=" in str(entry) else (str(entry), "", "1")
        try:
            weight = float(w)
        except ValueError:
            raise UserError(f"config data.mix entry {entry!r}: expected DIR or DIR=WEIGHT") from None
        if weight < 0 or not path:
            raise UserError(f"config data.mix entry {entry!r}: expected DIR or DIR=WEIGHT with WEIGHT >= 0")
        try:
            other = pipeline.read_manifest(path)
        except UserError as e:
            raise UserError(f"config data.mix entry {entry!r}: {e}") from None
        known.append(other["classes"])
        theirs = _prep_options(other)
        for k in MIX_OPTIONS:
            if k in mine and k in theirs and mine[k] != theirs[k]:
                raise UserError(f"config data.mix: {path} was prepared with {k}={theirs[k]}, the main data with "
                                f"{k}={mine[k]}: prepare both alike (fergate prep --{k} ...)")
        pipeline.split_parts(other, config.data.train_split, path)
        table = labels.relabel(other["classes"], config.data.classes, labels.parse_mapping(config.data.label_map),
                               f"config data.mix: {path} ({other.get('dataset', '?')})")
        out.append(pipeline.Mix(path, config.data.train_split, weight, tuple(table)))
    unused = set(labels.parse_mapping(config.data.label_map)) - {labels.canonical(c) for cs in known for c in cs}
    if unused and config.data.label_field == "label":
        raise UserError(f"config data.label_map names {', '.join(sorted(unused))}, a class of none of the data "
                        f"(classes: {', '.join(sorted({c for cs in known for c in cs}))})")
    return out


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


@dataclasses.dataclass(frozen=True)
class Portion:
    """Records of a split: all, or `records` (indices in the split)."""

    split: str
    records: np.ndarray | None = None
    name: str = ""  #: how logs and reports call it

    def __post_init__(self):
        object.__setattr__(self, "name", self.name or self.split)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run trains on, validates on (`data.val_split`; None: no validation) and
    evaluates on: the config's splits, or with `data.fold` = i, fold i of `data.folds`
    subject-independent folds of the training and held-out splits joined (evaluation) and
    the other folds (training); validation is then `data.val_fraction` of the training
    subjects. `held` names the training subjects held out for validation."""

    train: Portion
    val: Portion | None
    eval: Portion
    held: tuple[str, ...] = ()


def plan(config, data_dir: str, manifest: dict) -> Plan:
    d = config.data
    if d.fold < 0:
        train, test = Portion(d.train_split), Portion(d.eval_split)
    else:
        train, test = cv_fold(config, data_dir, manifest)
    name = d.val_split
    if not name:
        return Plan(train, None, test)
    if name in manifest["splits"] and d.fold < 0:
        return Plan(train, Portion(name), test)
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
    return Plan(Portion(train.split, pool[~mask], train.name), Portion(train.split, pool[mask], "val"), test,
                tuple(sorted(held)))


def cv_fold(config, data_dir: str, manifest: dict) -> tuple[Portion, Portion]:
    """(training, held-out) records of fold `data.fold` of `data.folds`: the subjects of the
    training and held-out splits (those the data has) in the manifest's class-balanced folds
    (recomputed the same way for another k), the fold's subjects held out."""
    d, pool = config.data, pipeline.training_split(manifest, config.data)
    files = pipeline.split_files(data_dir, pool)
    subjects, ys = pipeline.split_subjects(files), pipeline.split_labels(files)
    folds = manifest.get("folds", {})
    if len(manifest.get("fold_counts", ())) != d.folds or not set(subjects) <= set(folds):
        folds = shards.subject_folds(ys, subjects, d.folds)
    fold = np.array([folds[s] for s in subjects])
    held = fold == d.fold
    if not held.any():
        raise UserError(f"fold {d.fold} of {d.folds} holds no records: {data_dir} has {len(set(subjects))} "
                        f"subjects in {pool} (fewer folds: --folds)")
    tag = f"fold {d.fold} of {d.folds}"
    return Portion(pool, np.flatnonzero(~held), f"{pool} ({tag}: training)"), \
        Portion(pool, np.flatnonzero(held), f"{pool} ({tag}: held out)")


def input_pipeline(config, data_dir: str, split: str, *, train: bool, manifest: dict | None = None,
                   records: np.ndarray | None = None, all_processes: bool = False,
                   mix: Sequence[pipeline.Mix] = ()) -> grain.IterDataset:
    """Batches of `split` (its `records` only, when given) for the config's model: its fields
    and transforms, the training batch size (shuffled, balanced, augmented, repeated) or the
    evaluation one (one ordered, padded pass); its labels mapped onto `data.classes`
    (`relabel`), and `mix` (`mixed`: `data.mix`'s datasets) drawn alongside. This process's part
    of each global batch, or with `all_processes` the whole pass in every process."""
    fam = models.family(config.model)
    n = 1 if all_processes else jax.process_count()
    batch = (config.input.batch_size if train else config.eval.batch_size) // n
    manifest = manifest or pipeline.read_manifest(data_dir)
    return pipeline.make_dataset(
        data_dir, split, fam.record_fields(config), batch, seed=config.seed, train=train,
        keep=tuple(fam.inputs(config)), balance=config.data.balance, transforms=fam.transforms(config, train),
        process_index=0 if all_processes else jax.process_index(), process_count=n,
        workers=config.data.workers if train else 0, label_field=config.data.label_field,
        label_map=label_map(config, manifest), records=records, labels=split_relabelled(config, data_dir, split,
                                                                                        manifest),
        mix=mix, weight=config.data.weight)


def split_relabelled(config, data_dir: str, split: str, manifest: dict) -> np.ndarray | None:
    """Every record's label of `split` mapped onto `data.classes` (None: no mapping)."""
    table = relabel(config, manifest)
    if table is None:
        return None
    return np.asarray(table, np.int64)[pipeline.split_labels(pipeline.split_files(data_dir, split))]


def record_reader(config, data_dir: str, split: str, manifest: dict | None = None) -> Callable:
    """read(indices, fields) -> those records of `split` as the model sees them in evaluation:
    the model's inputs after the family's transforms, or other record fields as stored."""
    fam = models.family(config.model)
    transforms, inputs, needed = fam.transforms(config, False), fam.inputs(config), fam.record_fields(config)
    manifest = manifest or pipeline.read_manifest(data_dir)
    mapped, subjects = split_relabelled(config, data_dir, split, manifest), label_map(config, manifest)

    def read(indices, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
        load = tuple(dict.fromkeys([*needed, *(f for f in fields if f not in inputs)]))
        recs = pipeline.read_records(data_dir, split, indices, load, transforms, config.data.label_field,
                                     subjects, mapped)
        return {f: recs[f] for f in fields}

    return read


# ----------------------------------------------------------------------------- optimizer
def decay_horizon(config) -> int:
    """The step at which the learning rate reaches `optim.end_lr`: `optim.decay_steps`, or
    `train.steps` when 0."""
    return config.optim.decay_steps or config.train.steps


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam(W) or SGD with momentum (weight decay on the kernels), polynomial decay (power
    `decay_power`) over `decay_horizon`, or with `step_every` > 0 the rate times
    `step_factor` every `step_every` steps (floored at `end_lr`), after an optional linear
    warm-up, optional global-norm clipping (`grad_clip`) and elementwise clipping
    (`clip_value`); the `optim.frozen` parameter subtrees (pretrained
    parts) get no update and no optimizer state; `optim.lr_scale` entries "subtree=factor"
    scale a subtree's rate (a pretrained trunk fine-tuned slower than a new head)."""
    o, steps = config.optim, decay_horizon(config)
    if o.get("step_every", 0) > 0:  # Caffe's "step" policy; workdirs written before it have none
        decay = optax.exponential_decay(o.lr, o.step_every, o.step_factor, staircase=True, end_value=o.end_lr or None)
    else:
        decay = optax.polynomial_schedule(o.lr, o.end_lr, o.decay_power, max(1, steps - o.warmup_steps))
    warm_decay = decay if not o.warmup_steps else optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, o.warmup_steps), decay], [o.warmup_steps])

    def schedule(count):
        # past the horizon optax computes (1 - t/T)^p with t/T a hair above 1 on XLA:CPU (a
        # reciprocal multiply): a negative base, so NaN for a fractional power. end_lr it is.
        if o.get("step_every", 0) > 0:
            return warm_decay(count)
        return jnp.where(count >= steps, jnp.float32(o.end_lr), warm_decay(count))

    if o.name == "adam":
        opt = optax.adamw(schedule, o.b1, o.b2, o.eps, weight_decay=o.weight_decay) if o.weight_decay \
            else optax.adam(schedule, o.b1, o.b2, o.eps)
    elif o.name == "sgd":
        # weight decay on the weights (kernels) only, as Caffe's nets set decay_mult 0 on biases
        kernels = functools.partial(jax.tree_util.tree_map_with_path,
                                    lambda p, _: "kernel" in str(getattr(p[-1], "key", "")))
        opt = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=kernels), optax.sgd(schedule, momentum=o.b1))
    else:
        raise UserError(f"unknown optimizer {o.name!r} (config optim.name): adam or sgd")
    if o.grad_clip:
        opt = optax.chain(optax.clip_by_global_norm(o.grad_clip), opt)
    if o.get("clip_value", 0.0):  # workdirs written before the option have none
        opt = optax.chain(optax.clip(o.clip_value), opt)
    scales = {}
    for entry in o.get("lr_scale", ()):  # workdirs written before the option have none
        name, _, factor = entry.partition("=")
        try:
            scales[name] = float(factor)
        except ValueError:
            raise UserError(f"config optim.lr_scale: {entry!r} is not subtree=factor (e.g. features=0.1)") from None
    if o.frozen or scales:
        def label(k: str) -> str:
            return "frozen" if k in o.frozen else f"scale={scales[k]}" if k in scales else "train"

        def labels(params):
            unknown = sorted(set(scales) - set(params))
            if unknown:
                raise UserError(f"config optim.lr_scale: no parameter subtree {', '.join(unknown)} "
                                f"(this model has {', '.join(params)})")
            return {k: jax.tree.map(lambda _, k=k: label(k), v) for k, v in params.items()}

        groups = {"train": opt, "frozen": optax.set_to_zero(),
                  **{f"scale={f}": optax.chain(opt, optax.scale(f)) for f in scales.values()}}
        opt = optax.multi_transform(groups, labels)
    return opt, schedule


# ----------------------------------------------------------------------------- program
class Program:
    """The compiled program of a config: the family's module, the optimizer, shardings,
    and the jitted `init(rng, batch)`, `train_step(state, batch) -> (state, metrics)` and
    `predict(state, batch) -> outputs` (logits, introspection, label, mask, index)."""

    def __init__(self, config):
        self.config = config
        self.family = models.family(config.model)
        self.mesh, rules = config_mesh(config)
        self.replicated = jax.NamedSharding(self.mesh, jax.P())
        self.batch_sharding = jax.NamedSharding(self.mesh, jax.P("data"))
        self.module = self.family.build(config)
        self.tx, self.schedule = make_optimizer(config)
        n = self.mesh.shape["data"]  # the batch is split over the data axis
        for name, b in (("input.batch_size", config.input.batch_size), ("eval.batch_size", config.eval.batch_size)):
            if b % n or b % jax.process_count():
                raise UserError(f"config {name}={b} must be a multiple of the {n} devices of the data axis")
        k = config.train.get("accumulate", 1)
        if k < 1 or config.input.batch_size % (k * n):
            raise UserError(f"config train.accumulate={k}: the global batch input.batch_size={config.input.batch_size} "
                            f"must split into {k} micro-batches of a multiple of the {n} devices of the data axis")
        local = self.family.example_batch(config, config.input.batch_size // jax.process_count())
        self.example = global_batch(local, self.batch_sharding)
        self.abstract_state = jax.eval_shape(self._init, jax.random.key(0), self.example)
        #: the width of the model's logits
        self.num_classes = jax.eval_shape(self._predict, self.abstract_state, self.example)["logits"].shape[-1]
        self.state_sharding = state_shardings(self.mesh, self.abstract_state, rules)
        self.init = jax.jit(self._init, out_shardings=self.state_sharding)
        self.train_step = jax.jit(self._train_step, in_shardings=(self.state_sharding, self.batch_sharding),
                                  out_shardings=(self.state_sharding, self.replicated), donate_argnums=0)
        self.predict = jax.jit(self._predict, in_shardings=(self.state_sharding, self.batch_sharding),
                               out_shardings=self.replicated)

    def _init(self, rng, batch) -> TrainState:
        variables = self.module.init(rng, batch, train=False)
        params = variables.pop("params")
        return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params), dict(variables))

    def _apply(self, params, model_state, batch, train: bool, rng=None):
        variables = {"params": params, **model_state}
        mutable = list(model_state) if (train and model_state) else False
        res = self.module.apply(variables, batch, train=train, rngs={"dropout": rng} if rng is not None else None,
                                mutable=mutable)
        return res if mutable else (res, model_state)

    def _grads(self, params, model_state, batch, rng):
        """(loss, metrics with accuracy), grads and the new model state of one (micro-)batch."""

        frozen = set(self.config.optim.frozen)

        def loss_fn(params):
            if frozen:  # constants to autodiff: a frozen subtree's backward pass is never computed
                params = {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in params.items()}
            out, new_state = self._apply(params, model_state, batch, True, rng)
            loss, metrics = self.family.loss(self.config, out, batch)
            return loss, (out["logits"], new_state, metrics)

        (loss, (logits, model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        correct = (jnp.argmax(logits, -1) == batch["label"]) * batch["mask"]
        return {"loss": loss, **metrics, "accuracy": models.masked_mean(correct, batch["mask"])}, grads, model_state

    def _train_step(self, state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.key(self.config.seed), state.step)
        k = self.config.train.get("accumulate", 1)
        if k == 1:
            metrics, grads, model_state = self._grads(state.params, state.model_state, batch, rng)
        else:  # k micro-batches in turn, their gradients averaged: a global batch larger than memory
            # micro-batch j = rows j, k + j, 2k + j, ...: each device keeps its own rows (no reshuffle)
            micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)

            def body(carry, mb):
                total, model_state, j = carry
                m, g, model_state = self._grads(state.params, model_state, mb, jax.random.fold_in(rng, j))
                return (jax.tree.map(jnp.add, total, g), model_state, j + 1), m

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (total, model_state, _), per = jax.lax.scan(body, (zeros, state.model_state, 0), micro)
            grads = jax.tree.map(lambda g: g / k, total)
            metrics = jax.tree.map(jnp.mean, per)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "lr": self.schedule(state.step), "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state, model_state), metrics

    def _predict(self, state: TrainState, batch):
        out, _ = self._apply(state.params, state.model_state, batch, False)
        return {"logits": out["logits"], "introspect": out.get("introspect", {}),
                **{k: out[k] for k in ("features", "representations") if k in out},
                **{k: batch[k] for k in ("label", "mask", "index") if k in batch}}

    def new_state(self) -> TrainState:
        return self.init(jax.random.key(self.config.seed), self.example)

    def with_statistics(self, state: TrainState, stats: dict) -> TrainState:
        """`state` with the family's measured statistics in the "stats" collection."""
        if not stats:
            return state
        declared = state.model_state.get("stats", {})
        for k, v in stats.items():
            if k not in declared or declared[k].shape != np.shape(v):
                raise ValueError(f"statistics {k!r} {np.shape(v)} is not a 'stats' variable of the model "
                                 f"({ {n: x.shape for n, x in declared.items()} })")
        model_state = {**state.model_state, "stats": {**declared, **stats}}
        return jax.device_put(state.replace(model_state=model_state), self.state_sharding)

    def abstract_sharded_state(self):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.abstract_state, self.state_sharding)

    def n_params(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.abstract_state.params)))
