"""`fergate cv`: subject-independent k-fold cross-validation, all folds or one (`fergate.train.cv`)."""

from __future__ import annotations

import argparse

from fergate.commands import add_command, builtin_data, jax_setup, setup_logging
from fergate.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "cv", run, overrides=True,
                    help="subject-independent k-fold cross-validation: train every fold (or --fold i), then mean "
                         "and spread of the accuracy and the summed confusion matrix",
                    epilog="Overrides: --config.key=value, applied to every fold. Folds as separate jobs: "
                           "`fergate cv ... --fold i` on each machine, then `fergate cv ... --aggregate`.")
    q.add_argument("--config", default=None, help="configs/X.py[:arg=value,...] (not needed with --aggregate)")
    q.add_argument("--workdir", required=True, help="fold i trains in WORKDIR/fold-NN (fold-03: fold 3); cv.json "
                   "goes here")
    q.add_argument("--folds", type=int, default=10, help="k (the manifest's class-balanced folds for 10)")
    q.add_argument("--fold", type=int, default=None, help="train this fold only (a separate job)")
    q.add_argument("--aggregate", action="store_true", help="only aggregate the finished folds")


def run(a: argparse.Namespace, overrides: list[str]) -> None:
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
    jax_setup(a)
    builtin_data(cfg)
    cv.run(a.config, overrides, a.workdir, a.folds, a.fold)
