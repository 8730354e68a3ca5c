"""`fergate features`: a trained model's per-example `features` output written into a copy
of the data, as a new record field, for a later stage to read (VSHNN: the frame CNN's
appearance features of every clip frame, read by the scene-aware RNN).

The output has the source's splits (those whose records have the fields the model reads),
shard files, record order and fields, plus the new one. Shards are written atomically and
a re-run skips the finished ones (`fergate.data.shards`), as `fergate prep` does: a killed
extraction resumes.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence

import jax
import numpy as np

from fergate import config as config_lib
from fergate import lock
from fergate.data import pipeline, schema, shards
from fergate.data.records import Records
from fergate.errors import DiskFull, UserError
from fergate.files import disk_full, no_space, read_json, space_errors, write_atomic
from fergate.train.checkpoint import restore_selected
from fergate.train.data import DataPlan, Portion
from fergate.train.mesh import global_batch
from fergate.train.program import Trained, from_workdir

log = logging.getLogger(__name__)

#: manifest keys copied from the source data
KEPT = ("dataset", "source", "classes", "options", "detector", "landmark_model", "identity_model", "protocol")


def extract(workdir: str, data: str, out: str, field: str, replace_stale: bool = False,
            folds: Sequence[str] = ()) -> dict:
    """Writes `data` with each record's `features` from the model trained in `workdir`
    (its selected or newest checkpoint) as `field` into `out`; returns the manifest. With
    `folds` (the out-of-fold models of `workdir`'s stage, `pretrain.folds`), each record one
    of them held out of its training (its held-out portion) takes that model's features
    instead: every record `workdir` trained on comes from a model that never saw its subject;
    the manifest says which model wrote each record (`features.out_of_fold`). Shards already
    in `out` are kept when the same checkpoints wrote them (`out/.features.json`); written by
    others, they are an error, or with `replace_stale` deleted and redone."""
    if jax.process_count() > 1:
        raise UserError("fergate features runs in one process: run it before a multi-process job and pass its "
                        "output as --config.data.dir (with --config.data.features_from='')")
    if os.path.abspath(out) == os.path.abspath(data):
        raise UserError(f"--out {out} is the source data itself: name a new directory")
    with lock.hold(out, "fergate features"), space_errors(lambda e: _disk_full(e, out, data)):
        return _extract(workdir, data, out, field, replace_stale, tuple(folds))


def _extract(workdir: str, data: str, out: str, field: str, replace_stale: bool, folds: tuple[str, ...]) -> dict:
    trained = from_workdir(workdir, data=data)
    config, prog, step, plan = trained.config, trained.program, trained.step, trained.data
    manifest = plan.manifest
    shapes = jax.eval_shape(prog.predict, prog.abstract_state, prog.example)
    if "features" not in shapes:
        raise UserError(f"the {config.model}/{config.variant} model of {workdir} has no features output")
    width = shapes["features"].shape[-1]
    models, owners = fold_models(trained, folds, data)
    _claim(out, {"workdir": os.path.realpath(workdir), "step": int(step), "field": field,
                 "source_data": os.path.realpath(data),
                 **({"folds": [[os.path.realpath(f), s] for f, (_, s) in zip(folds, models[1:])]} if folds else {})},
           replace_stale)
    needed = prog.family.record_fields(config)
    splits = [s for s, v in manifest["splits"].items() if v["records"] and _has(data, s, needed)]
    if not splits:
        raise UserError(f"no split of {data} has the fields the model reads ({', '.join(needed)})")
    t0, done = time.time(), 0
    for split in splits:
        files = pipeline.split_files(data, split)
        ends = np.cumsum([len(pipeline.split_labels([f])) for f in files])
        owner = owners.get(split, np.zeros(int(ends[-1]), np.int64))
        for i, path in enumerate(files):
            name = os.path.basename(path)
            if shards.shard_done(out, name):
                continue
            first = int(ends[i - 1]) if i else 0
            feats, seen = None, np.zeros(int(ends[i]) - first, bool)
            for m in np.unique(owner[first:int(ends[i])]):  # each record's features from the model that owns it
                mine = first + np.flatnonzero(owner[first:int(ends[i])] == m)
                for local in plan.input_pipeline(Portion(split, mine), train=False, all_processes=True):
                    res = jax.device_get(prog.predict(models[m][0], global_batch(local, prog.batch_sharding)))
                    valid = res["mask"] > 0
                    if feats is None:
                        feats = np.zeros((int(ends[i]) - first, *res["features"].shape[1:]), np.float32)
                    feats[res["index"][valid] - first] = res["features"][valid]
                    seen[res["index"][valid] - first] = True
            if not seen.all():
                raise UserError(f"{path}: {int((~seen).sum())} records got no features (masked out by the model's "
                                f"label mapping, config data.label_field={config.data.label_field})")
            _write_shard(path, out, name, field, feats)
            done += len(feats) if feats is not None else 0
            log.info(f"[features] {split}: {name} ({done} records, {done / max(time.time() - t0, 1e-9):.1f}/s)")
    info = {k: manifest.get(k) for k in KEPT}
    info["features"] = {"field": field, "workdir": os.path.abspath(workdir), "step": step, "width": width,
                        "model": f"{config.model}/{config.variant}", "source_data": os.path.abspath(data)}
    if folds:  # which model wrote each record: 0 the stage itself, i the out-of-fold model folds[i - 1]
        info["features"]["out_of_fold"] = {
            "models": [os.path.realpath(workdir), *map(os.path.realpath, folds)],
            "owners": {s: owners[s].tolist() for s in splits if s in owners}}
    given = manifest.get("folds") if manifest.get("protocol") else None  # a protocol file's folds, kept
    result = shards.write_manifest(out, {s: len(pipeline.split_files(data, s)) for s in splits}, info, given)
    log.info(f"[features] {field} of {config.model}/{config.variant} (step {step}"
             f"{f', training records from {len(folds)} out-of-fold models' if folds else ''}) -> {out}: "
             + ", ".join(f"{s}: {v['records']}" for s, v in result["splits"].items()))
    return result


def fold_models(trained: Trained, folds: Sequence[str], data: str) -> tuple[list, dict[str, np.ndarray]]:
    """[(state, step)] of the stage (0) and its out-of-fold models (1..k), and {split: the
    model of each record}: a record an out-of-fold model held out is that model's, every
    other the stage's. Each fold model is checked to be the stage's config but for its fold,
    and their held-out records to be exactly the records the stage trained on."""
    config, prog, plan = trained.config, trained.program, trained.data
    models, owners = [(trained.state, trained.step)], {}
    if not folds:
        return models, owners
    mine = _flat(config)
    for i, fold in enumerate(folds, 1):
        cfg = config_lib.load_workdir(fold)
        differ = [k for k, v in _flat(cfg).items() if mine.get(k) != v and k not in OOF_KEYS]
        if differ or (cfg.data.oof_fold, cfg.data.oof_folds) != (i - 1, len(folds)):
            raise UserError(f"{fold} is not out-of-fold model {i - 1} of {len(folds)} of {trained.config.model}/"
                            f"{config.variant} (its config differs in {', '.join(differ[:4]) or 'data.oof_fold'})")
        state, step, _ = restore_selected(fold, prog.abstract_sharded_state())
        models.append((state, step))
        held = DataPlan.of(cfg, data).portions.eval  # the records this model never trained on
        for split, records in _by_split(data, held).items():
            owner = owners.setdefault(split, np.zeros(len(pipeline.split_labels(pipeline.split_files(data, split))),
                                                      np.int64))
            if (owner[records] != 0).any():
                raise UserError(f"{fold}: its held-out records overlap another out-of-fold model's")
            owner[records] = i
    parts = plan.portions
    for portion in (p for p in (parts.train, parts.val) if p is not None):  # every record the stage trained on
        for split, records in _by_split(data, portion).items():
            if split not in owners or (owners[split][records] == 0).any():
                raise UserError(f"the out-of-fold models of {trained.config.variant} ({folds[0]}, ...) do not hold out "
                                f"every record it trained on in {split}")
    return models, owners


#: the keys an out-of-fold model's config differs in from its stage's
OOF_KEYS = ("data.oof_fold", "data.oof_folds")


def _flat(config) -> dict:
    return config_lib.flatten(json.loads(config_lib.to_json(config)))


def _by_split(data: str, portion: Portion) -> dict[str, np.ndarray]:
    """{split: record indices within it} of a portion (of a joined split `a+b`: its parts in turn)."""
    manifest = pipeline.read_manifest(data)
    out, start = {}, 0
    for part in pipeline.split_parts(manifest, portion.split, data):
        n = manifest["splits"][part]["records"]
        records = np.arange(n) if portion.records is None else portion.records
        mine = records[(records >= start) & (records < start + n)] - start
        if len(mine):
            out[part] = np.asarray(mine, np.int64)
        start += n
    return out


def _claim(out: str, owner: dict, replace_stale: bool) -> None:
    """Marks `out` as written by `owner` (checkpoint, field, source), so that shards another
    checkpoint wrote are never mixed with this one's."""
    path = os.path.join(out, ".features.json")
    try:
        previous = read_json(path)
    except ValueError:  # damaged: whose shards these are is not known
        previous = {"workdir": "an unknown workdir", "step": "?"}
    if previous is not None and previous != owner:
        if not replace_stale:
            raise UserError(f"--out {out} holds features of {previous['workdir']} (step {previous['step']}), not "
                            f"of {owner['workdir']} (step {owner['step']}): use a new directory or delete it")
        log.info(f"[features] {out} was written from another checkpoint (step {previous['step']}): redoing it")
        for name in os.listdir(out):  # all but the lock this run holds
            if name != lock.NAME:
                p = os.path.join(out, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)
    write_atomic(path, json.dumps(owner))


def _disk_full(e: BaseException, out: str, data: str) -> DiskFull:
    """The one line for an extraction a full disk stopped: the partial shard removed, the
    finished ones kept (the same command writes only the others); a shard needs about what
    a finished one takes, or its source shard."""
    path = no_space(e) or out
    for tmp in glob.glob(os.path.join(out, ".tmp-*")):
        os.unlink(tmp)
    done = [os.path.join(out, n) for n in os.listdir(out) if shards.shard_done(out, n)]
    shard = os.path.basename(path).removeprefix(".tmp-")
    doing = f"writing shard {shard}" if shard.endswith(".array_record") else f"writing {os.path.basename(path)}"
    source = os.path.join(data, shard)
    needs = max(map(os.path.getsize, done), default=None) or (os.path.getsize(source) if os.path.isfile(source)
                                                               else None)
    kept = f"the {len(done)} finished shards in {out} (the partial one removed); the rerun writes the others" \
        if done else f"no finished shard in {out} (the partial one removed)"
    return disk_full(out, kept, needs, doing)


def _has(data: str, split: str, fields) -> bool:
    """Whether the split's records hold `fields` (looked up in its first record)."""
    src = Records(pipeline.split_files(data, split)[:1])
    return len(src) > 0 and set(fields) <= set(schema.read_header(src[0])[1]["fields"])


def _write_shard(path: str, out: str, name: str, field: str, feats: np.ndarray | None) -> None:
    """A copy of shard `path` with `feats[j]` added to record j as `field`; images keep
    their encoding (PNG stays PNG)."""
    src = Records([path])
    w = shards.ShardWriter(out, name)
    compress = None
    for j in range(len(src)):
        raw = src[j]
        if compress is None:  # one `fergate prep` wrote the shard: its first record tells the encoding
            compress = any(meta[0] == "png" for meta in schema.read_header(raw)[1]["fields"].values())
        rec = schema.decode(raw)
        rec[field] = feats[j]
        w.write(schema.encode(rec, compress=compress), rec["label"], rec.get("subject", ""))
    w.close()
