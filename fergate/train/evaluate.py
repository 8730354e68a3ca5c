"""Evaluation of any model family: one ordered pass over a split, its metrics (accuracy,
mean class accuracy = balanced accuracy over the classes the split has, the others listed
and warned of, top-k, confusion matrix), per-class means of whatever the model returns
under "introspect", and the family's own reports."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import jax
import numpy as np
from sklearn.metrics import confusion_matrix, top_k_accuracy_score

from fergate import models, plots
from fergate.config import load_workdir
from fergate.files import need_json, write_atomic
from fergate.train.data import DataPlan, Portion
from fergate.train.mesh import global_batch
from fergate.train.program import Program

log = logging.getLogger(__name__)


def evaluate(prog: Program, state, data: DataPlan, portion: Portion | str) -> models.Results:
    """Predictions of `prog` in `state` on `portion` of `data` (a split, or some of its
    records), with their metrics."""
    config = prog.config
    split = portion if isinstance(portion, str) else portion.split
    out: dict[str, list] = {"logits": [], "label": [], "index": []}
    intro: dict[str, list] = {}
    for local in data.input_pipeline(portion, train=False):
        res = jax.device_get(prog.predict(state, global_batch(local, prog.batch_sharding)))
        valid = res["mask"] > 0
        for k in out:
            out[k].append(res[k][valid])
        for name, v in res["introspect"].items():
            intro.setdefault(name, []).append(np.asarray(v, np.float32)[valid])
    logits, labels = np.concatenate(out["logits"]), np.concatenate(out["label"])
    return models.Results(
        config=config, classes=list(data.classes), metrics=classification_metrics(logits, labels, data.classes,
                                                                                  config.eval.top_k),
        labels=labels, logits=logits, introspect={n: np.concatenate(v) for n, v in intro.items()},
        index=np.concatenate(out["index"]), read=data.record_reader(split))


def classification_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str], top_k=(1, 2, 3)) -> dict:
    """Accuracy, mean per-class accuracy over the classes present (`absent_classes` lists
    the others: a split without them says nothing of them), top-k, the confusion matrix
    (rows: true class) and per-class accuracy."""
    k, pred = len(classes), logits.argmax(-1)
    conf = confusion_matrix(labels, pred, labels=list(range(k)))
    support = conf.sum(1)
    per_class = np.where(support > 0, np.diag(conf) / np.maximum(support, 1), np.nan)

    def top(t: int) -> float:
        if t == 1 or t >= k:  # scikit-learn reads two classes as binary scores: top-1 is the accuracy
            return float((pred == labels).mean()) if t == 1 else 1.0
        return float(top_k_accuracy_score(labels, logits, k=t, labels=list(range(k))))

    return {
        "examples": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "mean_class_accuracy": float(np.nanmean(per_class)),
        "absent_classes": [c for c, n in zip(classes, support) if n == 0],
        "per_class_accuracy": {c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, per_class)},
        "top_k": {str(t): top(t) for t in top_k if t <= k},
        "confusion_matrix": conf.tolist(),
        "classes": list(classes),
    }


def on_other_data(config, path: str, split: str | None = None, label_map: Sequence[str] | None = None) -> str:
    """Points a trained `config` at the prepared dataset `path` (`fergate eval --data`) and
    returns the split to evaluate (`split`, else its `test`, else the config's eval split).
    Its classes map onto the model's by name as `data.mix` maps them (`labels.relabel`), after
    `label_map` ("FROM=TO", "FROM=-" drops; default: the training's); a class that maps onto
    none, records made otherwise (`data.unlike`: another face size, ...) or a model that reads
    an earlier stage's features are one-line errors."""
    from fergate import options
    from fergate.data import labels, pipeline
    from fergate.errors import UserError
    from fergate.train import data as data_lib

    other = pipeline.read_manifest(path)
    if config.data.get("features_from") or config.data.label_field != "label":
        raise UserError(f"--data {path}: this model reads " + ("its earlier stage's features (data.features_from), "
                        "which only its own data holds" if config.data.get("features_from") else
                        f"{config.data.label_field} labels, not classes") + ": evaluate it on its own data")
    trained = os.path.join(data_lib.source_dir(config, checked=False), "manifest.json")
    if os.path.exists(trained) and (differ := data_lib.unlike(need_json(trained, ""), other)):
        k, mine, theirs = differ
        raise UserError(f"--data {path} was prepared with {k}={theirs}, the model's data with {k}={mine}: prepare it "
                        f"alike (fergate prep --{k} ...)")
    split = split or ("test" if "test" in other["splits"] else config.data.eval_split)
    pipeline.split_parts(other, split, path)
    mapping = labels.parse_mapping(label_map) if label_map is not None else options.parsed(config, "data.label_map")
    labels.relabel(other["classes"], config.data.classes, mapping, f"--data {path} ({other.get('dataset', '?')})",
                   how="--label_map {name}=CLASS or drop it with --label_map {name}=-")
    with config.unlocked():
        config.data.dir = path
        config.data.train_split = config.data.eval_split = split
        config.data.val_split, config.data.fold, config.data.mix = "", -1, ()
        if label_map is not None:
            config.data.label_map = tuple(label_map)
    return split


def data_identity(data: DataPlan) -> dict:
    """What eval.json says of the data it evaluated on: its directory, dataset, fingerprint
    (`shards.fingerprint`) and the digest of its split protocol (`fergate.data.protocol`:
    its splits' subjects and folds, a cross-validation fold's those of `data.folds`)."""
    from fergate.data import protocol
    from fergate.train.data import cv_folds

    folds = cv_folds(data.config, data.dir, data.manifest) if data.config.data.fold >= 0 else None
    return {"data": data.dir, "dataset": data.manifest.get("dataset"), "data_fingerprint": data.fingerprint,
            "protocol_digest": protocol.of_manifest(data.manifest, folds)["digest"]}


def absent_warning(m: dict) -> str | None:
    """The warning line for metrics `m` of a split without some classes, or None."""
    absent, k = m.get("absent_classes"), len(m["classes"])
    if not absent:
        return None
    return (f"[eval] warning: {m.get('split', 'the split')} has no example of {', '.join(absent)} ({len(absent)} of "
            f"{k} classes): its mean class accuracy {m['mean_class_accuracy']:.3f} is over the other {k - len(absent)} "
            "only and says nothing of those (eval.json: absent_classes)")


def write_reports(results: models.Results, outdir: str) -> dict:
    """eval.json (metrics + the family's entries), confusion_matrix.png, introspection.json
    (per-class means of each introspection tensor) and the family's figures; returns eval.json.
    A split without some classes is logged as such (`absent_warning`)."""
    os.makedirs(outdir, exist_ok=True)
    m = results.metrics
    where = ", ".join(x for x in (f"step {m['step']}" if "step" in m else "",
                                  f"{m['split']} split" if "split" in m else "") if x)
    plots.confusion_matrix(results.labels, results.logits.argmax(-1), results.classes,
                           f"{results.config.model}/{results.config.variant}{', ' + where if where else ''}\n"
                           f"accuracy {m['accuracy']:.3f}, mean class accuracy {m['mean_class_accuracy']:.3f} "
                           f"({m['examples']:,} examples)", os.path.join(outdir, "confusion_matrix.png"))
    if results.introspect:
        write_atomic(os.path.join(outdir, "introspection.json"),
                     json.dumps({n: {c: v.tolist() for c, v in results.class_means(n).items()}
                                 for n in results.introspect}, indent=1))
    report = {**m, **models.family(results.config.model).reports(results, outdir)}
    # last and whole: a workdir with eval.json has finished (an earlier stage is not trained again)
    write_atomic(os.path.join(outdir, "eval.json"), json.dumps(report, indent=1))
    if warning := absent_warning(report):
        log.warning(warning)
    return report


def read_eval(workdir: str) -> dict:
    """A workdir's `eval.json` with the variant it was trained as (`variant`)."""
    path = os.path.join(workdir, "eval.json")
    res = need_json(path, f"{path} missing: evaluate {workdir} first")
    res["variant"] = load_workdir(workdir).get("variant", "?")
    return res
