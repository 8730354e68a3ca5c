"""What other packages add to fergate, through entry points: subcommands (`fergate.commands`:
a module with `add_parser` and `run`), the built-in datasets' preparation
(`fergate.builtin_data`: `prepare(dataset, prep_options) -> directory`) and its timing
(`fergate.prep_bench`: `prep_bench(workers, size) -> dict`).

The offline stage (`data_prep`: dataset readers, `fergate prep`) provides all three in
pyproject.toml: it builds on the library, and the library reaches it only by these names, never
by an import, so that fergate runs (train, export, predict on prepared data) without it.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from fergate.errors import UserError

COMMANDS = "fergate.commands"
BUILTIN_DATA = "fergate.builtin_data"
PREP_BENCH = "fergate.prep_bench"
GROUPS = (COMMANDS, BUILTIN_DATA, PREP_BENCH)
#: how to get what provides a hook
INSTALL = "install fergate with its offline stage (pip install -e . in a fergate checkout)"


def import_named(name: str) -> types.ModuleType | None:
    """The module a user names (a model family's, a dataset reader's), or None where there is
    no such module or `name` is no module name ("a/b", ".x"); a module that exists but imports
    something missing raises, so that its own error shows."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if not (e.name and name.startswith(e.name)):
            raise
        return None
    except (TypeError, ValueError):  # a relative or empty name
        return None


def provided(group: str) -> list[EntryPoint]:
    """The entry points of a group, by name."""
    return sorted(entry_points(group=group), key=lambda e: e.name)


def packages() -> tuple[str, ...]:
    """The top-level packages that add to fergate (their loggers are fergate's too)."""
    return tuple(sorted({e.module.split(".")[0] for g in GROUPS for e in entry_points(group=g)}))


def _hook(group: str, missing: str) -> Callable:
    found = provided(group)
    if not found:
        raise UserError(f"{missing}, and nothing provides it (no `{group}` entry point): {INSTALL}")
    return found[0].load()


def prepare_builtin(dataset: str, options: dict) -> str:
    """The directory of a built-in dataset prepared with `options` in the cache, prepared first
    if absent (`fergate.data.cache.builtin_dir`)."""
    return _hook(BUILTIN_DATA, f"the built-in {dataset} dataset is prepared on first use by the offline stage")(
        dataset, options)


def prep_bench(workers: list[int], size: int) -> dict:
    """`fergate prep`'s faces/s on `size` sample-set images with each number of `workers`."""
    return _hook(PREP_BENCH, "--prep times the offline stage's face pipeline")(workers, size)
