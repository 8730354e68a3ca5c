"""`fergate cv`: subject-independent k-fold cross-validation (the protocol of the MoDuL and
VSHNN papers: 10 folds, no subject in two folds, accuracy as the mean over folds).

Fold i trains the config with `data.fold = i` in `W/fold-i` (the trainer holds that fold's
subjects out and evaluates on them, `program.cv_fold`), so a fold is an ordinary training
run: it resumes when killed, and folds can run as separate jobs on separate machines
(`--fold i`). The aggregation reads the fold workdirs' `eval.json`: mean and spread of the
accuracy and of the mean per-class accuracy, the confusion matrices summed; a fold that failed
or has not finished is listed, never averaged in.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback

import numpy as np

from fergate import config as config_lib
from fergate import plots
from fergate.errors import UserError

log = logging.getLogger(__name__)


def fold_dir(workdir: str, fold: int) -> str:
    return os.path.join(workdir, f"fold-{fold:02d}")


def fold_config(spec: str, overrides: list[str], fold: int, folds: int):
    """The config of fold `fold` of `folds`: `spec` with `overrides`, `data.fold`, `data.folds`."""
    return config_lib.load(spec, [*overrides, f"--config.data.fold={fold}", f"--config.data.folds={folds}"])


def run_fold(spec: str, overrides: list[str], workdir: str, fold: int, folds: int) -> dict:
    """Trains and evaluates fold `fold` in `fold_dir(workdir, fold)`; its `fold.json` says
    whether it finished, or the error that stopped it (re-raised)."""
    from fergate.train import program, trainer

    cfg = fold_config(spec, overrides, fold, folds)
    out = fold_dir(workdir, fold)
    program.validate(cfg, out)
    os.makedirs(out, exist_ok=True)
    _status(out, "running")
    try:
        report = trainer.train(cfg, out)
    except BaseException as e:
        _status(out, "failed", f"{type(e).__name__}: {e}")
        raise
    _status(out, "done")
    return report


def _status(out: str, status: str, error: str = "") -> None:
    with open(os.path.join(out, "fold.json.tmp"), "w") as f:
        json.dump({"status": status, "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
    os.replace(os.path.join(out, "fold.json.tmp"), os.path.join(out, "fold.json"))


def run(spec: str, overrides: list[str], workdir: str, folds: int, only: int | None = None) -> dict | None:
    """Fold `only`, or every fold not finished yet in turn (a failing fold is reported and the
    others go on), then the aggregate when every fold has a result; returns it (None while
    folds are missing)."""
    if folds < 2:
        raise UserError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if only is not None:
        if not 0 <= only < folds:
            raise UserError(f"--fold {only}: expected 0 <= fold < --folds {folds}")
        run_fold(spec, overrides, workdir, only, folds)
        return aggregate(workdir, folds, partial=True)
    fold_config(spec, overrides, 0, folds)  # a config mistake fails here, before any fold
    for i in range(folds):
        if _finished(fold_dir(workdir, i)):
            log.info(f"[cv] fold {i} of {folds}: finished earlier ({fold_dir(workdir, i)})")
            continue
        log.info(f"[cv] fold {i} of {folds} -> {fold_dir(workdir, i)}")
        try:
            run_fold(spec, overrides, workdir, i, folds)
        except UserError as e:
            if i == 0 and not _finished(fold_dir(workdir, 0)):
                raise  # the config or the data is wrong: every fold would fail alike
            log.error(f"[cv] fold {i} failed: {e}")
        except Exception as e:  # a diverged or crashed fold: the others still run
            log.error(f"[cv] fold {i} failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
    return aggregate(workdir, folds)


def _finished(out: str) -> bool:
    path = os.path.join(out, "fold.json")
    if not (os.path.exists(path) and os.path.exists(os.path.join(out, "eval.json"))):
        return False
    with open(path) as f:
        return json.load(f).get("status") == "done"


def aggregate(workdir: str, folds: int, partial: bool = False) -> dict | None:
    """`W/cv.json` and `W/confusion_matrix.png` from the finished folds; with `partial`, only
    when every fold has finished (None otherwise, the missing ones logged)."""
    done, failed, missing = {}, {}, []
    for i in range(folds):
        out = fold_dir(workdir, i)
        status = {}
        if os.path.exists(os.path.join(out, "fold.json")):
            with open(os.path.join(out, "fold.json")) as f:
                status = json.load(f)
        if _finished(out):
            with open(os.path.join(out, "eval.json")) as f:
                done[i] = json.load(f)
        elif status.get("status") == "failed":
            failed[i] = status.get("error", "")
        else:
            missing.append(i)
    if partial and (missing or failed):
        waiting = ", ".join(map(str, missing + list(failed)))
        log.info(f"[cv] {len(done)} of {folds} folds finished; waiting for {waiting} (run `fergate cv ... "
                 "--aggregate` when they are)")
        return None
    if not done:
        raise UserError(f"no fold of {workdir} has finished (fold-NN/eval.json): run `fergate cv` first")
    classes = next(iter(done.values()))["classes"]
    for i, r in done.items():
        if r.get("folds", folds) != folds or r["classes"] != classes:
            raise UserError(f"{fold_dir(workdir, i)} was trained as fold {r.get('fold')} of {r.get('folds')} "
                            f"with classes {', '.join(r['classes'])}: not a fold of this {folds}-fold run")
    acc = np.array([done[i]["accuracy"] for i in sorted(done)])
    mca = np.array([done[i]["mean_class_accuracy"] for i in sorted(done)])
    conf = np.sum([np.asarray(done[i]["confusion_matrix"], np.int64) for i in sorted(done)], 0)
    support = conf.sum(1)
    per_class = {c: (float(conf[k, k] / support[k]) if support[k] else None) for k, c in enumerate(classes)}

    def spread(x: np.ndarray) -> dict:
        return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
                "min": float(x.min()), "max": float(x.max())}

    report = {
        "folds": folds, "finished": sorted(done), "failed": {str(i): e for i, e in sorted(failed.items())},
        "not_run": missing, "accuracy": spread(acc), "mean_class_accuracy": spread(mca),
        "per_fold": {str(i): {"accuracy": done[i]["accuracy"], "mean_class_accuracy": done[i]["mean_class_accuracy"],
                              "examples": done[i]["examples"]} for i in sorted(done)},
        "pooled": {"examples": int(conf.sum()), "accuracy": float(np.trace(conf) / max(conf.sum(), 1)),
                   "mean_class_accuracy": float(np.nanmean([v for v in per_class.values() if v is not None])),
                   "per_class_accuracy": per_class},
        "confusion_matrix": conf.tolist(), "classes": classes,
    }
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "cv.json"), "w") as f:
        json.dump(report, f, indent=1)
    labels = np.repeat(np.repeat(np.arange(len(classes)), len(classes)), conf.ravel())
    preds = np.repeat(np.tile(np.arange(len(classes)), len(classes)), conf.ravel())
    title = (f"{len(done)} of {folds} subject-independent folds, summed ({int(conf.sum())} examples)\n"
             f"accuracy {acc.mean():.3f} +- {report['accuracy']['std']:.3f}, mean class accuracy {mca.mean():.3f} +- "
             f"{report['mean_class_accuracy']['std']:.3f} (mean +- std over folds)")
    plots.confusion_matrix(labels, preds, classes, title, os.path.join(workdir, "confusion_matrix.png"))
    left = [f"{len(failed)} failed ({', '.join(map(str, failed))})"] if failed else []
    left += [f"{len(missing)} not run ({', '.join(map(str, missing))})"] if missing else []
    log.info(f"[cv] {len(done)} of {folds} folds: accuracy {acc.mean():.4f} +- {report['accuracy']['std']:.4f}, "
             f"mean class accuracy {mca.mean():.4f} +- {report['mean_class_accuracy']['std']:.4f}"
             f"{'; ' + ', '.join(left) + ' (not averaged in)' if left else ''} -> {os.path.join(workdir, 'cv.json')}")
    return report
