"""What every dataset reader is made of: the `Item` it lists, the `Reader` base class and the
`option` its options dataclass declares (`layout` has the parsing helpers the readers share).

A reader is a `Reader` subclass with a `name` (its `--dataset`), an `Options` dataclass
(each field an `option`: type, default, help; `fergate prep`'s flags are generated from
it), `classes`, `items() -> list[Item]` and `load_item(item)`, returning an RGB image (or
a `face.FaceInput`: the image with the dataset's face box or landmarks, or marked a
pre-aligned crop), a list of frames for a clip item, or a record's fields; an optional
`manifest_extras() -> dict` adds entries to the manifest (LFW's pairs). Its classes come
from `fergate.data.labels.DATASET_CLASSES` unless the data names them (folder, csv, lfw).
Readers never run the face pipeline; `data_prep.prep` does, in worker processes, which make
their own reader: whatever `load_item` needs is set up in `__init__`. A missing or wrongly
laid out source is a one-line UserError naming the path and the expected layout when the
reader is made; a malformed label line, a label out of range or a missing file is a "bad"
item (`bad_item`), and an item that cannot be read raises SkipItem in `load_item`: both are
skipped and counted in the manifest by reason, never fatal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from data_prep.readers.layout import child
from fergate import face as F
from fergate import video
from fergate.data.labels import DATASET_CLASSES
from fergate.errors import UserError


@dataclass(frozen=True)
class Item:
    key: str  #: unique and stable across runs
    split: str
    label: int
    subject: str
    source: str  #: path or id
    kind: str = "image"  #: "image", "clip" (face pipeline run on it), "record" (fields as loaded), "bad"
    #: ("bad": an item the reader found unusable, skipped with the reason in `params` when loaded)
    params: tuple = field(default=())  #: reader-specific (the sample generator's recipe)


def bad_item(key: str, split: str, source: str, reason: str, detail: str = "") -> Item:
    """An item the reader found unusable (a malformed line, a label out of range, a missing
    file): skipped when loaded, counted in the manifest under `reason`."""
    return Item(key, split, 0, "", source, "bad", (reason, detail))


def option(default: Any, help: str, *, metavar: str | None = None, flag: bool = True, from_prep: bool = False):
    """A field of a reader's options dataclass. `help` is the text of its `fergate prep` flag:
    `{default}` in it is replaced by the default, else " (default X)" is appended (not to a
    switch). A bool option is a switch: `--NAME` turns on one that defaults off, `--no_NAME`
    turns off one that defaults on, and `help` says what the switch does. `flag=False`: no
    flag (set through `prep.run`'s reader_options or a config's prep_options only);
    `from_prep=True`: the PrepOptions field of the same name sets it (the clip length, the
    decode bound), prep's own flag being the one to use."""
    return field(default=default, metadata={"help": help, "metavar": metavar, "flag": flag and not from_prep,
                                            "from_prep": from_prep})


@dataclass(frozen=True)
class ClipOptions:
    """The options of a reader of videos or frame folders: the decode bound, prep's max_frames."""

    max_frames: int = option(video.MAX_FRAMES, "frames decoded from one clip at most, evenly spaced", from_prep=True)


@dataclass(frozen=True)
class NoOptions:
    """A reader without options."""


class Reader:
    """A dataset reader (module docstring): `source` and its `Options` kept, and `load`
    raising a bad item's SkipItem before `load_item` reads a good one."""

    name: ClassVar[str] = ""
    #: the title of the reader's group of flags in `fergate prep --help`: "<title> (<name>)"
    title: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    classes: tuple[str, ...] = ()

    def __init_subclass__(cls, **kw):
        """A published dataset's classes, in its own label order, are those fergate knows it by
        (`fergate.data.labels.DATASET_CLASSES[name]`) unless the reader says otherwise."""
        super().__init_subclass__(**kw)
        if "classes" not in cls.__dict__ and cls.name in DATASET_CLASSES:
            cls.classes = DATASET_CLASSES[cls.name]

    def __init__(self, source: str | None, options):
        self.source, self.options = source, options

    @classmethod
    def source_folder(cls, source: str | None, needs: str) -> str:
        """`source`, checked to be a folder: none given, the one-line UserError saying what the
        reader `needs`; not there, one naming it."""
        if not source:
            raise UserError(f"--dataset {cls.name} needs {needs}")
        if not os.path.isdir(source):
            raise UserError(f"--dataset {cls.name}: source folder not found: {source}")
        return source

    def items(self) -> list[Item]:
        raise NotImplementedError

    def load(self, item: Item):
        if item.kind == "bad":
            raise F.SkipItem(*item.params)
        return self.load_item(item)

    def load_item(self, item: Item):
        return F.load_image(item.source)


class LayoutReader(Reader):
    """A reader of a dataset's official layout: ROOT checked, then the parts of the layout
    found (`locate`, with `find`) or a one-line UserError naming the path and the expected
    `layout`."""

    layout: ClassVar[str] = ""

    def __init__(self, source: str | None, options):
        if not source:
            raise UserError(f"--dataset {self.name} needs ROOT: {self.layout}")
        if not os.path.exists(source):
            raise self.error("ROOT not found", source)
        super().__init__(source, options)
        self.locate()

    def locate(self) -> None:
        """What `items` and `load_item` read, found in ROOT (`self.source`, there) once: the
        reader's part of making it (its options are `self.options`)."""

    def error(self, problem: str, path: str) -> UserError:
        return UserError(f"--dataset {self.name}: {problem}: {path} (expected {self.layout})")

    def find(self, *parts: str, folder: bool = True, base: str | None = None) -> str:
        """`base`/parts[0]/parts[1]/... (base: ROOT), each part matched in any letter case,
        or the UserError naming what is missing where."""
        path = base or self.source
        for part in parts:
            found = child(path, part, folder=folder or part != parts[-1])
            if found is None:
                raise self.error(f"no {'/'.join(parts)}", path)
            path = found
        return path


class ClipReader(LayoutReader):
    """A layout reader of clips (videos or frame folders), its options `ClipOptions`: a clip
    item is decoded by `fergate.video.read_clip`, at most `max_frames` frames evenly spaced."""

    Options: ClassVar[type] = ClipOptions

    def load_item(self, item: Item):
        return video.read_clip(item.source, self.options.max_frames) if item.kind == "clip" else \
            super().load_item(item)
