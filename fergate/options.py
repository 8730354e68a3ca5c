"""One place per config key of the shared sections (data, input, optim, train, eval, mesh,
init, pretrain): its default, its check, whether a resumed run may change it, and the
value a workdir written before the key existed gets (`KEYS`).

A key whose value is a small language (`REGEX=AXES`, `subtree=factor`, `DIR=WEIGHT`,
`FROM=TO`, `dst=src`, `FILE:ARG`) has one parser here, run when the config loads
(`check_loaded`: a bad value is a one-line error naming the key there, not mid-run); the
code that uses the value reads it typed through `parsed(config, key)`. The config itself
keeps the text, so that `config.json` stays JSON and a resume compares like with like.

Stage specs (`pretrain.configs`: NAME -> "FILE:ARG") name FILE relative to the directory of
the config file that lists them (a family names its own file, "thin.py:variant=exo"), so
that `config.json` holds no absolute path; a config read from a workdir takes each earlier
stage's config from W/pretrain/NAME/config.json, which moves with the workdir.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from fergate.data import augment, labels
from fergate.errors import UserError

#: the mesh axes every run's mesh has (`fergate.train.program.make_mesh`)
MESH_AXES = ("data", "model")
#: metrics `train.select` can pick the best checkpoint by (higher is better)
SELECT_METRICS = ("accuracy", "mean_class_accuracy")
#: a key that no workdir lacks (there since the first one was written)
ALWAYS = object()


def choice(value: str, known: Sequence[str], what: str) -> str:
    """`value` if it is one of `known`, else a UserError listing them."""
    if value not in known:
        raise UserError(f"unknown {what} {value!r}; known: {', '.join(known)}")
    return value


# ----------------------------------------------------------------------------- typed values
class Rule(NamedTuple):
    """`mesh.rules` "REGEX=AXES": a leaf whose path ends in a match of `pattern` gets the
    partition spec `axes` (a mesh axis or None per dimension)."""

    pattern: str
    axes: tuple[str | None, ...]
    text: str  #: the entry as written, for messages


class Scale(NamedTuple):
    """`optim.lr_scale` "subtree=factor": the subtree's learning rate times `factor`."""

    subtree: str
    factor: float


class MixEntry(NamedTuple):
    """`data.mix` "DIR" or "DIR=WEIGHT": a prepared dataset drawn into training at `weight`."""

    dir: str
    weight: float
    text: str


class ParamCopy(NamedTuple):
    """`init.params` "NAME" or "dst=src": an earlier model's subtree `src` loaded into `dst`."""

    dst: str
    src: str


class WeightsEntry(NamedTuple):
    """`init.weights` "PATH" or "BACKBONE=PATH": a published weights file, loaded into the
    named backbone of the family, or (no name) into every backbone that reads its layout."""

    backbone: str
    path: str


class StageSpec(NamedTuple):
    """`pretrain.configs` value "FILE[:ARG]": an earlier stage's config file (relative to the
    directory of the config file naming it) and its argument."""

    path: str
    arg: str

    def file(self, directory: str | None) -> str:
        """FILE found in `directory` (the naming config file's), else as written (relative to
        the working directory, or absolute)."""
        if directory and not os.path.isabs(self.path) and os.path.isfile(os.path.join(directory, self.path)):
            return os.path.join(directory, self.path)
        return self.path

    def resolve(self, directory: str | None) -> str:
        """The `fergate.config.load` spec of the stage, its FILE found as `file` finds it."""
        return f"{self.file(directory)}:{self.arg}" if self.arg else self.file(directory)


