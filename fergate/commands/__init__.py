"""The `fergate` subcommands, one module each: `add_parser(sub)` adds its argparse part (its
`run` as `func`; `overrides=True` when it takes --config.key=value) and `run` does it. Other
packages add commands through the `fergate.commands` entry point group (`fergate.plugins`):
the offline stage adds `prep`.

What the commands share lives here: a subcommand's parser (`add_command`), the logging set-up,
the JAX / multi-host flags and their set-up, reading a workdir's config, and the built-in
dataset a config names, prepared on first use.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from fergate import plugins

if TYPE_CHECKING:
    import ml_collections

#: the loggers `setup_logging` configures: fergate's and those of the packages that add to it
LOGGERS = ("fergate", *plugins.packages())


#: the subcommand the command line being parsed names (None: any, e.g. `fergate --help`), set by
#: `fergate.cli.parser`: a command whose parser is costly to build (prep's flags are generated from
#: every dataset reader, which imports the face pipeline) builds it whole only when it is the one named
NAMED: list[str | None] = [None]


def named() -> str | None:
    return NAMED[0]


def setup_logging(lead: bool = True) -> None:
    """fergate's progress lines on stdout, from the lead process only (others: warnings)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO if lead else logging.WARNING)
        logger.propagate = False


def add_command(sub: argparse._SubParsersAction, name: str, run: Callable, *, overrides: bool = False,
                jax_flags: bool = True, **kw) -> argparse.ArgumentParser:
    """Subcommand `name`'s parser (`kw`: argparse's help, epilog...) dispatching to `run`, which
    also gets the --config.key=value overrides when `overrides`; one that runs JAX (`jax_flags`)
    takes the JAX / multi-host flags."""
    q = sub.add_parser(name, **kw)
    if jax_flags:
        add_jax_args(q)
    q.set_defaults(func=run, overrides=overrides)
    return q


def add_jax_args(q: argparse.ArgumentParser) -> None:
    """The flags `jax_setup` reads, in their own group of `--help`."""
    g = q.add_argument_group("devices and peers")
    g.add_argument("--cpu_devices", type=int, default=None, help="emulate N devices on CPU")
    g.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-host)")
    g.add_argument("--num_processes", type=int, default=None)
    g.add_argument("--process_id", type=int, default=None)
    g.add_argument("--distributed", action="store_true", help="jax.distributed with auto-detected peers (TPU, SLURM)")


def jax_setup(a: argparse.Namespace) -> None:
    import jax

    compilation_cache(jax)
    if getattr(a, "cpu_devices", None):
        jax.config.update("jax_num_cpu_devices", a.cpu_devices)
    from fergate.train.mesh import setup_distributed

    setup_distributed(a.coordinator, a.num_processes, a.process_id, a.distributed)
    setup_logging(jax.process_index() == 0)


def compilation_cache(jax) -> None:
    """XLA programs kept on disk (`FERGATE_CACHE/xla`, or JAX_COMPILATION_CACHE_DIR; set it empty
    to turn it off), so that a resumed, re-evaluated or exported run does not compile its steps
    again: a restart after preemption starts at once."""
    import os

    where = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if where is None:
        from fergate.data.cache import cache_root

        jax.config.update("jax_compilation_cache_dir", os.path.join(cache_root(), "xla"))
    elif not where:
        jax.config.update("jax_enable_compilation_cache", False)


def workdir_setup(a: argparse.Namespace) -> ml_collections.ConfigDict:
    """The config `a.workdir` was trained with, read first (a wrong workdir fails before JAX
    starts; an export, which holds a config too, is named as one), then JAX set up
    (`jax_setup`)."""
    import os

    from fergate import config as config_lib
    from fergate.errors import UserError

    if os.path.isfile(os.path.join(a.workdir, "export.json")):  # fergate.export.MANIFEST, without importing jax
        raise UserError(f"{a.workdir} is an export (fergate export), not a training workdir: predict with it: "
                        f"`fergate predict --model {a.workdir} INPUT...`")
    cfg = config_lib.load_workdir(a.workdir)
    jax_setup(a)
    return cfg


def builtin_data(cfg: ml_collections.ConfigDict) -> None:
    """With no `data.dir`, the built-in dataset the config (and each earlier stage) names,
    prepared once in the cache."""
    from fergate import models

    for c in (cfg, *models.family(cfg.model).stages(cfg).values()):
        if not c.data.dir:
            plugins.prepare_builtin(c.data.dataset, dict(c.data.prep_options))
