"""Config files: `path/to/family.py[:key=value,...]` calls that file's `get_config(arg)`;
`--config.a.b=value` overrides follow, typed by the field they replace.

The returned ml_collections.ConfigDict is locked: an unknown key is a UserError naming it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any

import ml_collections

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


def load(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Loads `file.py[:arg]` and applies `key=value` overrides (`config.` prefix optional)."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise UserError(f"config file not found: {path}")
    mod_spec = importlib.util.spec_from_file_location(f"fergate_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
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
    node, *path = cfg, *dotted.split(".")
    for part in path[:-1]:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise UserError(f"unknown config key {dotted!r}")
        node = node[part]
    leaf = path[-1]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise UserError(f"unknown config key {dotted!r}")
    with node.unlocked():
        node[leaf] = _coerce(text, node[leaf], dotted)


def load_workdir(workdir: str) -> ml_collections.ConfigDict:
    """The config a training workdir was written with (its `config.json`)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{path} missing: {workdir} is not a fergate training workdir")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True, indent=1, default=str)
