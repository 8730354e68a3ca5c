"""Config files: `path/to/family.py[:key=value,...]` calls that file's `get_config(arg)`;
`--config.a.b=value` overrides follow, typed by the field they replace.

A config file is loaded as a module of a package made of its directory, so the files of
one directory share code with relative imports (`from . import common`). The returned
ml_collections.ConfigDict is locked: an unknown key is a UserError naming it, and its
values are checked as they load (`fergate.options`: a malformed `mesh.rules`, `data.mix`,
... is a one-line error here, not mid-run).
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import json
import os
import sys
import types
from collections.abc import Sequence
from typing import Any

import ml_collections

from fergate import options
from fergate.data import augment
from fergate.errors import UserError
from fergate.files import need_json
from fergate.options import choice as choice  # where config files import it from


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """`"variant=joint,smoke=True"` -> ConfigDict over `defaults`, values typed like them
    (big_vision's `bvcc.parse_arg`); an unknown key or a bad value is a UserError."""
    out = ml_collections.ConfigDict(defaults)
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in defaults:
            raise UserError(f"unknown config argument {key!r}{did_you_mean(key, defaults)} (known: "
                            f"{', '.join(sorted(defaults))})")
        out[key] = _coerce(value.strip(), defaults[key], key)
    return out


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
    options.set_origin(cfg, directory=os.path.dirname(os.path.abspath(path)))
    options.check_loaded(cfg)
    return cfg


def override(cfg: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Sets `dotted` (a.b.c) from its text, typed like the value it replaces."""
    flat = flatten(cfg.to_dict(), as_json=False)
    if dotted not in flat:
        raise UserError(f"unknown config key {dotted!r}{did_you_mean(dotted, flat)} (every key: fergate config show "
                        "CONFIG)")
    cfg.update_from_flattened_dict({dotted: _coerce(text, flat[dotted], dotted)})


def did_you_mean(key: str, known) -> str:
    """"; did you mean train.steps?" for a key close to one of `known` (a misspelling, or a key
    without its section: `steps`), else ""."""
    leaf = sorted((k for k in known if k.rpartition(".")[2] == key), key=len)
    close = leaf[:2] or difflib.get_close_matches(key, list(known), n=1, cutoff=0.7)
    return f"; did you mean {' or '.join(close)}?" if close else ""


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
    raw = _tuples(need_json(path, f"{path} missing: {workdir} is not a fergate training workdir"))
    data = raw.get("data", {})
    if any(k in data for k in augment.LEGACY_KEYS):  # written before data.augment: the same ops
        data["augment"] = augment.from_legacy(data)
        for k in augment.LEGACY_KEYS:
            data.pop(k, None)
    cfg = ml_collections.ConfigDict(raw)
    options.fill_missing(cfg)  # keys added since it was written, at what such a workdir did
    # read to evaluate, export or load from: whole, on whatever devices this process has
    cfg.mesh.model, cfg.mesh.rules = 1, ()
    options.set_origin(cfg, workdir=workdir)
    options.check_loaded(cfg)
    return cfg


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True, indent=1, default=str)


#: keys every earlier stage takes from its config: a stage trained on another fold's held-out
#: subjects would leak them into the later stage's evaluation
FOLD_KEYS = ("data.fold", "data.folds")


def pretrain_stages(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """The earlier stages `config.pretrain.configs` {NAME: "FILE:ARG"} lists, each taking
    this config's values of the keys in `config.pretrain.inherit` (the data, a shared
    network's shape) and `config.pretrain.steps` when set. A config read from a workdir W
    has the stages W trained, as they were trained: W/pretrain/NAME's configs (they move with W;
    a stage W's run did not use, e.g. with `init.params_from` naming another workdir, has none)."""
    if "pretrain" not in config:
        return {}
    directory, workdir = options.origin(config)
    stages = {}
    for name, spec in options.parsed(config, "pretrain.configs").items():
        if workdir is not None:
            trained = os.path.join(workdir, "pretrain", name)
            if os.path.exists(os.path.join(trained, "config.json")):
                stages[name] = load_workdir(trained)
            continue
        stage = load(spec.resolve(directory))
        with stage.unlocked():
            for key in (*config.pretrain.inherit, *FOLD_KEYS):
                *path, field = key.split(".")
                dst, src = stage, config
                for k in path:
                    if k not in dst:
                        raise UserError(f"config pretrain.inherit: {key!r} is no key of stage {name}'s config")
                    dst, src = dst[k], src[k]
                dst[field] = src[field]
            if config.data.fold >= 0:  # a stage's fold is drawn from its config's pool of splits
                stage.data.cv_splits = tuple(config.data.cv_splits or (config.data.train_split, config.data.eval_split))
            if config.pretrain.steps:
                stage.train.steps = config.pretrain.steps
        stages[name] = stage
    return stages
