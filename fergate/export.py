"""Trained models that leave the training job: `fergate export` and `fergate.load`.

An export is a directory:

    export.json      what it is: format and versions, model, classes, the inputs the function
                     reads, the preprocessing contract (face pipeline options, record fields),
                     earlier stages, a SHA-256 of the parameters, and the published weights the
                     model started from (`weights`: file name, SHA-256, arch; `fergate.weights`)
    config.json      the resolved training config (for the family's input transforms)
    params/          the variables (params + statistics such as batch norm's), orbax, no optimizer
    infer.jax        the inference function serialized with `jax.export`: (variables, batch) ->
                     probabilities, logits, introspection (and features), any batch size, lowered
                     for CPU, CUDA and TPU
    stages/NAME/     an earlier stage whose `features` output is a record field of this model
                     (VSHNN's frame CNN), exported the same way

The function runs with jax alone (`jax.export.deserialize(open("infer.jax", "rb").read())
.call(variables, batch)`); `load` adds the face pipeline and the family's input transforms,
which fergate knows through the family contract (export and predict name no family).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import fergate
from fergate import config as config_lib
from fergate import lock, models
from fergate.data import fields as fields_lib
from fergate.data import pipeline
from fergate.errors import UserError
from fergate.files import disk_full, need_json, read_json, remove_settled, space_errors
from fergate.weights import init as weights_init

log = logging.getLogger(__name__)

#: The export layout this fergate writes; it reads this and every older one.
FORMAT = 1
MANIFEST = "export.json"
#: the training data's manifest keys an export keeps: the face pipeline that made its records
DATA_KEYS = ("dataset", "classes", "options", "detector", "landmark_model", "identity_model")


def export(workdir: str, out: str, step: int | None = None) -> dict:
    """Writes the model of `workdir` (the selected checkpoint, else the newest, or `step`)
    to `out`; returns export.json. The export is written into `OUT.tmp-export` (under its
    lock: one export at a time) and renamed to `out` when whole, so a killed export leaves
    no `out`; run again over a finished export of the same parameters, it does nothing."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        done = _exported(workdir, out, step)
        if done is None:
            raise UserError(f"--out {out} exists and is not an empty directory: name a new one")
        log.info(f"[export] {out} already holds step {done['step']} of {workdir}: nothing to do")
        return done
    tmp = out.rstrip("/") + ".tmp-export"
    with lock.hold(tmp, "fergate export", shown=f"--out {out}") as held:
        moved = False
        try:
            with space_errors(lambda e: disk_full(tmp, f"nothing in {out} (the partial export removed); {workdir} "
                                                       "is untouched")):
                _clear(tmp)  # what a killed export left
                manifest = _export(workdir, tmp, step)
                if os.path.isdir(out):
                    os.rmdir(out)
                os.replace(tmp, out)
                moved = True
                if held is not None:
                    held.moved(out)
        finally:
            if not moved:
                _clear(tmp, settle=True)
    return manifest


def _clear(directory: str, settle: bool = False) -> None:
    """Empties `directory`, but for the lock this process holds on it; `settle`: after a
    failed save, until its writes under way have stopped landing in it."""
    remove_settled(lambda: [os.path.join(directory, n) for n in (os.listdir(directory) if os.path.isdir(directory)
                                                                 else ()) if n != lock.NAME],
                   quiet_s=0.3 if settle else 0.0)


def _exported(workdir: str, out: str, step: int | None) -> dict | None:
    """export.json of `out` when it is a finished export of the parameters this export would
    write (the rerun of an export killed after its last rename), else None."""
    from fergate.train.program import from_workdir

    manifest = read_json(os.path.join(out, MANIFEST)) if os.path.isdir(out) else None
    if not isinstance(manifest, dict) or manifest.get("workdir") != os.path.abspath(workdir):
        return None
    if step is not None and manifest.get("step") != step:
        return None
    try:
        trained = from_workdir(workdir, step, data=False)
    except UserError:
        return None
    variables = jax.device_get({"params": trained.state.params, **trained.state.model_state})
    return manifest if checksum(variables) == manifest.get("params_sha256") else None


