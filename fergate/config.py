"""Config files: `path/to/family.py[:key=value,...]` calls that file's `get_config(arg)`;
`--config.a.b=value` overrides follow, typed by the field they replace.

A config file is loaded as a module of a package made of its directory, so the files of
one directory share code with relative imports (`from . import common`). The returned
ml_collections.ConfigDict is locked: an unknown key is a UserError naming it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import sys
import types
from collections.abc import Sequence
from typing import Any

import ml_collections

from fergate.data import augment
from fergate.errors import UserError


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """`"variant=joint,smoke=True"` -> ConfigDict over `defaults`, values typed like them
    (big_vision's `bvcc.parse_arg`); an unknown key or a bad value is a UserError."""
    out = ml_collections.ConfigDict(defaults)
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in defaults:
            raise UserError(f"unknown config argument {key!r}; known: {', '.join(sorted(defaults))}")
        out[key] = _coerce(value.strip(), defaults[key], key)
    return out


def choice(value: str, known: Sequence[str], what: str) -> str:
    """`value` if it is one of `known`, else a UserError listing them."""
    if value not in known:
        raise UserError(f"unknown {what} {value!r}; known: {', '.join(known)}")
    return value


def _coerce(text: str, like: Any, key: str) -> Any:
    if isinstance(like, bool):
        if text.lower() in ("1", "true", "yes", ""):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise UserError(f"config {key}: expected true/false, got {text!r}")
    if isinstance(like, str) or like is None:
        try:
            value = ast.literal_eval(text)
            return value if like is None else text
        except (ValueError, SyntaxError):
            return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(like, (tuple, list)) and all(isinstance(v, str) for v in like):  # a,b -> ("a", "b")
            return type(like)(p.strip() for p in text.split(",") if p.strip())
        raise UserError(f"config {key}: cannot read {text!r} as {type(like).__name__}") from None
    if isinstance(like, float) and isinstance(value, int):
        value = float(value)
    if isinstance(like, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(like)(value)
    if type(value) is not type(like):
        raise UserError(f"config {key}: expected {type(like).__name__}, got {text!r}")
    return value


def load_module(path: str) -> types.ModuleType:
    """Executes a config file as module `<package>.<stem>`, its directory as the package
    (for `from . import common`; a family kept elsewhere can load `configs/common.py` with it)."""
    path = os.path.abspath(path)
    directory, stem = os.path.split(path)
    package = "fergate_configs_" + hashlib.sha1(directory.encode()).hexdigest()[:12]
    if package not in sys.modules:
        pkg = types.ModuleType(package)
        pkg.__path__ = [directory]
        sys.modules[package] = pkg
    spec = importlib.util.spec_from_file_location(f"{package}.{stem.removesuffix('.py')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `file.py[:arg]` and applies `key=value` overrides (`config.` prefix optional)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    module = load_module(path)
    if not hasattr(module, "get_config"):
        raise UserError(f"{path} has no get_config(arg)")
    cfg = module.get_config(arg or None)
    cfg.lock()
    for item in overrides:
        key, eq, value = item.removeprefix("--").removeprefix("config.").partition("=")
        if not eq:
            raise UserError(f"override {item!r} must be key=value")
        override(cfg, key, value)
    return cfg


def override(cfg: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Sets `dotted` (a.b.c) from its text, typed like the value it replaces."""
    flat = flatten(cfg.to_dict(), as_json=False)
    if dotted not in flat:
        raise UserError(f"unknown config key {dotted!r}")
    cfg.update_from_flattened_dict({dotted: _coerce(text, flat[dotted], dotted)})


def flatten(d: dict, prefix: str = "", as_json: bool = True) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (values as JSON text with `as_json`, to compare them)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}.", as_json))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True, default=str) if as_json else v
    return out


def _tuples(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def load_workdir(workdir: str) -> ml_collections.ConfigDict:
    """The config a training workdir was written with (its `config.json`; sequences as
    tuples, as config files write them), without its mesh: the mesh is a layout of the
    training run, and a workdir is read on any number of devices."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{path} missing: {workdir} is not a fergate training workdir")
    with open(path) as f:
        raw = _tuples(json.load(f))
    data = raw.get("data", {})
    if any(k in data for k in augment.LEGACY_KEYS):  # written before data.augment
        data["augment"] = augment.from_legacy(data)
        for k in augment.LEGACY_KEYS:
            data.pop(k, None)
    cfg = ml_collections.ConfigDict(raw)
    for section, keys in ADDED_KEYS.items():
        for k, v in keys.items():
            if section in cfg and k not in cfg[section]:
                cfg[section][k] = v
    if "mesh" in cfg:  # read to evaluate, export or load from: whole, on whatever devices this process has
        cfg.mesh.model, cfg.mesh.rules = 1, ()
    return cfg


#: config keys added after workdirs were first written, with the values that mean what such
#: a workdir did (so that `fergate eval` and friends read older workdirs)
ADDED_KEYS = {"data": {"fold": -1, "folds": 10, "cv_splits": (), "label_map": (), "mix": (), "weight": 1.0},
              "train": {"accumulate": 1}}


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True, indent=1, default=str)


#: keys every earlier stage takes from its config: a stage trained on another fold's held-out
#: subjects would leak them into the later stage's evaluation
FOLD_KEYS = ("data.fold", "data.folds")


def pretrain_stages(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """The earlier stages `config.pretrain.configs` {NAME: config spec} lists, each taking
    this config's values of the keys in `config.pretrain.inherit` (the data, a shared
    network's shape) and `config.pretrain.steps` when set."""
    pre = config.get("pretrain", {})
    stages = {}
    for name, spec in sorted(pre.get("configs", {}).items()):
        stage = load(spec)
        with stage.unlocked():
            for key in (*pre.get("inherit", ()), *FOLD_KEYS):
                *path, field = key.split(".")
                dst, src = stage, config
                for k in path:
                    dst, src = dst[k], src[k]
                dst[field] = src[field]
            if config.data.get("fold", -1) >= 0:  # a stage's fold is drawn from its config's pool of splits
                stage.data.cv_splits = tuple(config.data.get("cv_splits") or
                                             (config.data.train_split, config.data.eval_split))
            if pre.get("steps"):
                stage.train.steps = pre.steps
        stages[name] = stage
    return stages
