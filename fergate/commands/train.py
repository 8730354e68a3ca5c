"""`fergate train`: train a config in a workdir, resuming from its newest checkpoint
(`fergate.train.trainer`)."""

from __future__ import annotations

import argparse

from fergate.commands import add_command, builtin_data, jax_setup
from fergate.commands.config import catalogue


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "train", run, overrides=True,
                    help="train a config; resumes from the newest checkpoint in --workdir",
                    epilog=catalogue)  # read from the config files when the help is shown
    q.add_argument("--config", required=True, help="configs/X.py[:arg=value,...] (the list below)")
    q.add_argument("--workdir", required=True, help="the run's directory: checkpoints, metrics.jsonl, eval.json; "
                   "an existing one is resumed")


def run(a: argparse.Namespace, overrides: list[str]) -> None:
    from fergate import config as config_lib

    cfg = config_lib.load(a.config, overrides)
    from fergate.train import program

    program.validate(cfg, a.workdir)  # before data preparation and compilation
    from fergate.weights import init

    init.check(cfg)  # every init.weights file loads somewhere (its layout read from its tensors)
    jax_setup(a)
    builtin_data(cfg)
    from fergate.train import trainer

    trainer.train(cfg, a.workdir)
