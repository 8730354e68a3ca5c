"""The `fergate` command line. User mistakes print one line and exit 2, never a traceback.

This is the application layer: it configures logging (one handler, on process 0), sets up
JAX's devices and peers, and prepares the built-in datasets with `data_prep`, which the
training library itself never imports.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fergate.errors import Interrupted, UserError

LOGGERS = ("fergate", "data_prep")


def setup_logging(lead: bool = True) -> None:
    """fergate's progress lines on stdout, from the lead process only (others: warnings)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO if lead else logging.WARNING)
        logger.propagate = False


#: the `prep` flags each dataset's reader takes (`data_prep.datasets`); another dataset's is refused
READER_FLAGS = {"sample": ("size", "clips", "seed", "test_subjects", "compound"),
                "ckplus": ("apex_frames", "neutral_frames", "contempt", "sequences"), "affectnet": ("contempt",),
                "rafdb": ("original",), "expw": ("min_confidence",), "bu4dfe": ("apex_frames",), "lfw": ("pairs",)}


def _prep(a: argparse.Namespace) -> None:
    from data_prep import face, prep

    opts = prep.PrepOptions(
        face=face.FaceOptions(face_size=_face_size(a.face_size), color=not a.grey, patch_size=a.patch_size,
                              patches=not a.no_patches, identity=not a.no_identity, upsample=a.upsample,
                              illumination=a.illumination, align=a.align, face_scale=a.face_scale),
        clip_size=a.clip_size, compress=a.compress, records_per_file=a.records_per_file, test_fraction=a.test_fraction,
        frames=a.frames, max_gap=a.max_gap, min_faces=a.min_faces, max_frames=a.max_frames)
    mine = READER_FLAGS.get(a.dataset, ())
    for flag in sorted({f for fl in READER_FLAGS.values() for f in fl} - set(mine) - set(READER_FLAGS["sample"])):
        if getattr(a, flag) is not None:
            owners = " or ".join(d for d, fl in READER_FLAGS.items() if flag in fl)
            raise UserError(f"--{flag} is an option of --dataset {owners}, not {a.dataset}")
    reader_options = {k: getattr(a, k) for k in mine if getattr(a, k) is not None}
    prep.run(a.dataset, a.source, a.out, opts, reader_options, a.workers, a.shard_index, a.num_shards)


def _face_size(text: str):
    from data_prep.face import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise UserError(f"--face_size: {e}") from None


def _jax_setup(a: argparse.Namespace) -> None:
    import jax

    if getattr(a, "cpu_devices", None):
        jax.config.update("jax_num_cpu_devices", a.cpu_devices)
    from fergate.train.program import setup_distributed

    setup_distributed(a.coordinator, a.num_processes, a.process_id, a.distributed)
    setup_logging(jax.process_index() == 0)


def _builtin_data(cfg) -> None:
    """With no `data.dir`, the built-in dataset the config (and each earlier stage) names,
    prepared once in the cache."""
    from fergate import models

    for c in (cfg, *models.family(cfg.model).stages(cfg).values()):
        if not c.data.dir:
            from data_prep.prep import builtin

            builtin(c.data.dataset, dict(c.data.prep_options))


def _train(a: argparse.Namespace, overrides: list[str]) -> None:
    from fergate import config as config_lib

    cfg = config_lib.load(a.config, overrides)
    from fergate.train import program

    program.validate(cfg, a.workdir)  # before data preparation and compilation
    _jax_setup(a)
    _builtin_data(cfg)
    from fergate.train import trainer

    trainer.train(cfg, a.workdir)


def _cv(a: argparse.Namespace, overrides: list[str]) -> None:
    from fergate.train import cv

    if a.aggregate:
        if a.fold is not None:
            raise UserError("--aggregate reads every fold's workdir: drop --fold")
        setup_logging()
        cv.aggregate(a.workdir, a.folds)
        return
    if not a.config:
        raise UserError("--config is needed to train folds (only --aggregate reads the finished folds without it)")
    cfg = cv.fold_config(a.config, overrides, a.fold or 0, a.folds)
    _jax_setup(a)
    _builtin_data(cfg)
    cv.run(a.config, overrides, a.workdir, a.folds, a.fold)