def parse_rule(entry: str) -> Rule:
    """"REGEX=AXES", e.g. "experts/kernel0=-,model,-"; REGEX is within the parameters (no
    `params/`, so that the optimizer's moments match too), each mesh axis at most once."""
    pattern, sep, axes = str(entry).rpartition("=")
    pattern, spec = pattern.strip(), tuple(None if a.strip() in ("-", "") else a.strip() for a in axes.split(","))
    named = [a for a in spec if a is not None]
    bad = [a for a in named if a not in MESH_AXES] or len(set(named)) != len(named)
    if pattern.startswith("params/"):
        raise UserError(f"config mesh.rules: {entry!r}: name the parameter's path within the parameters "
                        f"({pattern.removeprefix('params/')!r}), so that its optimizer moments match too")
    if not sep or not pattern or bad:
        raise UserError(f"config mesh.rules: {entry!r} is not REGEX=AXES with AXES among {', '.join(MESH_AXES)} "
                        "or - per dimension, each axis once (e.g. 'experts/kernel0=-,model,-')")
    try:
        re.compile(f"(^|/)(?:{pattern})$")
    except re.error as e:
        raise UserError(f"config mesh.rules: {entry!r}: {e}") from None
    return Rule(pattern, spec, str(entry))


def parse_scale(entry: str) -> Scale:
    name, _, factor = str(entry).partition("=")
    try:
        if not name.strip():
            raise ValueError
        return Scale(name.strip(), float(factor))
    except ValueError:
        raise UserError(f"config optim.lr_scale: {entry!r} is not subtree=factor (e.g. features=0.1)") from None


def parse_mix(entry: str) -> MixEntry:
    entry = str(entry)
    path, _, w = entry.rpartition("=") if "=" in entry else (entry, "", "1")
    try:
        weight = float(w)
    except ValueError:
        raise UserError(f"config data.mix entry {entry!r}: expected DIR or DIR=WEIGHT") from None
    if weight < 0 or not path:
        raise UserError(f"config data.mix entry {entry!r}: expected DIR or DIR=WEIGHT with WEIGHT >= 0")
    return MixEntry(path, weight, entry)


def parse_label_map(entries: Sequence[str]) -> Mapping[str, str]:
    """{canonical FROM: TO} (`fergate.data.labels.parse_mapping`), read-only."""
    try:
        return types.MappingProxyType(labels.parse_mapping(entries))
    except UserError as e:
        raise UserError(f"config data.label_map: {e}") from None


def parse_param_copy(entry: str) -> ParamCopy:
    dst, eq, src = str(entry).partition("=")
    if not dst.strip() or (eq and not src.strip()):
        raise UserError(f"config init.params: {entry!r} is not NAME or DST=SRC (a parameter subtree)")
    return ParamCopy(dst.strip(), src.strip() if eq else dst.strip())


def parse_weights(entry: str) -> WeightsEntry:
    name, eq, path = str(entry).partition("=")
    if not eq:
        name, path = "", name
    if not path.strip() or (eq and not name.strip().isidentifier()):
        raise UserError(f"config init.weights: {entry!r} is not PATH or BACKBONE=PATH (a weights file: .safetensors, "
                        ".npz or .pth)")
    return WeightsEntry(name.strip(), path.strip())


def parse_stages(configs: Mapping[str, str] | Sequence[tuple[str, str]]) -> dict[str, StageSpec]:
    out = {}
    for name, spec in sorted(dict(configs).items()):
        path, _, arg = str(spec).partition(":")
        if not path.strip():
            raise UserError(f"config pretrain.configs.{name}={spec!r}: expected FILE[:ARG] (a config file)")
        out[name] = StageSpec(path.strip(), arg)
    return out


def _each(parse: Callable[[str], Any]) -> Callable[[Sequence[str]], tuple]:
    return lambda entries: tuple(parse(e) for e in entries)


# ----------------------------------------------------------------------------- checks
def at_least(least: float) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if value < least:
            raise UserError(f"config {key}={value}: must be at least {least}")
    return check


def _fraction(key: str, value: float) -> None:
    if not 0 < value < 1:
        raise UserError(f"config {key}={value}: must be in (0, 1)")


def _weight(key: str, value: float) -> None:
    if value <= 0:
        raise UserError(f"config {key}={value}: the main data's share of training draws must be above 0")


def _steps_range(key: str, value: Sequence[int]) -> None:
    if value and (len(value) != 2 or not 1 <= value[0] <= value[1]):
        raise UserError(f"config {key}={tuple(value)}: expected A,B with 1 <= A <= B")


def _metric(key: str, value: str) -> None:
    if value:
        choice(value, SELECT_METRICS, f"config {key} metric")


def _optimizer(key: str, value: str) -> None:
    if value not in ("adam", "sgd"):
        raise UserError(f"unknown optimizer {value!r} (config {key}): adam or sgd")


