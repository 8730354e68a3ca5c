"""The `fergate` command line. User mistakes print one line and exit 2, never a traceback.

This is the application layer: it configures logging (one handler, on process 0), sets up
JAX's devices and peers, and dispatches to the subcommands (`fergate.commands`, one module
each). The offline stage `data_prep` adds `fergate prep` and prepares the built-in datasets
through entry points (`fergate.plugins`); the library, this command included, never imports
it, so that the offline stage builds on the library and not the reverse.
"""

from __future__ import annotations

import argparse
import sys

import fergate
from fergate import commands, files, plugins
from fergate.commands import (
    LOGGERS,  # noqa: F401  (fergate.cli.LOGGERS: the loggers `setup_logging` sets, which tests restore)
    Parser,
    attend,
    bench,
    curves,
    cv,
    export,
    features,
    predict,
    protocol,
    setup_logging,
    sweep,
    train,
    verify,
    weights,
)
from fergate.commands import config as config_command
from fergate.commands import eval as evaluate
from fergate.errors import Interrupted, UserError

#: fergate's own subcommands, in the order of `--help`, after those other packages add
COMMANDS = (train, config_command, cv, sweep, evaluate, curves, export, predict, attend, features, verify,
            protocol, weights, bench)


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with `argv`, the parser of the subcommand it names is the one
    built whole (`fergate.commands.named`)."""
    commands.NAMED[0] = next((a for a in argv if not a.startswith("-")), None) if argv else None
    p = Parser(prog="fergate", description="Gated multi-modal FER models in JAX.",
               epilog="`fergate COMMAND --help`: a command's options and their defaults.")
    p.add_argument("--version", action="version", version=f"fergate {fergate.version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    # the offline stage's commands (prep) first, as a project uses them
    for command in [e.load() for e in plugins.provided(plugins.COMMANDS)] + list(COMMANDS):
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser(argv)
    args, rest = p.parse_known_args(argv)
    overrides = [r for r in rest if r.startswith("--config.")]
    unknown = [r for r in rest if not r.startswith("--config.")]
    if unknown or (overrides and not getattr(args, "overrides", False)):
        p.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if not getattr(args, "jax", True):  # a command that starts no JAX (prep): its logging here
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
    except Exception as e:  # a write that failed for space where no command said more: still one line
        path = files.no_space(e)
        if path is None:
            raise
        print(f"fergate {args.command}: error: {files.disk_full(path or '.', 'what was written before it')}",
              file=sys.stderr)
        return 2
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
