"""Dataset readers: one module per dataset or group of alike ones (`base` says what a reader
is), and the registry {`--dataset` name: reader} built from the `READERS` each module of
this package lists (a new module is found: adding a reader is adding its file).

A reader declares its options once, as the fields of its `Options` dataclass
(`base.option`: type, default, help); `fergate prep`'s per-dataset flags and its
`--dataset` help are generated from them here (`add_arguments`, `options_from_args`), and
an option no field declares is a one-line UserError (`options`), whether it comes from a
config's `data.prep_options` or from `prep.run`'s reader_options. `--dataset` may also name
an importable module outside data_prep (`mypkg.myreader`, as `config.model` may name a
family) whose `READERS` holds one reader; its options come from a config's prep_options or
`prep.run`, as no flag is generated for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
import types
import typing
from collections.abc import Mapping

from data_prep.readers.base import ClipOptions, ClipReader, Item, LayoutReader, NoOptions, Reader, option  # noqa: F401 (API)
from fergate import plugins
from fergate.errors import UserError

#: the reader modules of this package, in name order (that of `fergate prep --help`)
MODULES = tuple(importlib.import_module(f"{__name__}.{name}")
                for name in sorted(m.name for m in pkgutil.iter_modules(__path__)) if name not in ("base", "layout"))
READERS: dict[str, type[Reader]] = {r.name: r for m in MODULES for r in m.READERS}


def find(dataset: str) -> type[Reader]:
    """The reader of `--dataset`: a built-in one, else the one reader of the module it names."""
    if dataset in READERS:
        return READERS[dataset]
    found = tuple(getattr(plugins.import_named(dataset), "READERS", ()))
    if len(found) != 1:
        raise UserError(f"unknown dataset {dataset!r}; known: {', '.join(READERS)}, or an importable module whose "
                        f"READERS holds one reader{f' ({dataset} lists {len(found)})' if found else ''}")
    return found[0]


def _fields(reader: type[Reader]) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(getattr(reader, "Options", NoOptions))


def options(dataset: str, values: Mapping, where: str = ""):
    """The `Options` of the dataset's reader made of `values`; a key it does not declare (a
    misspelling) is a one-line UserError naming it and the options there are."""
    known = [f.name for f in _fields(find(dataset))]
    if unknown := sorted(set(values) - set(known)):
        raise UserError(f"{where}unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} of "
                        f"--dataset {dataset} (its options: {', '.join(known) or 'none'})")
    return getattr(find(dataset), "Options", NoOptions)(**values)


def reader(dataset: str, source: str | None, **values) -> Reader:
    """The dataset's reader of `source` with the options `values` (the others at their defaults)."""
    return find(dataset)(source, options(dataset, values))


def prep_fields(dataset: str) -> tuple[str, ...]:
    """The options of the dataset's reader that prep sets from its own (`option(from_prep=True)`)."""
    return tuple(f.name for f in _fields(find(dataset)) if f.metadata.get("from_prep"))


# -- `fergate prep`'s flags ------------------------------------------------------------------


def _flags() -> dict[str, list[tuple[str, dataclasses.Field, type]]]:
    """flag dest -> [(dataset, field, value type)] of every built-in reader declaring it."""
    out: dict[str, list] = {}
    for name, rdr in READERS.items():
        hints = typing.get_type_hints(rdr.Options)
        for f in _fields(rdr):
            if f.metadata.get("flag"):
                kind = hints[f.name]
                if isinstance(kind, types.UnionType):  # `str | None`
                    kind = next(k for k in typing.get_args(kind) if k is not type(None))
                out.setdefault(f.name, []).append((name, f, kind))
    for dest, owners in out.items():
        if len({kind for *_, kind in owners}) > 1:
            raise TypeError(f"reader option {dest!r} has several types: {owners}")
    return out


def _help(f: dataclasses.Field, kind: type) -> str:
    """A field's help, its default shown (`{default}` in it, else appended; not a switch's)."""
    text, default = f.metadata.get("help", ""), f.default
    shown = f"{default:g}" if isinstance(default, float) else str(default)
    if "{default}" in text:
        text = text.replace("{default}", shown)
    elif kind is not bool and default is not None:
        text += f" (default {shown})"
    return text


def _joined_help(which: list, owners: list) -> str:
    """The help of a flag of the readers `which` among the `owners` of its option: their
    field's, or each one's (alike ones together) where they differ."""
    texts: dict[str, list[str]] = {}
    for name, f, kind in which:
        texts.setdefault(_help(f, kind), []).append(name)
    if len(texts) == 1 and len(which) == len(owners):
        return next(iter(texts)).replace("%", "%%")
    return "; ".join(f"{', '.join(names)}: {text}" for text, names in texts.items()).replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The built-in readers' options as `fergate prep` flags, in one group per reader (a flag
    that several readers declare: in the first one's group, its help giving each one's
    meaning). Every flag defaults to None (not given), so that `options_from_args` passes on
    only the given ones and refuses another dataset's."""
    flags = _flags()
    for name, rdr in READERS.items():
        mine = [dest for dest, owners in flags.items() if owners[0][0] == name]
        if not mine:
            continue
        also = [f"--{dest}: also {', '.join(n for n, *_ in flags[dest][1:])}" for dest in mine if len(flags[dest]) > 1]
        group = parser.add_argument_group(f"{rdr.title} ({name})" if rdr.title else name, "; ".join(also) or None)
        for dest in mine:
            owners = flags[dest]
            kind, metavar = owners[0][2], owners[0][1].metadata.get("metavar")
            if kind is not bool:
                group.add_argument(f"--{dest}", dest=dest, type=kind, default=None, metavar=metavar,
                                   help=_joined_help(owners, owners))
                continue
            for on in (True, False):  # --X switches on what defaults off, --no_X off what defaults on
                which = [o for o in owners if o[1].default is not on]
                if which:
                    group.add_argument(f"--{dest}" if on else f"--no_{dest}", dest=dest, action="store_const",
                                       const=on, default=None, help=_joined_help(which, owners))


def options_from_args(dataset: str, namespace: argparse.Namespace) -> dict:
    """The reader options given as `fergate prep` flags; a flag of another dataset's reader is
    a one-line UserError naming the datasets it belongs to."""
    mine = {f.name for f in _fields(find(dataset)) if f.metadata.get("flag")}
    out = {}
    for dest, owners in _flags().items():
        value = getattr(namespace, dest, None)
        if value is None:
            continue
        if dest not in mine:
            flag = f"--no_{dest}" if value is False else f"--{dest}"
            raise UserError(f"{flag} is an option of --dataset {' or '.join(n for n, *_ in owners)}, not {dataset}")
        out[dest] = value
    return out


def dataset_help() -> str:
    """`--dataset`'s help: the built-in readers, and the way to name another."""
    return (f"{' | '.join(READERS)} (the layouts: README, Datasets), or an importable module whose READERS holds "
            "one reader (mypkg.myreader)")