def _sweep(a: argparse.Namespace, overrides: list[str]) -> None:
    from fergate import sweep

    setup_logging()
    rows = [r.strip() for r in a.rows.split(",") if r.strip()] if a.rows else None
    sweep.run(a.table, a.workdir, a.budget, a.seeds, rows, a.task, a.tasks, overrides, a.aggregate)


def _export(a: argparse.Namespace) -> None:
    import os

    _jax_setup(a)
    from fergate import export

    m = export.export(a.workdir, a.out, a.step)
    print(f"[export] {m['model']} step {m['step']} -> {os.path.abspath(a.out)} ({len(m['classes'])} classes, inputs "
          f"{', '.join(m['inputs'])}; {m['kind']} model; runs on {', '.join(m['platforms'])})")


def _predict(a: argparse.Namespace) -> None:
    _jax_setup(a)
    from fergate import export, predict

    if a.batch < 1:
        raise UserError(f"--batch {a.batch}: at least 1")
    model = export.load(a.model, a.batch)
    out = open(a.out, "w") if a.out else sys.stdout
    try:
        c = predict.run(model, a.inputs, out, a.workers, a.every, a.window, a.stride, a.annotate, a.heatmaps,
                        a.pipeline_only)
    finally:
        if a.out:
            out.close()
    what = "clip windows" if c["kind"] == "clip" else f"faces ({c.get('frames', 0)} from video frames)"
    print(f"[predict] {c['faces']} {what}, {c['errors']} inputs without a "
          f"prediction, in {c['seconds']:.1f}s: {c.get('faces_per_sec', 0):.1f}/s"
          f"{', ' + str(c['steady_faces_per_sec']) + '/s after start-up' if 'steady_faces_per_sec' in c else ''}"
          f"{' -> ' + a.out if a.out else ''}", file=sys.stderr)


def _curves(a: argparse.Namespace) -> None:
    import os

    from fergate import plots
    from fergate.train.trainer import read_metrics

    labels = a.labels or [os.path.basename(os.path.normpath(w)) for w in a.workdirs]
    if len(set(labels)) < len(labels):  # e.g. a/fold-01 and b/fold-01
        labels = a.labels or [os.path.normpath(w) for w in a.workdirs]
    if len(labels) != len(a.workdirs) or len(set(labels)) < len(labels):
        raise UserError(f"--labels: {len(labels)} labels for {len(a.workdirs)} workdirs, each its own")
    runs = {}
    for label, w in zip(labels, a.workdirs):
        try:
            runs[label] = read_metrics(w)
        except OSError:
            raise UserError(f"{w}: no metrics.jsonl (not a training workdir, or it has not logged yet)") from None
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    print(f"[curves] {len(runs)} runs -> {plots.training_curves(runs, a.out, a.title)}")


def _eval(a: argparse.Namespace) -> None:
    import os

    from fergate import config as config_lib

    cfg = config_lib.load_workdir(a.workdir)
    _jax_setup(a)
    from fergate.train import program

    if a.pairs:
        from fergate.train import pairs

        _builtin_data(cfg)
        rep = pairs.evaluate_pairs(a.workdir, a.pairs, a.out or a.workdir)
        for name, r in rep["representations"].items():
            std = f" +- {r['pair_accuracy_std']:.4f}" if r["pair_accuracy_std"] is not None else \
                " (one fold: threshold chosen on these pairs)"
            print(f"[eval] {name}: pair accuracy {r['pair_accuracy']:.4f}{std}, "
                  f"IoU of the same / different distance distributions {r['iou']:.3f}")
        print(f"[eval] {rep['pairs']} pairs ({rep['pairs_dropped']} dropped: a photo without a record) -> "
              f"{os.path.join(a.out or a.workdir, 'pairs.json')}, pairs.png")
        return

    stage = cfg.data.get("features_from", "")
    if not (stage and program.features_ready(program.features_dir(a.workdir, stage))):  # else the copy suffices
        _builtin_data(cfg)
    import jax

    from fergate.data import pipeline
    from fergate.train import evaluate
    from fergate.train.checkpoint import restore_selected

    ddir = program.data_dir(cfg, a.workdir)
    manifest = pipeline.read_manifest(ddir)
    try:
        program.resolve(cfg, manifest)
        prog = program.Program(cfg)
    except (AttributeError, KeyError) as e:  # a key this fergate reads is not in the saved config
        key = str(e.args[0] if e.args else e).strip("'\"")
        raise UserError(f"{a.workdir}/config.json has no {key}: the workdir was written by an older fergate "
                        "(train it again with this one)") from None
    state, step, selected = restore_selected(a.workdir, prog.abstract_sharded_state())
    if selected:
        print(f"[eval] the selected checkpoint: step {step} ({selected['split']} {selected['metric']} "
              f"{selected['value']:.3f}; train.select)")
    held = program.plan(cfg, ddir, manifest).eval if not a.split else program.Portion(a.split)
    results = evaluate.evaluate(prog, state, ddir, held.split, list(cfg.data.classes), records=held.records)
    split = held.name
    results.metrics.update(step=step, split=split, **({"selected": selected} if selected else {}))
    out = a.out or a.workdir
    if jax.process_index() != 0:
        return
    report = evaluate.write_reports(results, out)
    print(f"[eval] step {step}, {split}: accuracy {report['accuracy']:.4f}, mean class accuracy "
          f"{report['mean_class_accuracy']:.4f} -> {os.path.join(out, 'eval.json')}")
    if a.compare:
        runs = {a.workdir: {**report, "variant": cfg.variant}, **{w: evaluate.read_eval(w) for w in a.compare}}
        for path in prog.family.compare(runs, out):
            print(f"[eval] {len(runs)} runs compared -> {path}")


