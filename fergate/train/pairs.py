"""`fergate eval --pairs DATA`: how well a representation tells people apart, on the same /
different-person pairs of a face-verification set (LFW's pairs.txt, `fergate prep --dataset
lfw`): THIN's check that identity is a suitable exogenous variable (Table 1: pair accuracy
on LFW) and that the expression representation forgets identity (Fig. 9 / 11: distance
distributions of positive and negative pairs, and their overlap).

Every representation the model exposes (THIN: `expression`, the endogenous one, and the
exogenous `identity` network's) and the records' dlib embedding (`identity` field, a
reference face-recognition network) is L2-normalised; a pair's distance is the Euclidean
distance of its two vectors (in [0, 2]). Reported per representation: the two distance
histograms and their intersection over union (the overlap Fig. 9 prints: low = identities
separable), and the pair accuracy of a distance threshold under LFW's protocol (the
threshold chosen on 9 folds, tested on the 10th).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from fergate import plots
from fergate.data import pipeline, schema
from fergate.data.records import Records
from fergate.errors import UserError
from fergate.train.data import DataPlan
from fergate.train.mesh import global_batch
from fergate.train.program import from_workdir

BINS = 40


def evaluate_pairs(workdir: str, data: str, out: str) -> dict:
    """pairs.json and pairs.png in `out` for the model of `workdir` on the pairs of `data`."""
    manifest = pipeline.read_manifest(data)
    pairs = manifest.get("pairs")
    if not pairs:
        raise UserError(f"{data} has no same / different pairs in its manifest: prepare a verification set with "
                        "`fergate prep ROOT --dataset lfw --out DIR` (ROOT holding lfw/ and pairs.txt)")
    splits = [s for s, v in manifest["splits"].items() if v["records"]]
    model = trained_model(workdir, manifest)
    reps, sources = {}, []
    for split in splits:
        source, got = representations(model, data, split, manifest)
        for k, v in got.items():
            reps.setdefault(k, []).append(v)
        sources += source
    reps = {k: np.concatenate(v) for k, v in reps.items()}
    if not reps:
        raise UserError(f"neither the model of {workdir} nor the records of {data} give a representation to compare")
    row = {s: i for i, s in enumerate(sources)}
    kept = [(row[a], row[b], bool(same), int(fold)) for a, b, same, fold in pairs if a in row and b in row]
    if not kept or all(s for _, _, s, _ in kept) or not any(s for _, _, s, _ in kept):
        raise UserError(f"{data}: {len(kept)} of {len(pairs)} pairs have both photos prepared: need same and "
                        "different pairs")
    a, b, same, fold = (np.array(x) for x in zip(*kept))
    report = {"pairs": len(kept), "pairs_dropped": len(pairs) - len(kept), "same": int(same.sum()),
              "different": int((~same).sum()), "folds": int(len(np.unique(fold))), "representations": {}}
    for name, x in reps.items():
        x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        d = np.linalg.norm(x[a] - x[b], axis=-1)
        report["representations"][name] = verification(d, same, fold)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "pairs.json"), "w") as f:
        json.dump(report, f, indent=1)
    plots.pair_distances(report["representations"], f"{manifest.get('dataset', 'pairs')}: {report['same']} same, "
                         f"{report['different']} different-person pairs", os.path.join(out, "pairs.png"))
    return report


def verification(d: np.ndarray, same: np.ndarray, fold: np.ndarray) -> dict:
    """Histograms of the distances `d` of same / different pairs, their IoU, and the pair
    accuracy of a threshold chosen on the other folds (all pairs when there is one fold)."""
    edges = np.linspace(0.0, 2.0, BINS + 1)
    hs, hd = (np.histogram(d[m], edges)[0].astype(np.float64) for m in (same, ~same))
    ps, pd = hs / max(hs.sum(), 1), hd / max(hd.sum(), 1)
    accs, thresholds = [], []
    for f in np.unique(fold):
        fit = fold != f if len(np.unique(fold)) > 1 else np.ones_like(same)
        t = best_threshold(d[fit], same[fit])
        accs.append(float(np.mean((d[fold == f] < t) == same[fold == f])))
        thresholds.append(t)
    return {"pair_accuracy": float(np.mean(accs)),
            "pair_accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
            # one fold: the threshold was chosen on the pairs it is scored on (an optimistic figure)
            "threshold_chosen_on_scored_pairs": len(accs) == 1,
            "threshold": float(np.mean(thresholds)), "iou": float(np.minimum(ps, pd).sum() / np.maximum(ps, pd).sum()),
            "same": {"counts": hs.astype(int).tolist(), "edges": edges.tolist(), "mean": float(d[same].mean())},
            "different": {"counts": hd.astype(int).tolist(), "edges": edges.tolist(), "mean": float(d[~same].mean())}}


def best_threshold(d: np.ndarray, same: np.ndarray) -> float:
    """The distance below which a pair is called the same person that is most often right."""
    order = np.sort(d)
    cands = np.concatenate([[order[0] - 1e-6], (order[:-1] + order[1:]) / 2, [order[-1] + 1e-6]])
    acc = [np.mean((d < t) == same) for t in cands]
    return float(cands[int(np.argmax(acc))])


def trained_model(workdir: str, manifest: dict):
    """(config, program, state) of the model in `workdir` when it exposes representations,
    its config set to read the records of the pairs' data (`manifest`) as they are; else None."""
    trained = from_workdir(workdir)
    cfg, prog, state = trained.config, trained.program, trained.state
    if not jax.eval_shape(prog.predict, prog.abstract_state, prog.example).get("representations"):
        return None
    with cfg.unlocked():  # the pairs' people are no classes of the model: read the records as they are
        cfg.data.classes, cfg.data.label_map, cfg.data.fold = tuple(manifest["classes"]), (), -1
        cfg.data.label_field = "label"
    return cfg, prog, state


def representations(model, data: str, split: str, manifest: dict) -> tuple[list[str], dict[str, np.ndarray]]:
    """The `source` of every record of a split, and {name: (records, D)}: the `model`'s
    (`trained_model`) `representations` and the records' dlib `identity` embedding when they
    carry one."""
    src = Records(pipeline.split_files(data, split))
    fields = ("source", "identity") if "identity" in schema.read_header(src[0])[1]["fields"] else ("source",)
    recs = [schema.decode(src[i], fields) for i in range(len(src))]
    out: dict[str, np.ndarray] = {}
    if model is not None:
        cfg, prog, state = model
        got = {}
        for local in DataPlan.of(cfg, data, manifest).input_pipeline(split, train=False, all_processes=True):
            res = jax.device_get(prog.predict(state, global_batch(local, prog.batch_sharding)))
            valid = res["mask"] > 0
            for k, v in res["representations"].items():
                got.setdefault(k, np.zeros((len(recs), v.shape[-1]), np.float32))[res["index"][valid]] = v[valid]
        out = {f"{cfg.model}/{cfg.variant}: {k}": v for k, v in got.items()}
    if "identity" in fields:
        out["dlib face recognition (records)"] = np.stack([r["identity"] for r in recs])
    return [r["source"] for r in recs], out
