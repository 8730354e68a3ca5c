"""The `fergate` subcommands, one module each: `add_parser(sub)` adds its argparse part (its
`run` as `func`; `overrides=True` when it takes --config.key=value) and `run` does it. Other
packages add commands through the `fergate.commands` entry point group (`fergate.plugins`):
the offline stage adds `prep`.

What the commands share lives here: the logging set-up, the JAX / multi-host flags and their
set-up, and the built-in dataset a config names, prepared on first use.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fergate import plugins

#: the loggers `setup_logging` configures: fergate's and those of the packages that add to it
LOGGERS = ("fergate", *plugins.packages())


def setup_logging(lead: bool = True) -> None:
    """fergate's progress lines on stdout, from the lead process only (others: warnings)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO if lead else logging.WARNING)
        logger.propagate = False


def add_jax_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--cpu_devices", type=int, default=None, help="emulate N devices on CPU")
    q.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-host)")
    q.add_argument("--num_processes", type=int, default=None)
    q.add_argument("--process_id", type=int, default=None)
    q.add_argument("--distributed", action="store_true", help="jax.distributed with auto-detected peers (TPU, SLURM)")


def jax_setup(a: argparse.Namespace) -> None:
    import jax

    if getattr(a, "cpu_devices", None):
        jax.config.update("jax_num_cpu_devices", a.cpu_devices)
    from fergate.train.mesh import setup_distributed

    setup_distributed(a.coordinator, a.num_processes, a.process_id, a.distributed)
    setup_logging(jax.process_index() == 0)


def builtin_data(cfg) -> None:
    """With no `data.dir`, the built-in dataset the config (and each earlier stage) names,
    prepared once in the cache."""
    from fergate import models

    for c in (cfg, *models.family(cfg.model).stages(cfg).values()):
        if not c.data.dir:
            plugins.prepare_builtin(c.data.dataset, dict(c.data.prep_options))