def _features(a: argparse.Namespace) -> None:
    """A trained model's `features` output of every record, written into a copy of the data."""
    from fergate import config as config_lib

    cfg = config_lib.load_workdir(a.workdir)
    _jax_setup(a)
    if not a.data:
        _builtin_data(cfg)
    from fergate.train import features, program

    features.extract(a.workdir, a.data or program.source_dir(cfg), a.out, a.field)


def _attend(a: argparse.Namespace) -> int:
    """The fully-convolutional mode: a trained model's attention over whole images."""
    import json
    import os

    import cv2
    import numpy as np

    from data_prep import face as F
    from fergate import config as config_lib
    from fergate import plots

    cfg = config_lib.load_workdir(a.workdir)
    _jax_setup(a)
    from fergate.train import program
    from fergate.train.checkpoint import restore_selected

    prog = program.Program(cfg)
    state, step, _ = restore_selected(a.workdir, prog.abstract_sharded_state())
    variables = {"params": state.params, **state.model_state}
    prep = dict(cfg.data.prep_options)
    if cfg.data.dir:  # the options the training data was prepared with
        with open(os.path.join(cfg.data.dir, "manifest.json")) as f:
            prep = json.load(f).get("options", {}).get("face", prep)
    size = F.parse_size(prep.get("face_size", 96))
    width = size if isinstance(size, int) else size[0]
    # faces' iod in the training crops
    train_iod = float(np.linalg.norm(F.TEMPLATE[1] - F.TEMPLATE[0])) * width * float(prep.get("face_scale", 1.0))
    out = a.out or os.path.join(a.workdir, "attend")
    os.makedirs(out, exist_ok=True)
    failed = 0
    with open(os.path.join(out, "attend.jsonl"), "a") as log:
        for path in a.images:
            try:
                img = F.load_image(path)
            except F.SkipItem as e:
                print(f"fergate attend: error: {path}: cannot read it ({e.reason})", file=sys.stderr)
                failed += 1
                continue
            boxes, scale = [], a.scale
            if a.faces:
                rects = F.models().detector(img, 1)
                boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
                if rects and scale is None:  # faces at the size the model was trained on
                    scale = train_iod / float(np.median([F.iod(F.landmarks(img, r)) for r in rects]))
            scale = scale or 1.0
            grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            small = cv2.resize(grey, (max(16, round(grey.shape[1] * scale)), max(16, round(grey.shape[0] * scale))),
                               interpolation=cv2.INTER_AREA)
            if prep.get("illumination") == "diffusion":
                small = F.isotropic_diffusion(small, F.DIFFUSION_SIGMA * width)
            b = prog.family.attend(cfg, prog.module, variables, small)
            heat = cv2.resize(b.astype(np.float32), (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_LINEAR)
            heat /= heat.sum()
            y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
            faces = [{"box": list(map(int, bx)), "mass": float(heat[bx[1]:bx[3], bx[0]:bx[2]].sum())} for bx in boxes]

            def in_face(px, py, boxes=boxes):
                return any(left <= px < right and top <= py < bottom for left, top, right, bottom in boxes)

            row = {"image": path, "scale": scale, "peak": [int(x), int(y)], "peak_in_face": in_face(x, y),
                   "faces": faces}
            if a.faces and boxes:  # 4.4: soft face boxes suppress the background's false positives
                heat = F.soft_box_weighted(heat, boxes)
                my, mx = np.unravel_index(int(np.argmax(heat)), heat.shape)
                row.update(masked_peak=[int(mx), int(my)], masked_peak_in_face=in_face(mx, my))
            stem = os.path.splitext(os.path.basename(path))[0]
            shown = " x soft face boxes" if a.faces and boxes else ""
            row["png"] = plots.overlay(img, heat, boxes, f"{cfg.model}/{cfg.variant}: attention{shown}, step {step}, "
                                       f"{stem}", os.path.join(out, f"{stem}_attention.png"),
                                       "attention weight per pixel")
            log.write(json.dumps(row) + "\n")
            print(f"[attend] {path}: peak at ({x}, {y}){', in a face box' if row['peak_in_face'] else ''}"
                  + (f"; with the soft face boxes at {tuple(row['masked_peak'])}"
                     f"{', in a face box' if row['masked_peak_in_face'] else ''}" if "masked_peak" in row else "")
                  + f"; {len(faces)} faces -> {row['png']}")
    return 2 if failed else 0


def _bench(a: argparse.Namespace, overrides: list[str]) -> None:
    from fergate import config as config_lib

    if a.prep:
        from fergate.train import bench

        try:
            workers = [int(n) for n in a.prep_workers.split(",")]
        except ValueError:
            raise UserError(f"--prep_workers {a.prep_workers!r}: comma-separated numbers, e.g. 1,2") from None
        print(bench.to_json(bench.prep_bench(workers, a.prep_size)))
        return
    if not a.config:
        raise UserError("--config is needed (only --prep times without a model)")
    cfg = config_lib.load(a.config, overrides)
    vs = config_lib.load(a.vs, overrides) if a.vs else None
    _jax_setup(a)
    from fergate.train import bench

    if a.pipeline:
        data = a.data
        if not data:  # the config's own data: the built-in set, prepared on first use
            if cfg.data.get("features_from"):
                raise UserError(f"{cfg.model}/{cfg.variant} reads an earlier stage's features: add --data "
                                f"W/pretrain/{cfg.data.features_from}/features of a trained workdir W")
            _builtin_data(cfg)
            from fergate.train import program

            data = program.data_dir(cfg)
        print(bench.to_json(bench.pipeline_bench(cfg, data, a.batch)))
        return
    print(bench.to_json(bench.bench(cfg, a.batch, a.steps, a.warmup, a.infer, a.data, vs)))


def _add_jax_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--cpu_devices", type=int, default=None, help="emulate N devices on CPU")
    q.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-host)")
    q.add_argument("--num_processes", type=int, default=None)
    q.add_argument("--process_id", type=int, default=None)
    q.add_argument("--distributed", action="store_true", help="jax.distributed with auto-detected peers (TPU, SLURM)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fergate")
    except PackageNotFoundError:
        return "(not installed)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fergate", description="Gated multi-modal FER models in JAX.")
    p.add_argument("--version", action="version", version=f"fergate {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("prep", help="face pipeline -> ArrayRecord shards + manifest.json")
    q.add_argument("source", nargs="?", help="dataset root (folder of photos for --dataset sample, the .csv file "
                   "for csv)")
    q.add_argument("--dataset", required=True,
                   help="sample | folder | csv | ckplus | rafdb | affectnet | fer2013 | sfew | expw | afew | bu4dfe | "
                        "mmi | lfw | icv_mefed | video_folder | digits_rotated | digits_rotated_scaled | "
                        "fashion_rotated | dsprites (the layouts: README, Datasets)")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    q.add_argument("--shard_index", type=int, default=0, help="this machine's index")
    q.add_argument("--num_shards", type=int, default=1, help="machines sharing the work")
    q.add_argument("--records_per_file", type=int, default=1024)
    q.add_argument("--test_fraction", type=float, default=0.2,
                   help="a source without a test split: hold out this share of its subjects as `test` (0: none)")
    q.add_argument("--face_size", default="96", help="aligned crop: a side (96) or width x height (125x160)")
    q.add_argument("--illumination", default="none", choices=("none", "diffusion"),
                   help="isotropic-diffusion illumination normalisation of grey faces")
    q.add_argument("--align", default="eyes_mouth", choices=("eyes_mouth", "eyes_lip"),
                   help="alignment template: eye centres + mouth centre, or the eyes' midpoint + the upper lip "
                        "(the micro-emotion network's)")
    q.add_argument("--face_scale", type=float, default=1.0,
                   help="the face's size in the crop against the template's: 0.6 keeps background around it")
    q.add_argument("--grey", action="store_true", help="store grey faces (default RGB)")
    q.add_argument("--patch_size", type=int, default=30)
    q.add_argument("--no_patches", action="store_true")
    q.add_argument("--no_identity", action="store_true", help="skip the 128-d dlib embedding")
    q.add_argument("--upsample", type=int, default=0, help="HOG detector upsampling")
    q.add_argument("--compress", action="store_true", help="store images as PNG (smaller, slower to read)")
    g = q.add_argument_group("clips (afew, video_folder, ckplus, bu4dfe, mmi, the sample set's clips)")
    g.add_argument("--clip_size", type=int, default=64, help="side of the aligned clip frames")
    g.add_argument("--frames", type=int, default=16, help="T: every clip is resampled to T frames")
    g.add_argument("--max_frames", type=int, default=64,
                   help="frames decoded from one video at most, evenly spaced over it (bounds memory)")
    g.add_argument("--max_gap", type=int, default=8,
                   help="a frame without a face takes the last face box for at most this many frames, else is dropped")
    g.add_argument("--min_faces", type=int, default=4,
                   help="skip a clip with fewer frames with a (found or carried) face: too_few_faces")
    g = q.add_argument_group("sample dataset")
    g.add_argument("--size", type=int, default=2800, help="images")
    g.add_argument("--clips", type=int, default=140)
    g.add_argument("--test_subjects", type=int, default=3, help="held-out subjects")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--compound", action="store_true",
                   help="the 50 compound classes of iCV-MEFED (two expressions blended) instead of the 7 basic ones")
    g = q.add_argument_group("CK+ (ckplus)", "--apex_frames is bu4dfe's too, --contempt affectnet's")
    g.add_argument("--apex_frames", type=int, default=None, metavar="K",
                   help="ckplus: the last K frames of a sequence, labelled with its emotion (default 3); bu4dfe: the "
                        "middle K frames of each sequence also as images (default 0: clips only)")
    g.add_argument("--neutral_frames", type=int, default=None, metavar="N",
                   help="ckplus: the first N frames of a sequence as neutral (default 3; 0: none)")
    g.add_argument("--no_sequences", dest="sequences", action="store_const", const=False, default=None,
                   help="ckplus: images only (by default every labelled sequence is also a clip, in train_clips)")
    g.add_argument("--contempt", dest="contempt", action="store_const", const=True, default=None,
                   help="keep contempt: ckplus keeps it by default (8 classes), affectnet drops it (7)")
    g.add_argument("--no_contempt", dest="contempt", action="store_const", const=False, help="drop contempt")
    g = q.add_argument_group("RAF-DB (rafdb)")
    g.add_argument("--original", action="store_const", const=True, default=None,
                   help="the original photos (basic/Image/original, in basic/Annotation/boundingbox's boxes) instead "
                        "of the aligned 100 x 100 faces")
    g = q.add_argument_group("ExpW (expw)")
    g.add_argument("--min_confidence", type=float, default=None,
                   help="skip faces whose box confidence is under this, counted as low_confidence (the papers: 60; "
                        "default 0: keep all)")
    g = q.add_argument_group("LFW (lfw)")
    g.add_argument("--pairs", default=None, metavar="FILE",
                   help="the pairs file in ROOT (default pairs.txt, else pairsDevTest.txt)")
    q.set_defaults(func=_prep)

    q = sub.add_parser("train", help="train a config; resumes from the newest checkpoint in --workdir",
                       epilog="Overrides: --config.key=value (e.g. --config.train.steps=200).")
    q.add_argument("--config", required=True, help="configs/X.py[:arg=value,...]")
    q.add_argument("--workdir", required=True)
    _add_jax_args(q)
    q.set_defaults(func=_train, overrides=True)

    q = sub.add_parser("cv", help="subject-independent k-fold cross-validation: train every fold (or --fold i), "
                       "then mean and spread of the accuracy and the summed confusion matrix",
                       epilog="Overrides: --config.key=value, applied to every fold. Folds as separate jobs: "
                       "`fergate cv ... --fold i` on each machine, then `fergate cv ... --aggregate`.")
    q.add_argument("--config", default=None, help="configs/X.py[:arg=value,...] (not needed with --aggregate)")
    q.add_argument("--workdir", required=True, help="fold i trains in WORKDIR/fold-NN (fold-03: fold 3); cv.json "
                   "goes here")
    q.add_argument("--folds", type=int, default=10, help="k (the manifest's class-balanced folds for 10)")
    q.add_argument("--fold", type=int, default=None, help="train this fold only (a separate job)")
    q.add_argument("--aggregate", action="store_true", help="only aggregate the finished folds")
    _add_jax_args(q)
    q.set_defaults(func=_cv, overrides=True)

    q = sub.add_parser("sweep", help="a paper's table: every (row, seed) of a table file trained as a resumable run, "
                       "then W/table.json, table.md, table.png beside the paper's numbers",
                       epilog="Overrides: --config.key=value, applied to every run (e.g. --config.data.dir=DIR). "
                       "As a SLURM array: launch/slurm_sweep.sbatch.")
    q.add_argument("table", help="configs/tables/X.py[:arg=value,...]")
    q.add_argument("--workdir", required=True, help="run r, seed s trains in WORKDIR/r/seed-s; the table goes here")
    q.add_argument("--budget", default=None, help="one of the table's budgets (default: its first)")
    q.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the table's)")
    q.add_argument("--rows", default=None, help="only these rows, comma-separated")
    q.add_argument("--task", type=int, default=0, help="this task's index: it runs every --tasks-th cell")
    q.add_argument("--tasks", type=int, default=1, help="tasks sharing the cells; the last to finish writes the table")
    q.add_argument("--aggregate", action="store_true", help="only write the table from the finished cells")
    q.set_defaults(func=_sweep, overrides=True)

    q = sub.add_parser("eval", help="evaluate the newest checkpoint of a workdir")
    q.add_argument("--workdir", required=True)
    q.add_argument("--split", default=None, help="default: the config's data.eval_split")
    q.add_argument("--out", default=None, help="report directory (default: the workdir)")
    q.add_argument("--pairs", default=None, metavar="DATA",
                   help="instead: same / different-person pairs of a verification set (fergate prep --dataset lfw): "
                        "distance distributions and pair accuracy of the model's representations (THIN, Fig. 9)")
    q.add_argument("--compare", nargs="+", default=None, metavar="WORKDIR",
                   help="evaluated runs of the same family to draw beside this one (THIN: |cos|, Fig. 8)")
    _add_jax_args(q)
    q.set_defaults(func=_eval)

    q = sub.add_parser("curves", help="the training curves of several runs in one figure (loss, training and "
                       "held-out accuracy against the step)")
    q.add_argument("workdirs", nargs="+", metavar="WORKDIR")
    q.add_argument("--out", required=True, help="the figure (.png)")
    q.add_argument("--labels", nargs="+", default=None, help="one per workdir (default: the workdirs' names)")
    q.add_argument("--title", default="", help="the figure's title")
    q.set_defaults(func=_curves)

    q = sub.add_parser("export", help="a trained model as a self-contained directory: parameters, config, classes, "
                       "preprocessing contract and a serialized inference function (jax.export)")
    q.add_argument("--workdir", required=True)
    q.add_argument("--out", required=True, help="a new directory")
    q.add_argument("--step", type=int, default=None, help="this checkpoint step (default: the selected, else newest)")
    _add_jax_args(q)
    q.set_defaults(func=_export)

    q = sub.add_parser("predict", help="an exported model on photos, folders (recursively) and videos: one JSON "
                       "line per face (or clip window)")
    q.add_argument("--model", required=True, help="an export (fergate export)")
    q.add_argument("inputs", nargs="+", metavar="INPUT", help="photos, videos, folders")
    q.add_argument("--out", default=None, help="JSONL file (default: stdout)")
    q.add_argument("--annotate", default=None, metavar="DIR", help="write the photos / frames with boxes, "
                   "landmarks and labels drawn")
    q.add_argument("--heatmaps", default=None, metavar="DIR", help="write each face's attention map over the "
                   "model's input (models with spatial introspection: the attention CNN)")
    q.add_argument("--batch", type=int, default=32, help="faces per model call")
    q.add_argument("--workers", type=int, default=None, help="face pipeline processes (default: all cores)")
    q.add_argument("--every", type=int, default=1, help="face models on videos: every K-th frame")
    q.add_argument("--window", type=int, default=None, help="clip models: frames per window (default: T)")
    q.add_argument("--stride", type=int, default=None, help="clip models: frames between windows (default: T/2)")
    q.add_argument("--pipeline_only", action="store_true", help="the face pipeline alone, no model (to time it)")
    _add_jax_args(q)
    q.set_defaults(func=_predict)

    q = sub.add_parser("attend", help="a trained model's attention over whole images of any size (group photos)")
    q.add_argument("--workdir", required=True)
    q.add_argument("images", nargs="+", metavar="IMAGE")
    q.add_argument("--faces", action="store_true", help="detect the faces: scale them to the training size, and "
                   "weigh the map by soft face boxes (the paper's suppression of background false positives)")
    q.add_argument("--scale", type=float, default=None, help="resize the images by this factor first")
    q.add_argument("--out", default=None, help="output directory (default: W/attend)")
    _add_jax_args(q)
    q.set_defaults(func=_attend)

    q = sub.add_parser("features", help="write a trained model's per-example features into a copy of the data "
                       "(VSHNN: the frame CNN's appearance features of every clip frame)")
    q.add_argument("--workdir", required=True, help="the trained model (its selected or newest checkpoint)")
    q.add_argument("--data", default=None, help="prepared data (default: the data the workdir trained on)")
    q.add_argument("--out", required=True, help="output directory: the data's records plus the new field; "
                   "finished shards are kept, so a killed run resumes")
    q.add_argument("--field", default="clip_features", help="the new record field")
    _add_jax_args(q)
    q.set_defaults(func=_features)

    q = sub.add_parser("bench", help="time train (or --infer) steps on synthetic batches, the input pipeline "
                       "(--pipeline) or data_prep (--prep); prints one JSON line")
    q.add_argument("--config", default=None, help="configs/X.py[:arg=value,...] (not needed with --prep)")
    q.add_argument("--batch", type=int, default=None)
    q.add_argument("--steps", type=int, default=20)
    q.add_argument("--warmup", type=int, default=3)
    q.add_argument("--infer", action="store_true")
    q.add_argument("--data", default=None, help="also time the input pipeline on this prepared directory (and "
                   "report its rate over the step's)")
    q.add_argument("--pipeline", action="store_true", help="only the input pipeline, no model: on --data, else "
                   "on the config's own data (the built-in set, prepared on first use)")
    q.add_argument("--prep", action="store_true", help="only data_prep: faces/s of `fergate prep` on the sample set "
                   "with each of --prep_workers")
    q.add_argument("--prep_workers", default="1,2", help="worker counts for --prep (default 1,2)")
    q.add_argument("--prep_size", type=int, default=280, help="sample-set images for --prep")
    q.add_argument("--vs", default=None, help="a second config (same overrides) timed in alternation: reports speedup")
    _add_jax_args(q)
    q.set_defaults(func=_bench, overrides=True)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, rest = p.parse_known_args(argv)
    overrides = [r for r in rest if r.startswith("--config.")]
    unknown = [r for r in rest if not r.startswith("--config.")]
    if unknown or (overrides and not getattr(args, "overrides", False)):
        p.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if args.command == "prep":
        setup_logging()
    else:  # before JAX starts its threads
        from fergate.runtime import tune_host_allocator

        tune_host_allocator()
    try:
        rc = args.func(args, overrides) if getattr(args, "overrides", False) else args.func(args)
    except UserError as e:
        print(f"fergate {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"fergate {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"fergate {args.command}: interrupted", file=sys.stderr)
        return 130
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