# ----------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class KeySpec:
    """What fergate knows of one config key."""

    default: Any
    doc: str = ""
    check: Callable[[str, Any], None] | None = None  #: raises a one-line UserError naming the key
    resumable: bool = False  #: a resumed run may change it (it leaves the state alone)
    before: Any = ALWAYS  #: the value a workdir written before the key existed gets (what such a workdir did)
    parse: Callable[[Any], Any] | None = None  #: its text -> the typed value `parsed` returns


K = KeySpec
#: every key of the shared sections, by its dotted name; families add their own sections
#: (and input shapes to `input`), which fergate does not check here
KEYS: dict[str, KeySpec] = {
    # --- data
    "data.dir": K("", "the prepared data; '' -> the built-in `dataset` prepared in the cache with `prep_options`"),
    "data.dataset": K("sample"),
    "data.prep_options": K(dict(size=2800)),
    "data.train_split": K("train"),
    "data.eval_split": K("test"),
    "data.val_split": K("", "validation for train.select: a split of the data, else val_fraction of the training "
                            "subjects"),
    "data.val_fraction": K(0.1, check=_fraction),
    "data.fold": K(-1, "fold >= 0: cross-validation (`fergate cv`): fold `fold` of `folds` subject-independent folds "
                       "of train_split + eval_split (or the splits `cv_splits` names) is held out, the others train",
                   before=-1),
    "data.folds": K(10, before=10),
    "data.cv_splits": K((), before=()),
    "data.oof_fold": K(-1, "oof_fold >= 0: an out-of-fold model of an earlier stage (`pretrain.folds`): fold "
                           "`oof_fold` of `oof_folds` subject folds of the training records is held out of training "
                           "and evaluated on", before=-1),
    "data.oof_folds": K(0, before=0),
    "data.features_from": K("", "an earlier stage (config.pretrain) whose model's `features` output of every record "
                                "is written as field `features_field` into a copy of the data (`fergate features`) "
                                "that this config then reads (VSHNN)", before=""),
    "data.features_field": K("", before=""),
    "data.label_field": K("label"),
    "data.classes": K((), "the classes to train on ((): the data's); the data's are mapped onto them by name"),
    "data.label_map": K((), "'FROM=TO' entries mapping other names ('contempt=-' drops a class)", before=(),
                        parse=parse_label_map),
    "data.mix": K((), "other prepared datasets drawn into training, 'DIR' or 'DIR=WEIGHT' against `weight`",
                  before=(), parse=_each(parse_mix)),
    "data.weight": K(1.0, "the main data's share of training draws", check=_weight, before=1.0),
    "data.balance": K(False),
    "data.workers": K(0, resumable=True),
    "data.cache_mb": K(4096, "host memory (MiB per process) that keeps training records decoded and resized "
                             "after their first read (0: read each time)", check=at_least(0), resumable=True,
                       before=0),
    "data.augment": K("", "augmentation in training: ops separated by '|' (fergate.data.augment), e.g. "
                          "'flip|rotate(10)|brightness_contrast(20, 0.2)|hue_saturation'; each family says which "
                          "it takes (a workdir written with the older flip / rotate / ... keys reads as their ops)",
                      before="", parse=augment.split),
    # --- input (families add their input shapes)
    "input.batch_size": K(16, "the global batch", check=at_least(1)),
    # --- optim
    "optim.name": K("adam", "adam or sgd", check=_optimizer),
    "optim.lr": K(1e-3),
    "optim.b1": K(0.9),
    "optim.b2": K(0.999),
    "optim.eps": K(1e-8),
    "optim.decay_power": K(1.0),
    "optim.end_lr": K(0.0),
    "optim.warmup_steps": K(0),
    "optim.decay_steps": K(0, "the learning rate reaches end_lr there (0: at train.steps)", check=at_least(0),
                           resumable=True),
    "optim.step_every": K(0, "> 0: instead, the rate times step_factor every step_every steps (Caffe's 'step' policy; "
                             "decay_steps does not apply)", check=at_least(0), before=0),
    "optim.step_factor": K(0.1, before=0.1),
    "optim.weight_decay": K(0.0),
    "optim.grad_clip": K(0.0),
    "optim.clip_value": K(0.0, "gradients clipped elementwise to [-v, v] (0: not)", check=at_least(0), before=0.0),
    "optim.frozen": K((), "parameter subtrees not trained"),
    "optim.lr_scale": K((), "'subtree=factor' entries scaling a subtree's rate", before=(), parse=_each(parse_scale)),
    # --- train
    "train.steps": K(10_000, "this run's steps (an earlier stage has its config's: pretrain.steps sets them)",
                     check=at_least(1), resumable=True),
    "train.log_every": K(50, check=at_least(1), resumable=True),
    "train.ckpt_every": K(1000, check=at_least(1), resumable=True),
    "train.keep": K(3, check=at_least(1), resumable=True),
    "train.eval_every": K(-1, "held-out evaluation every N steps (-1: ten times a run, 0: only at the end)",
                          check=at_least(-1), resumable=True),
    "train.select": K("", "keep the checkpoint with the best validation value of this metric ('': the last)",
                      check=_metric),
    "train.profile_steps": K((), check=_steps_range, resumable=True),
    "train.dtype": K("auto", "compute dtype ('auto': bfloat16 on GPU / TPU, float32 on CPU; parameters and optimizer "
                             "state stay float32)"),
    "train.accumulate": K(1, "the global batch in this many micro-batches, one after another, gradients averaged "
                             "(batches larger than memory)", before=1),
    # --- eval
    "eval.batch_size": K(64, check=at_least(1), resumable=True),
    "eval.top_k": K((1, 2, 3), resumable=True),
    # --- mesh: the layout of the state, not its values (restored onto any)
    "mesh.model": K(1, "a model axis of `model` devices within each process (the rest is the data axis)",
                    resumable=True, before=1),
    "mesh.rules": K((), "'REGEX=AXES' entries sharding the parameters (and their optimizer moments) whose path ends "
                        "in REGEX, one mesh axis or - per dimension (families list their widest layers)",
                    resumable=True, before=(), parse=_each(parse_rule)),
    # --- init / pretrain: earlier stages (trained into W/pretrain/NAME) and parameters loaded from them
    "init.params_from": K((), "workdirs, or 'pretrain' (this config's earlier stages)"),
    "init.params": K((), "parameter subtrees loaded, 'NAME' or 'dst=src'", parse=_each(parse_param_copy)),
    "init.weights": K((), "published pretrained weights loaded into the family's backbones before the first step, "
                          "'PATH' (into each backbone that reads its layout) or 'BACKBONE=PATH' (.safetensors, .npz; "
                          ".pth with torch installed; `fergate weights inspect FILE` shows the mapping)", before=(),
                      parse=_each(parse_weights)),
    "pretrain.steps": K(0, "> 0: every earlier stage's train.steps (0: each stage config's own)", before=0),
    "pretrain.inherit": K((), "keys every earlier stage takes from this config", before=()),
    "pretrain.folds": K(0, "k > 0: the `data.features_from` stage's features of a training record come from one of k "
                           "models of that stage that never trained on its subject (out-of-fold; held-out records: "
                           "the stage trained on every training subject; VSHNN's configs: 3); 0: all from that "
                           "one model (in-sample)",
                        check=at_least(0), before=0),
    "pretrain.configs": K({}, "NAME -> 'FILE:ARG', FILE relative to the directory of the config file naming it",
                          before={}, parse=parse_stages),
}
del K

