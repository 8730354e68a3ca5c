"""Labelled photos in the simplest layouts: one folder per class (`folder`), or a CSV list
of paths and labels (`csv`)."""

from __future__ import annotations

import logging
import os
import re

from data_prep.readers.base import Item, LayoutReader, Reader, bad_item
from data_prep.readers.layout import class_layout, csv_rows, subject_of
from fergate.data.labels import canonical
from fergate.errors import UserError
from fergate.face import IMAGE_EXTS

log = logging.getLogger(__name__)


class FolderReader(Reader):
    """One sub-folder per class (`SOURCE/<class>/*.jpg`), or `SOURCE/<split>/<class>/...`
    when SOURCE holds `train/` and `test/`. Each photo is its own subject unless its name has
    a `<subject>__` prefix. A file without an image extension (`IMAGE_EXTS`: notes.txt) is
    skipped as not_an_image, and no subject; hidden files (.DS_Store) are ignored."""

    name = "folder"

    def __init__(self, source: str | None, options):
        super().__init__(self.source_folder(source, "a SOURCE folder"), options)
        self.roots, self.classes = class_layout(source)
        if not self.classes:
            raise UserError(f"no class sub-folders in {source}")

    def items(self) -> list[Item]:
        out = []
        for split, root in sorted(self.roots.items()):
            for label, c in enumerate(self.classes):
                d = os.path.join(root, c)
                for fname in sorted(os.listdir(d)) if os.path.isdir(d) else ():
                    path, key = os.path.join(d, fname), f"{split}/{c}/{fname}"
                    if os.path.isdir(path) or fname.startswith("."):
                        continue
                    if not fname.lower().endswith(IMAGE_EXTS):  # a stray file must not be drawn as a test subject
                        out.append(bad_item(key, split, path, "not_an_image", f"{path}: no image extension"))
                        continue
                    out.append(Item(key, split, label, subject_of(os.path.splitext(fname)[0]), path))
        return out


class CsvReader(LayoutReader):
    """Any labelled photos listed in a CSV file (SOURCE): rows `path,label[,subject,split]`,
    with or without a header row (one naming `path` and `label` picks the columns by name);
    paths relative to the CSV's folder, or absolute; a label is a class name or a class
    number: with numbers only, the classes are "0" to the largest, else the distinct names
    in canonical spelling (`labels.canonical`: Happy, happy and happiness are one class),
    sorted. A first row of words naming no file is a header even with other column names
    (`image,emotion`: the columns are then taken in order). subject defaults to the file's
    (its `<subject>__` name prefix, or its name), split to `train` (with no `test` rows
    prep's --test_fraction holds subjects out). A row without a path and label, or with a
    split that is not a plain word, is skipped as malformed, a missing photo as
    missing_file."""

    name = "csv"
    layout = "SOURCE: a .csv file of rows path,label[,subject,split] (header optional)"
    FIELDS = ("path", "label", "subject", "split")

    def locate(self):
        if not os.path.isfile(self.source):
            raise self.error("not a CSV file", self.source)
        rows = list(csv_rows(self.source))
        head = [c.strip().lower() for c in rows[0][2]] if rows else []
        named = {"path", "label"} <= set(head)
        col = {f: head.index(f) for f in self.FIELDS if f in head} if named else \
            {f: i for i, f in enumerate(self.FIELDS)}
        if not named and head and all(re.fullmatch(r"[a-z_ ]+", c) for c in head if c) and not os.path.isfile(
                os.path.join(os.path.dirname(os.path.abspath(self.source)), rows[0][2][0].strip())):
            log.info(f"[prep] csv: {self.source}: first row {','.join(head)} taken as a header (columns in order: "
                     f"{','.join(self.FIELDS)})")
            named = True
        #: (line number, path, label, subject, split); a malformed row: (line number, None, its text, "", "train")
        self.rows: list[tuple[int, str | None, str, str, str]] = []
        for number, _, row in rows[1 if named else 0:]:
            cell = {f: row[i].strip() for f, i in col.items() if i < len(row)}
            split = cell.get("split") or "train"
            if not cell.get("path") or not cell.get("label") or not re.fullmatch(r"\w+", split):
                self.rows.append((number, None, ",".join(row)[:80], "", "train"))
                continue
            path = cell["path"] if os.path.isabs(cell["path"]) else \
                os.path.join(os.path.dirname(os.path.abspath(self.source)), cell["path"])
            subject = cell.get("subject") or subject_of(os.path.splitext(os.path.basename(path))[0])
            label = cell["label"] if cell["label"].isdigit() else canonical(cell["label"])
            self.rows.append((number, path, label, subject, split.lower()))
        labels = [r[2] for r in self.rows if r[1]]
        if not labels:
            raise self.error("no row path,label", self.source)
        if all(v.isdigit() for v in labels):  # class numbers
            self.classes = tuple(str(i) for i in range(max(map(int, labels)) + 1))
            self.index = {v: int(v) for v in labels}
        else:
            self.classes = tuple(sorted(set(labels)))
            self.index = {c: i for i, c in enumerate(self.classes)}

    def items(self) -> list[Item]:
        out, name = [], os.path.basename(self.source)
        for number, path, label, subject, split in self.rows:
            key = f"{name}:{number}"
            if path is None:
                out.append(bad_item(key, split, self.source, "malformed_label", f"{key}: {label!r}"))
            elif not os.path.isfile(path):
                out.append(bad_item(key, split, path, "missing_file", f"no {path}"))
            else:
                out.append(Item(key, split, self.index[label], subject, path))
        return out


READERS = (FolderReader, CsvReader)
