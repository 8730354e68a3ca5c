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

import jax
import numpy as np

from fergate import lock
from fergate.data import pipeline, schema, shards
from fergate.data.records import Records
from fergate.errors import DiskFull, UserError
from fergate.files import disk_full, no_space, read_json, space_errors, write_atomic
from fergate.train.data import Portion
from fergate.train.mesh import global_batch
from fergate.train.program import from_workdir

log = logging.getLogger(__name__)

#: manifest keys copied from the source data
KEPT = ("dataset", "source", "classes", "options", "detector", "landmark_model", "identity_model", "protocol")


def extract(workdir: str, data: str, out: str, field: str, replace_stale: bool = False) -> dict:
    """Writes `data` with each record's `features` from the model trained in `workdir`
    (its selected or newest checkpoint) as `field` into `out`; returns the manifest. Shards
    already in `out` are kept when the same checkpoint wrote them (`out/.features.json`);
    written by another, they are an error, or with `replace_stale` deleted and redone."""
    if jax.process_count() > 1:
        raise UserError("fergate features runs in one process: run it before a multi-process job and pass its "
                        "output as --config.data.dir (with --config.data.features_from='')")
    if os.path.abspath(out) == os.path.abspath(data):
        raise UserError(f"--out {out} is the source data itself: name a new directory")
    with lock.hold(out, "fergate features"), space_errors(lambda e: _disk_full(e, out, data)):
        return _extract(workdir, data, out, field, replace_stale)


def _extract(workdir: str, data: str, out: str, field: str, replace_stale: bool) -> dict:
    trained = from_workdir(workdir, data=data)
    config, prog, state, step, plan = trained.config, trained.program, trained.state, trained.step, trained.data
    manifest = plan.manifest
    shapes = jax.eval_shape(prog.predict, prog.abstract_state, prog.example)
    if "features" not in shapes:
        raise UserError(f"the {config.model}/{config.variant} model of {workdir} has no features output")
    width = shapes["features"].shape[-1]
    _claim(out, {"workdir": os.path.realpath(workdir), "step": int(step), "field": field,
                 "source_data": os.path.realpath(data)}, replace_stale)
    needed = prog.family.record_fields(config)
    splits = [s for s, v in manifest["splits"].items() if v["records"] and _has(data, s, needed)]
    if not splits:
        raise UserError(f"no split of {data} has the fields the model reads ({', '.join(needed)})")
    t0, done = time.time(), 0
    for split in splits:
        files = pipeline.split_files(data, split)
        ends = np.cumsum([len(pipeline.split_labels([f])) for f in files])
        for i, path in enumerate(files):
            name = os.path.basename(path)
            if shards.shard_done(out, name):
                continue
            first = int(ends[i - 1]) if i else 0
            feats, seen = None, np.zeros(int(ends[i]) - first, bool)
            for local in plan.input_pipeline(Portion(split, np.arange(first, int(ends[i]))), train=False,
                                             all_processes=True):
                res = jax.device_get(prog.predict(state, global_batch(local, prog.batch_sharding)))
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
    given = manifest.get("folds") if manifest.get("protocol") else None  # a protocol file's folds, kept
    result = shards.write_manifest(out, {s: len(pipeline.split_files(data, s)) for s in splits}, info, given)
    log.info(f"[features] {field} of {config.model}/{config.variant} (step {step}) -> {out}: "
             + ", ".join(f"{s}: {v['records']}" for s, v in result["splits"].items()))
    return result


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