def _export(workdir: str, out: str, step: int | None) -> dict:
    from fergate.train.program import from_workdir

    trained = from_workdir(workdir, step, data=False)  # what the records were: `training_data`
    cfg, prog, state, step = trained.config, trained.program, trained.state, trained.step
    data = training_data(cfg, workdir)
    variables = jax.device_get({"params": state.params, **state.model_state})
    fam = models.family(cfg.model)
    inputs = {k: (tuple(int(d) for d in shape), np.dtype(dtype).name)
              for k, (shape, dtype) in fam.predict_inputs(cfg).items()}
    os.makedirs(out, exist_ok=True)
    stages = {}
    stage = cfg.data.get("features_from", "")
    if stage:  # the earlier stage computes a record field this model reads
        stage_dir = os.path.join(workdir, "pretrain", stage)
        if not os.path.isdir(stage_dir):
            raise UserError(f"{workdir} reads features of its stage {stage!r}, but {stage_dir} is not there")
        sub = _export(stage_dir, os.path.join(out, "stages", stage), None)
        stages[stage] = {"field": cfg.data.features_field, "path": f"stages/{stage}", "model": sub["model"]}

    def infer(variables, batch):
        res = prog.module.apply(variables, batch, train=False)
        got = {"probabilities": jax.nn.softmax(res["logits"].astype(jnp.float32), -1), "logits": res["logits"],
               "introspect": res.get("introspect", {})}
        return {**got, **({"features": res["features"]} if "features" in res else {})}

    (b,) = jax.export.symbolic_shape("batch")
    spec = {k: jax.ShapeDtypeStruct((b, *shape), dtype) for k, (shape, dtype) in inputs.items()}
    vspec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), variables)
    platforms = ("cpu", "cuda", "tpu")
    try:
        exported = jax.export.export(jax.jit(infer), platforms=platforms)(vspec, spec)
    except Exception:  # noqa: BLE001 - an op without a lowering for some platform: this one still works
        platforms = (jax.default_backend(),)
        exported = jax.export.export(jax.jit(infer), platforms=platforms)(vspec, spec)
    with open(os.path.join(out, "infer.jax"), "wb") as f:
        f.write(exported.serialize())
    save_variables(os.path.join(out, "params"), variables)
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(config_lib.to_json(cfg))
    fields = list(fam.record_fields(cfg))
    manifest = {
        "format": FORMAT, "fergate": fergate.version(), "jax": jax.__version__,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": f"{cfg.model}/{cfg.variant}", "step": int(step), "workdir": os.path.abspath(workdir),
        "classes": list(cfg.data.classes), "platforms": list(platforms),
        "inputs": {k: {"shape": list(s), "dtype": d} for k, (s, d) in inputs.items()},
        "outputs": sorted(jax.eval_shape(infer, vspec, {k: jax.ShapeDtypeStruct((1, *s), d)
                                                          for k, (s, d) in inputs.items()})),
        "record_fields": fields, "kind": "clip" if any(fields_lib.get(f).temporal for f in fields) else "face",
        "data": data, "stages": stages, "params_sha256": checksum(variables),
        "weights": weights_init.recorded(workdir),  # the published weights it started from (file, SHA-256)
    }
    with open(os.path.join(out, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def training_data(cfg, workdir: str) -> dict:
    """How the training data's records were made (its manifest's `DATA_KEYS`): the face
    pipeline a prediction must repeat. From W/data.json (the trainer keeps it), else the
    training data's manifest."""
    data = read_json(os.path.join(workdir, "data.json"))
    if data is not None:
        return {k: data[k] for k in DATA_KEYS if k in data}  # not the trainer's fingerprint of them
    from fergate.train.data import source_dir

    try:
        manifest = pipeline.read_manifest(source_dir(cfg))
    except UserError as e:
        raise UserError(f"{workdir} keeps no data.json and its training data is not readable ({e}): the face "
                        "pipeline's options are needed to export it") from None
    return {k: manifest[k] for k in DATA_KEYS if k in manifest}


def checksum(variables: Any) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, in path order."""
    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(variables), key=lambda p: jax.tree_util.keystr(p[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_variables(path: str, variables: Any) -> None:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.abspath(path), variables)


def load_variables(path: str) -> Any:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(os.path.abspath(path))


# ----------------------------------------------------------------------------- loading
@dataclasses.dataclass
class Model:
    """A loaded export: `predict(images)` for faces in photos, `predict_records(records)` for
    records as `fergate prep` writes them (or the face pipeline makes them)."""

    path: str
    manifest: dict
    config: Any
    variables: Any
    function: Any  #: the deserialized `jax.export.Exported`
    stages: dict[str, tuple[Model, str]]  #: name -> (model, the record field its features fill)
    batch_size: int = 32

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def kind(self) -> str:
        """"face" (a model of one face) or "clip" (of T frames of a face)."""
        return self.manifest["kind"]

    def pipeline_fields(self) -> set[str]:
        """The record fields the face pipeline must make (those the stages fill excluded)."""
        own = set(self.manifest["record_fields"]) - {f for _, f in self.stages.values()}
        for m, _ in self.stages.values():
            own |= m.pipeline_fields()
        return own - set(fields_lib.derived(own))

    def transforms(self) -> list:
        """The family's evaluation transforms (deterministic maps only)."""
        import grain

        fam = models.family(self.config.model)
        return [t for t in fam.transforms(self.config, False) if not isinstance(t, grain.transforms.RandomMap)]

    def model_inputs(self, records: Sequence[dict]) -> dict[str, np.ndarray]:
        """Records -> the stacked inputs of the function (the family's transforms applied)."""
        maps = self.transforms()
        fields = list(self.manifest["record_fields"])
        out = []
        for rec in records:
            r = pipeline.record_for_model({k: rec[k] for k in fields if k in rec})
            missing = [k for k in fields if k not in r]
            if missing:
                raise UserError(f"{self.path}: the model reads record fields {', '.join(missing)}, which these "
                                "records lack")
            for t in maps:
                r = t.map(r)
            out.append(r)
        return {k: np.stack([np.asarray(r[k], np.dtype(spec["dtype"])) for r in out])
                for k, spec in self.manifest["inputs"].items()}

    def warm(self) -> None:
        """Compiles the function (and its stages') for `batch_size` now: `fergate predict` does
        it while its face pipeline starts, so the first faces do not wait for XLA."""
        for model, _ in self.stages.values():
            model.warm()
        batch = {k: np.zeros((self.batch_size, *v["shape"]), v["dtype"]) for k, v in self.manifest["inputs"].items()}
        jax.block_until_ready(self.function.call(self.variables, batch))

    def predict_records(self, records: Sequence[dict], stages: bool = True) -> dict[str, Any]:
        """{"probabilities" (N, K), "logits", "introspect" {name: (N, ...)}, ...} of records
        (earlier stages fill their fields first, unless `stages` is False: the records hold
        them), in batches of `batch_size`."""
        records = [dict(r) for r in records]
        for model, field in self.stages.values() if stages else ():
            feats = model.predict_records(records)["features"]
            for r, f in zip(records, feats):
                r[field] = f
        outs = []
        for i in range(0, len(records), self.batch_size):
            chunk = records[i: i + self.batch_size]
            batch = self.model_inputs(chunk)
            n = len(chunk)
            if n < self.batch_size:  # one compiled shape: pad the last batch
                batch = {k: np.concatenate([v, np.repeat(v[-1:], self.batch_size - n, 0)]) for k, v in batch.items()}
            res = jax.device_get(self.function.call(self.variables, batch))
            outs.append(jax.tree.map(lambda x, n=n: np.asarray(x)[:n], res))
        if not outs:
            return {}
        return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


    def predict(self, inputs: Sequence, min_score: float | None = None, detector: str | None = None) -> list[dict]:
        """Per face (a face model: `inputs` are photos, as paths or RGB arrays) or per clip (a
        clip model: each input a video path or a sequence of RGB frames): a dict of the
        source, the face's box, detector score and landmarks in the photo, class
        probabilities, the label and the model's introspection; an input without a prediction
        gives {"source", "error"}, the error as `fergate predict` words it
        (`fergate.predict.reason`). `min_score`, `detector`: as `fergate predict --min_confidence`,
        `--detector`."""
        from fergate import predict as P

        P.init_worker(self.manifest["data"], sorted(self.pipeline_fields()), min_score, detector)
        # as `fergate predict`'s work units give them, in input order, with its reasons for none
        items = [it for i, x in enumerate(inputs) for it in P.input_items(x, i, self.kind)]
        faces = [it for it in items if "error" not in it]
        lines = iter(P.predict_faces(self, faces)[0] if faces else [])
        return [P.error_line(it) if "error" in it else next(lines) for it in items]


def load(path: str, batch_size: int = 32) -> Model:
    """The export in `path` (`fergate export`), ready to predict."""
    mpath = os.path.join(path, MANIFEST)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")) and not os.path.exists(mpath):
        raise UserError(f"{path} is a training workdir, not an export: `fergate export --workdir {path} --out E` "
                        "first, then pass E")
    manifest = need_json(mpath, f"{path} is not a fergate export (no {MANIFEST}): make one with `fergate export`")
    fmt = manifest.get("format")
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise UserError(f"{path} was written by fergate {manifest.get('fergate', '?')} in export format {fmt}; this "
                        f"fergate {fergate.version()} reads formats 1 to {FORMAT}: upgrade fergate to load it")
    config = config_lib.load_workdir(path)
    models.family(config.model)  # declares the family's own record fields (and how to derive them)
    with open(os.path.join(path, "infer.jax"), "rb") as f:
        function = jax.export.deserialize(bytearray(f.read()))
    variables = load_variables(os.path.join(path, "params"))
    if checksum(variables) != manifest["params_sha256"]:
        raise UserError(f"{path}/params do not match the checksum in {MANIFEST}: the export is damaged")
    stages = {name: (load(os.path.join(path, s["path"]), batch_size), s["field"])
              for name, s in manifest.get("stages", {}).items()}
    return Model(path, manifest, config, variables, function, stages, batch_size)
