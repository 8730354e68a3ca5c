"""`fergate features`: a trained model's `features` output written into a copy of the data
(`fergate.train.features`)."""

from __future__ import annotations

import argparse

from fergate.commands import add_command, add_workdir, builtin_data, workdir_setup


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "features", run, help="write a trained model's per-example features into a copy of the "
                    "data (VSHNN: the frame CNN's appearance features of every clip frame)")
    add_workdir(q, "the trained model (its selected or newest checkpoint)")
    q.add_argument("--data", default=None, help="prepared data (default: the data the workdir trained on)")
    q.add_argument("--out", required=True, help="output directory: the data's records plus the new field; "
                   "finished shards are kept, so a killed run resumes")
    q.add_argument("--field", default="clip_features", help="the new record field")
    q.add_argument("--folds", type=int, default=0, help="k > 0: the records the workdir's model trained on take the "
                   "features of one of k out-of-fold models of it instead, each trained first (unless finished) into "
                   "WORKDIR/oof-k/fold-NN without one subject fold of those records, so that none comes from a model "
                   "that saw its subject (default: 0, every record from the workdir's model)")


def run(a: argparse.Namespace) -> None:
    """A trained model's `features` output of every record, written into a copy of the data."""
    cfg = workdir_setup(a)
    if not a.data:
        builtin_data(cfg)
    from fergate.errors import UserError
    from fergate.train import data, features, trainer

    if a.folds < 0:
        raise UserError(f"--folds {a.folds}: expected 0 (in-sample) or a number of out-of-fold models")
    folds = trainer.train_out_of_fold(a.workdir, a.folds) if a.folds else ()
    features.extract(a.workdir, a.data or data.source_dir(cfg), a.out, a.field, folds=folds)
