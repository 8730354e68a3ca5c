"""The `fergate` subcommands, one module each: `add_parser(sub)` adds its argparse part (its
`run` as `func`; `overrides=True` when it takes --config.key=value) and `run` does it. Other
packages add commands through the `fergate.commands` entry point group (`fergate.plugins`):
the offline stage adds `prep`.

What the commands share lives here: a subcommand's parser (`add_command`; every parser of the
command line is a `Parser`, whose help shows each option's default), the logging set-up, the
JAX / multi-host flags and their set-up, reading a workdir's config, and the built-in dataset a
config names, prepared on first use.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help, with three changes: an option's default is shown only where it says
    something (not None, False or "", nor again where the help already names its default); a
    description or epilog keeps its line breaks (each line wrapped; those of an indented line
    hang under it), so that it can hold a list; and an epilog may be a function, called only when
    the help is shown (`fergate train`'s list of configs reads the config files)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default in ("", ()) or \
                "default" in text.lower():
            return text
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.strip("\n").splitlines():
            own = line[:len(line) - len(line.lstrip())]  # an indented line is a list item: its own lines hang
            lead = indent + own
            lines.append(textwrap.fill(line.strip(), width, initial_indent=lead,
                                       subsequent_indent=lead + ("  " if own else "")) if line.strip() else "")
        return "\n".join(lines)

    def add_text(self, text) -> None:
        super().add_text(text() if callable(text) else text)


class Parser(argparse.ArgumentParser):
    """The command line's parsers: their help is `HelpFormatter`'s (defaults shown)."""

    def __init__(self, *args, formatter_class: type = HelpFormatter, **kw):
        super().__init__(*args, formatter_class=formatter_class, **kw)


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
                jax: bool = True, **kw) -> argparse.ArgumentParser:
    """Subcommand `name`'s parser (`kw`: argparse's help, epilog...) dispatching to `run`, which
    also gets the --config.key=value overrides when `overrides`. One that runs JAX takes the JAX /
    multi-host flags; one that does not (`jax=False`) has its logging set up by `fergate.cli`."""
    q = sub.add_parser(name, **kw)
    if jax:
        add_jax_args(q)
    q.set_defaults(func=run, overrides=overrides, jax=jax)
    return q


def add_jax_args(q: argparse.ArgumentParser) -> None:
    """The flags `jax_setup` reads: the devices, and the multi-host ones in their own group of
    `--help` (a one-host run needs none of them)."""
    g = q.add_argument_group("devices")
    g.add_argument("--cpu_devices", type=int, default=None, metavar="N",
                   help="emulate N devices on the CPU (to try sharding without accelerators)")
    g = q.add_argument_group("multi-host (jax.distributed; launch/ has scripts that set these)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address, which every "
                   "process of the run is given")
    g.add_argument("--num_processes", type=int, default=None, metavar="N", help="processes in the run (with "
                   "--coordinator)")
    g.add_argument("--process_id", type=int, default=None, metavar="I", help="this process's index, 0 to N-1 (with "
                   "--coordinator)")
    g.add_argument("--distributed", action="store_true", help="jax.distributed with the peers detected from the "
                   "environment (TPU pods, SLURM) instead of the three flags above")


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


def add_workdir(q: argparse.ArgumentParser, help: str) -> None:
    """--workdir, the trained workdir a command reads (`workdir_setup`): required; `help` says
    what the command takes from it."""
    q.add_argument("--workdir", required=True, help=help)


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
