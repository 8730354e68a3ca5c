"""`fergate cv`: subject-independent k-fold cross-validation (the protocol of the MoDuL and
VSHNN papers: 10 folds, no subject in two folds, accuracy as the mean over folds).

Fold i trains the config with `data.fold = i` in `W/fold-NN` (the trainer holds that fold's
subjects out and evaluates on them, `data.cv_fold`), so a fold is an ordinary training
run: it resumes when killed, and folds can run as separate jobs on separate machines
(`--fold i`). The aggregation reads the fold workdirs' `eval.json`: mean and spread of the
accuracy and of the mean per-class accuracy, the confusion matrices summed; a fold that failed
or has not finished is listed, never averaged in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import traceback

import jax
import numpy as np

from fergate import config as config_lib
from fergate import lock, plots
from fergate.errors import DiskFull, Interrupted, UserError
from fergate.files import read_json, write_atomic
from fergate.lock import WorkdirBusy

log = logging.getLogger(__name__)


def fold_dir(workdir: str, fold: int) -> str:
    return os.path.join(workdir, f"fold-{fold:02d}")


def fold_config(spec: str, overrides: list[str], fold: int, folds: int):
    """The config of fold `fold` of `folds`: `spec` with `overrides`, `data.fold`, `data.folds`."""
    return config_lib.load(spec, [*overrides, f"--config.data.fold={fold}", f"--config.data.folds={folds}"])


def run_fold(spec: str, overrides: list[str], workdir: str, fold: int, folds: int) -> dict:
    """Trains and evaluates fold `fold` in `fold_dir(workdir, fold)`; its `fold.json` says
    whether it finished, was interrupted (it resumes), or the error that stopped it
    (re-raised). A finished fold that a re-run is refused for stays finished."""
    from fergate.train import program, trainer

    cfg = fold_config(spec, overrides, fold, folds)
    out = fold_dir(workdir, fold)
    program.validate(cfg, out)
    with lock.hold(out, f"fergate cv (fold {fold} of {folds})"):  # before fold.json: a refused run changes nothing
        was_done = _finished(out)
        _status(out, "running")
        try:
            report = trainer.train(cfg, out)
        except (Interrupted, DiskFull):  # resumed by the next run
            with contextlib.suppress(OSError):  # a disk too full for fold.json: the error says more
                _status(out, "interrupted")
            raise
        except BaseException as e:
            _status(out, "done" if was_done else "failed", "" if was_done else f"{type(e).__name__}: {e}")
            raise
        _status(out, "done")
    return report


def _status(out: str, status: str, error: str = "") -> None:
    if jax.process_index() != 0:  # one writer per fold
        return
    write_atomic(os.path.join(out, "fold.json"),
                 json.dumps({"status": status, "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}))


def check_folds(cfg, folds: int) -> None:
    """k folds need at least k subjects in the pooled splits: said before any fold trains."""
    from fergate.data import pipeline
    from fergate.train.data import source_dir

    manifest = pipeline.read_manifest(source_dir(cfg))
    pool = pipeline.training_split(manifest, cfg.data)
    n = len(pipeline.split_entry(manifest, pool)["subjects"])
    if folds > n:
        raise UserError(f"--folds {folds}: the data has {n} subjects in {pool}, so at most {n} subject-independent "
                        f"folds (--folds {n}: one subject held out at a time)")


def _same_config(out: str, cfg) -> list[str]:
    """The config keys a fold's workdir was trained with that differ from `cfg`'s (resolved
    against the data, as the trainer saves it)."""
    from fergate.train.data import DataPlan
    from fergate.train.trainer import changed_keys

    DataPlan.build(cfg)  # cfg resolved as the trainer resolves it
    with open(os.path.join(out, "config.json")) as f:
        return changed_keys(json.load(f), cfg)


def run(spec: str, overrides: list[str], workdir: str, folds: int, only: int | None = None) -> dict | None:
    """Fold `only`, or every fold not finished yet in turn (a failing fold is reported and the
    others go on), then the aggregate when every fold has a result; returns it (None while
    folds are missing)."""
    if folds < 2:
        raise UserError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if only is not None:
        if not 0 <= only < folds:
            raise UserError(f"--fold {only}: expected 0 <= fold < --folds {folds}")
        check_folds(fold_config(spec, overrides, only, folds), folds)
        run_fold(spec, overrides, workdir, only, folds)
        return aggregate(workdir, folds, partial=True)
    check_folds(fold_config(spec, overrides, 0, folds), folds)  # a mistake fails here, before any fold
    for i in range(folds):
        if _finished(fold_dir(workdir, i)):
            differ = _same_config(fold_dir(workdir, i), fold_config(spec, overrides, i, folds))
            if differ:
                raise UserError(f"{fold_dir(workdir, i)} was trained with another config (differs in "
                                f"{', '.join(differ[:6])}): use a new --workdir")
            log.info(f"[cv] fold {i} of {folds}: finished earlier ({fold_dir(workdir, i)})")
            continue
        log.info(f"[cv] fold {i} of {folds} -> {fold_dir(workdir, i)}")
        try:
            run_fold(spec, overrides, workdir, i, folds)
        except (Interrupted, WorkdirBusy, DiskFull):
            raise  # a signal, another run in the fold, a full disk: the whole run stops; re-running resumes
        except UserError as e:
            if i == 0 and not _finished(fold_dir(workdir, 0)):
                raise  # the config or the data is wrong: every fold would fail alike
            log.error(f"[cv] fold {i} failed: {e}")
        except Exception as e:  # a diverged or crashed fold: the others still run
            log.error(f"[cv] fold {i} failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
    return aggregate(workdir, folds)


def _finished(out: str) -> bool:
    if not os.path.exists(os.path.join(out, "eval.json")):
        return False
    return read_json(os.path.join(out, "fold.json"), {}).get("status") == "done"


def _common(values: list):
    """The one value all folds share, else all of them (folds trained on other data)."""
    return values[0] if len(set(values)) == 1 else values


def aggregate(workdir: str, folds: int, partial: bool = False) -> dict | None:
    """`W/cv.json` and `W/confusion_matrix.png` from the finished folds; with `partial`, only
    when every fold has finished (None otherwise, the missing ones logged)."""
    done, failed, missing = {}, {}, []
    for i in range(folds):
        out = fold_dir(workdir, i)
        status = read_json(os.path.join(out, "fold.json"), {})
        if _finished(out):
            with open(os.path.join(out, "eval.json")) as f:
                done[i] = json.load(f)
            if done[i].get("fold") != i or done[i].get("folds") != folds:
                raise UserError(f"{out}/eval.json is not fold {i} of {folds}'s held-out evaluation (fold "
                                f"{done[i].get('fold')} of {done[i].get('folds')}, split {done[i].get('split')}): "
                                f"re-run `fergate eval --workdir {out}` without --split, or use a new --workdir")
        elif status.get("status") == "failed":
            failed[i] = status.get("error", "")
        else:  # not run, running, or interrupted (a re-run resumes it)
            missing.append(i)
    if partial and (missing or failed):
        waiting = ", ".join(map(str, missing + list(failed)))
        log.info(f"[cv] {len(done)} of {folds} folds finished; waiting for {waiting} (run `fergate cv ... "
                 "--aggregate` when they are)")
        return None
    if not done:
        found = sorted(d for d in os.listdir(workdir) if d.startswith("fold-")) if os.path.isdir(workdir) else []
        raise UserError(f"no fold of {folds} in {workdir} has finished (fold-NN/eval.json)"
                        f"{': it has ' + ', '.join(found) + ' (another --folds?)' if found else ''}: run `fergate cv` "
                        "first")
    classes = next(iter(done.values()))["classes"]
    for i, r in done.items():
        if r["classes"] != classes:
            raise UserError(f"{fold_dir(workdir, i)} was trained with classes {', '.join(r['classes'])}, "
                            f"{fold_dir(workdir, min(done))} with {', '.join(classes)}: not folds of one run")
    acc = np.array([done[i]["accuracy"] for i in sorted(done)])
    mca = np.array([done[i]["mean_class_accuracy"] for i in sorted(done)])
    conf = np.sum([np.asarray(done[i]["confusion_matrix"], np.int64) for i in sorted(done)], 0)
    support = conf.sum(1)
    per_class = {c: (float(conf[k, k] / support[k]) if support[k] else None) for k, c in enumerate(classes)}

    def spread(x: np.ndarray) -> dict:
        return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else None,
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
        # the folds' data and protocol (`fergate protocol`): one value when every fold read the same
        **{k: _common([done[i].get(k) for i in sorted(done)]) for k in ("data_fingerprint", "protocol_digest")},
    }
    if jax.process_index() != 0:
        return report
    os.makedirs(workdir, exist_ok=True)
    write_atomic(os.path.join(workdir, "cv.json"), json.dumps(report, indent=1))  # folds may aggregate at once
    labels = np.repeat(np.repeat(np.arange(len(classes)), len(classes)), conf.ravel())
    preds = np.repeat(np.tile(np.arange(len(classes)), len(classes)), conf.ravel())

    def pm(key: str) -> str:
        std = report[key]["std"]
        return f"{report[key]['mean']:.3f}" + (f" +- {std:.3f}" if std is not None else "")

    title = (f"{len(done)} of {folds} subject-independent folds, summed ({int(conf.sum())} examples)\n"
             f"accuracy {pm('accuracy')}, mean class accuracy {pm('mean_class_accuracy')} (over folds)")
    plots.confusion_matrix(labels, preds, classes, title, os.path.join(workdir, "confusion_matrix.png"))
    left = [f"{len(failed)} failed ({', '.join(map(str, failed))})"] if failed else []
    left += [f"{len(missing)} not finished ({', '.join(map(str, missing))})"] if missing else []
    log.info(f"[cv] {len(done)} of {folds} folds: accuracy {pm('accuracy')}, mean class accuracy "
             f"{pm('mean_class_accuracy')}"
             f"{'; ' + ', '.join(left) + ' (not averaged in)' if left else ''} -> {os.path.join(workdir, 'cv.json')}")
    return report
