"""`fergate eval`: a workdir's checkpoint on a held-out split of its data or of another
prepared dataset (`--data`), or its representations on verification pairs
(`fergate.train.evaluate`, `fergate.train.pairs`)."""

from __future__ import annotations

import argparse

from fergate.commands import add_command, add_workdir, builtin_data, workdir_setup


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "eval", run, help="evaluate the newest checkpoint of a workdir")
    add_workdir(q, "a training workdir (its config.json and checkpoints)")
    q.add_argument("--split", default=None, help="the split to evaluate (default: the config's data.eval_split; with "
                   "--data: its test split if it has one)")
    q.add_argument("--data", default=None, metavar="DIR",
                   help="evaluate on another prepared dataset (fergate prep), prepared like the model's data (face "
                        "size, colour, ...): its classes mapped onto the model's by name as data.mix maps them "
                        "(happy = happiness, ...); eval.json names it and its fingerprint")
    q.add_argument("--label_map", nargs="+", default=None, metavar="FROM=TO",
                   help="with --data: map its classes the model lacks onto the model's (contempt=disgust), or drop "
                        "them (contempt=-) (default: the training's data.label_map)")
    q.add_argument("--out", default=None, help="report directory (default: the workdir, which eval then holds like a "
                   "writer: refused while a run trains there; with --data: WORKDIR/eval-<DATA's folder name>-<split>); "
                   "another directory evaluates a run while it trains")
    q.add_argument("--pairs", default=None, metavar="DATA",
                   help="instead: same / different-person pairs of a verification set (fergate prep --dataset lfw): "
                        "distance distributions and pair accuracy of the model's representations (THIN, Fig. 9)")
    q.add_argument("--compare", nargs="+", default=None, metavar="WORKDIR",
                   help="evaluated runs of the same family to draw beside this one (THIN: |cos|, Fig. 8)")


def run(a: argparse.Namespace) -> None:
    """Evaluates; writing its reports into the workdir (no --out), it holds the workdir's
    lock, as a writer does: its eval.json would otherwise overwrite the one a training run
    there writes, or mark an earlier stage finished while it trains. With --out elsewhere it
    only reads the workdir, and evaluates a run while it trains."""
    import os

    cfg = workdir_setup(a)
    from fergate import lock
    from fergate.errors import UserError

    if a.label_map is not None and not a.data:
        raise UserError("--label_map maps the classes of another dataset: give it with --data DIR")
    if a.data:
        from fergate.train import evaluate

        a.split = evaluate.on_other_data(cfg, a.data, a.split, a.label_map)
        a.out = a.out or os.path.join(a.workdir, f"eval-{os.path.basename(os.path.normpath(a.data))}-{a.split}")

    if os.path.realpath(a.out or a.workdir) != os.path.realpath(a.workdir):
        return _run(a, cfg)
    try:
        with lock.hold(a.workdir, "fergate eval"):
            return _run(a, cfg)
    except lock.WorkdirBusy as e:
        raise lock.WorkdirBusy(f"{e}; or evaluate it meanwhile with --out DIR, which writes nothing into it") from None


def _run(a: argparse.Namespace, cfg) -> None:
    import os

    from fergate.train import data, program

    if a.pairs:
        from fergate.train import pairs

        builtin_data(cfg)
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
    own = not a.data  # another dataset is prepared already (read_manifest checked)
    if own and not (stage and data.features_ready(data.features_dir(a.workdir, stage))):  # else the copy suffices
        builtin_data(cfg)
    import jax

    from fergate.train import evaluate

    # a config.json this fergate cannot read: one line naming its keys
    t = program.from_workdir(a.workdir, data=a.data or True, config=cfg)
    prog, step, selected = t.program, t.step, t.selection
    if selected:
        print(f"[eval] the selected checkpoint: step {step} ({selected['split']} {selected['metric']} "
              f"{selected['value']:.3f}; train.select)")
    held = t.data.portions.eval if not a.split else data.Portion(a.split)
    results = evaluate.evaluate(prog, t.state, t.data, held)
    split = held.name
    results.metrics.update(step=step, split=split, **evaluate.data_identity(t.data),
                           **({"selected": selected} if selected else {}))
    out = a.out or a.workdir
    if jax.process_index() != 0:
        return
    report = evaluate.write_reports(results, out)
    on = f" of {a.data} (fingerprint {report['data_fingerprint']})" if a.data else ""
    print(f"[eval] step {step}, {split}{on}: accuracy {report['accuracy']:.4f}, mean class accuracy "
          f"{report['mean_class_accuracy']:.4f} -> {os.path.join(out, 'eval.json')}")
    if a.compare:
        runs = {a.workdir: {**report, "variant": cfg.variant}, **{w: evaluate.read_eval(w) for w in a.compare}}
        for path in prog.family.compare(runs, out):
            print(f"[eval] {len(runs)} runs compared -> {path}")
