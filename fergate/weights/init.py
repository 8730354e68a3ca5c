"""`--config.init.weights`: published weights loaded into a family's backbones (its hook
`backbones(config)`) in a fresh run, before the first step. Each file's layout is read
from its tensors (`fergate.weights.detect`) and goes where a backbone reads it, or where
"BACKBONE=PATH" says; the run records what it loaded (file name, SHA-256, arch, backbones)
in W/weights.json, which `fergate export` copies into export.json.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from fergate import models, options
from fergate.errors import UserError
from fergate.weights import convert, files, read

log = logging.getLogger(__name__)

#: the record of the weights a run started from, in its workdir
RECORD = "weights.json"


def _fits(entry: options.WeightsEntry, arch: str, backbones: dict) -> list[str]:
    """The backbones of `backbones` that `entry` (a file of layout `arch`) loads into."""
    if entry.backbone:
        b = backbones.get(entry.backbone)
        if b is not None and arch not in b.archs:
            raise UserError(f"config init.weights: {entry.path} holds {arch} weights; backbone {entry.backbone} reads "
                            f"{' or '.join(b.archs)}")
        return [entry.backbone] if b is not None else []
    return [n for n, b in backbones.items() if arch in b.archs]


def check(config) -> None:
    """Every `init.weights` entry loads somewhere: into a backbone of this config's model or
    of one of its earlier stages (which take the entries with `pretrain.inherit`). Run by
    `fergate train` before anything is prepared."""
    entries = options.parsed(config, "init.weights")
    if not entries:
        return
    runs = {"": config, **models.family(config.model).stages(config)}
    fam = {n: models.family(c.model).backbones(c) for n, c in runs.items()}
    for e in entries:
        arch = read(e.path)[0].name if not e.backbone else None
        names = {f"{n}/{b}" if n else b for n, bs in fam.items()
                 for b, spec in bs.items() if (b == e.backbone if e.backbone else arch in spec.archs)}
        if not names:
            have = sorted({f"{b} ({', '.join(s.archs)})" for bs in fam.values() for b, s in bs.items()})
            what = f"names backbone {e.backbone}" if e.backbone else f"holds {arch} weights"
            raise UserError(f"config init.weights: {e.path} {what}, which {config.model}/{config.variant} does not "
                            f"read (its backbones: {', '.join(have) or 'none'})")


def load_into(prog, state, workdir: str):
    """`state` with the weights of `init.weights` in the backbones they fit; a backbone
    `required` without them is a UserError. Entries no backbone of this model reads are
    left to its earlier stages (`check`)."""
    config = prog.config
    backbones = prog.family.backbones(config)
    entries = options.parsed(config, "init.weights")
    params, model_state = _plain(state.params), _plain(state.model_state)
    loaded, record = set(), []
    for e in entries:
        arch, tensors = read(e.path)
        names = _fits(e, arch.name, backbones)
        if not names:
            log.info(f"[weights] {e.path} ({arch.name}): no backbone of {config.model}/{config.variant} reads it")
            continue
        report, _ = convert.match(arch, tensors)
        convert.require(report, e.path)
        variables = convert.to_variables(report, tensors, arch)
        for name in names:
            for src, dst in backbones[name].places.items():
                for collection, tree in variables.items():
                    sub = _get(tree, src)
                    if sub is None:
                        continue
                    target = params if collection == "params" else model_state.setdefault(collection, {})
                    _put(target, dst, sub, f"{collection}/{dst}", e.path, arch.name)
            loaded.add(name)
        record.append({"file": os.path.basename(e.path), "sha256": files.sha256(e.path), "arch": arch.name,
                       "backbones": names})
        log.info(f"[weights] {e.path} ({arch.name}, {len(report.used)} tensors) -> {', '.join(names)}")
    missing = [n for n, b in backbones.items() if b.required and n not in loaded]
    if missing:
        b = backbones[missing[0]]
        raise UserError(f"{config.model}/{config.variant}: backbone {missing[0]} is frozen and never trained: give "
                        f"its {' or '.join(b.archs)} weights, --config.init.weights={missing[0]}=FILE")
    if not record:
        return state
    if jax.process_index() == 0:
        with open(os.path.join(workdir, RECORD), "w") as f:
            json.dump(record, f, indent=1)
    return jax.device_put(state.replace(params=params, model_state=model_state), prog.state_sharding)


def recorded(workdir: str) -> list[dict]:
    """The weights the run in `workdir` started from (W/weights.json), else []."""
    path = os.path.join(workdir, RECORD)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)


def _plain(tree):
    return {k: _plain(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


def _get(tree: dict, path: str):
    for k in path.split("/"):
        if not isinstance(tree, dict) or k not in tree:
            return None
        tree = tree[k]
    return tree


def _put(tree: dict, path: str, value, shown: str, file: str, arch: str) -> None:
    *parents, last = path.split("/")
    for k in parents:
        tree = tree.setdefault(k, {})
    if last not in tree:
        raise UserError(f"config init.weights: the model has no {shown} for the {arch} weights of {file}")
    old = jax.tree.map(np.shape, tree[last])
    new = jax.tree.map(np.shape, value)
    if old != new:
        bad = next((p for p, (a, b) in _pairs(old, new) if a != b), "")
        raise UserError(f"config init.weights: {file} ({arch}) does not fit the model's {shown}{bad}: other layers or "
                        "widths (the config's backbone differs from the file's)")
    tree[last] = jax.tree.map(np.asarray, value)


def _pairs(a, b, prefix=""):
    """(path, (shape a, shape b)) where two shape trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from _pairs(a.get(k), b.get(k), f"{prefix}/{k}")
    else:
        yield prefix, (a, b)