#: config keys that may change between a run and its resumption
RESUMABLE_CHANGES = tuple(k for k, s in KEYS.items() if s.resumable)


def defaults() -> dict[str, dict[str, Any]]:
    """The shared sections at their defaults: {section: {key: value}} (fresh copies)."""
    out: dict[str, dict[str, Any]] = {}
    for dotted, spec in KEYS.items():
        section, key = dotted.split(".")
        out.setdefault(section, {})[key] = copy.deepcopy(spec.default)
    return out


def fill_missing(config) -> None:
    """Gives a workdir's config the keys added since it was written, at the values that mean
    what such a workdir did."""
    for dotted, spec in KEYS.items():
        section, key = dotted.split(".")
        if spec.before is not ALWAYS and key not in config.get(section, {}):
            if section not in config:
                config[section] = {}
            config[section][key] = copy.deepcopy(spec.before)


# ----------------------------------------------------------------------------- reading
def _frozen(value: Any) -> Any:
    """`value` hashable (mappings as sorted pairs), for `parsed`'s cache."""
    if hasattr(value, "items"):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return tuple(map(_frozen, value)) if isinstance(value, (list, tuple)) else value


@functools.lru_cache(maxsize=256)
def _parse(key: str, value: Any) -> Any:
    return KEYS[key].parse(value)


