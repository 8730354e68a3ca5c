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


def run(a: argparse.Namespace) -> None:
    """A trained model's `features` output of every record, written into a copy of the data."""
    cfg = workdir_setup(a)
    if not a.data:
        builtin_data(cfg)
    from fergate.train import data, features

    features.extract(a.workdir, a.data or data.source_dir(cfg), a.out, a.field)