def raw(config, key: str) -> Any:
    """The text of `key` in `config`."""
    section, name = key.split(".")
    return config[section][name]


def parsed(config, key: str) -> Any:
    """The typed value of a mini-language key (e.g. "optim.lr_scale" -> (Scale, ...)), parsed
    once per distinct text; a bad one is a one-line UserError naming the key."""
    return _parse(key, _frozen(raw(config, key)))


def set_origin(config, *, directory: str | None = None, workdir: str | None = None) -> None:
    """Records where `config` was read: the directory of its config file (stage FILEs are
    relative to it), or the training workdir (its stages' configs are in W/pretrain/NAME)."""
    object.__setattr__(config, "_fergate_origin", (directory, workdir))


def origin(config) -> tuple[str | None, str | None]:
    """(config file directory, workdir) `config` was read from; (None, None) when built in code."""
    return getattr(config, "_fergate_origin", (None, None))


def _has(config, dotted: str) -> bool:
    node = config
    for k in dotted.split("."):
        if not hasattr(node, "keys") or k not in node:
            return False
        node = node[k]
    return True


def check_loaded(config) -> None:
    """The checks a config gets when it loads: every mini-language parsed, `pretrain.inherit`
    naming keys of the config, and a config file's stage FILEs present."""
    for key, spec in KEYS.items():
        if spec.parse is not None and _has(config, key):
            parsed(config, key)
    if not _has(config, "pretrain.configs"):
        return
    for key in raw(config, "pretrain.inherit"):
        if not _has(config, key):
            raise UserError(f"config pretrain.inherit: {key!r} is no key of this config")
    directory, workdir = origin(config)
    for name, stage in parsed(config, "pretrain.configs").items():
        if workdir is None and not os.path.isfile(stage.file(directory)):
            raise UserError(f"config pretrain.configs.{name}: config file {stage.path} not found "
                            f"(in {directory or os.getcwd()})")


def validate(config, workdir: str | None = None) -> None:
    """Checks of the config and the workdir that need no data: every key by its spec, then
    those across keys; run before preparing data or compiling, so that a mistake costs nothing."""
    for key, spec in KEYS.items():
        if _has(config, key):
            if spec.check is not None:
                spec.check(key, raw(config, key))
            if spec.parse is not None:
                parsed(config, key)
    c, o, d = config.train, config.optim, config.data
    if c.select and (not d.val_split or not c.eval_every):
        raise UserError(f"config train.select={c.select} picks the best checkpoint on a validation split: it "
                        "needs data.val_split (e.g. val) and train.eval_every (not 0)")
    if o.step_every and not 0 < o.step_factor:
        raise UserError(f"config optim.step_factor={o.step_factor}: must be above 0")
    if o.step_every and o.decay_steps:
        raise UserError("config optim.decay_steps applies to the polynomial decay; with optim.step_every the rate "
                        "steps down every step_every steps: set one of them")
    if d.fold >= 0 and (d.folds < 2 or d.fold >= d.folds):
        raise UserError(f"config data.fold={d.fold} of data.folds={d.folds}: expected 0 <= fold < folds, folds >= 2")
    if d.mix and (d.features_from or d.label_field != "label"):
        raise UserError("config data.mix draws other datasets' expression labels into training: it does not apply to "
                        f"a model reading an earlier stage's features or data.label_field={d.label_field}")
    if workdir is not None:
        if os.path.exists(workdir) and not os.path.isdir(workdir):
            raise UserError(f"--workdir {workdir} is a file, not a directory")
        parent = os.path.abspath(workdir)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK):
            raise UserError(f"--workdir {workdir}: {parent} is not writable")
