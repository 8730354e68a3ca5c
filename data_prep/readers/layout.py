"""What the readers of the datasets' official layouts share: folders and files found in any
letter case, label files read line by line, numbers parsed."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator

import numpy as np


def subfolders(path: str) -> dict[str, str]:
    """Sub-folder names of `path` by their lower-case spelling."""
    return {n.lower(): n for n in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, n))}


def class_layout(source: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """(split -> folder, classes) of a folder-per-class source: `SOURCE/<class>/...`, or
    `SOURCE/<split>/<class>/...` when SOURCE holds `train/` or `test/`; the classes are the
    class folders' names, sorted."""
    roots = {s: os.path.join(source, s) for s in ("train", "test") if os.path.isdir(os.path.join(source, s))}
    roots = roots or {"train": source}
    return roots, tuple(sorted({c for r in roots.values() for c in subfolders(r).values()}))


def subject_of(stem: str) -> str:
    """A file's subject: the `<subject>__` prefix of its name, or the name itself."""
    return stem.split("__")[0] if "__" in stem else stem


def text_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of the non-blank lines of a text file, undecodable bytes replaced
    (a label file's one bad byte must not stop the run)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, line.lstrip("\ufeff")


def fields(line: str, count: int, expected: str = "") -> list[str]:
    """The white-space separated fields of a label line, `count` of them, else ValueError: the
    line is malformed (`expected` names the fields in its message)."""
    parts = line.split()
    if len(parts) != count:
        raise ValueError(f"{len(parts)} fields{', expected ' + expected if expected else ''}")
    return parts


def csv_rows(path: str) -> Iterator[tuple[int, int, list[str]]]:
    """(line number, byte offset, fields) of the non-blank rows of a CSV file without line
    breaks inside fields (the datasets' label lists): a worker reads one row back with
    `csv_row_at`, so that no item carries FER-2013's pixels or AffectNet's landmarks."""
    with open(path, "rb") as fh:
        offset = 0
        for number, raw in enumerate(fh, 1):
            text = raw.decode("utf-8", "replace").lstrip("\ufeff")
            if text.strip():
                yield number, offset, next(csv.reader([text]))
            offset += len(raw)


def csv_row_at(path: str, offset: int) -> list[str]:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return next(csv.reader([fh.readline().decode("utf-8", "replace").lstrip("\ufeff")]))


def numbers(text: str, count: int) -> np.ndarray | None:
    """`count` finite float32 numbers separated by white space or `;` (CK+'s landmark files,
    AffectNet's landmark column, RAF-DB's box files), or None for anything else."""
    try:
        values = np.array(text.replace(";", " ").split(), np.float32)
    except ValueError:
        return None
    return values if values.size == count and np.isfinite(values).all() else None


def read_numbers(path: str, count: int) -> np.ndarray | None:
    """`numbers` of a file, or None when it is absent: a dataset's optional annotation."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return numbers(fh.read(), count)
    except OSError:
        return None


def points(values: np.ndarray | None) -> np.ndarray | None:
    """68 (x, y) landmarks from 136 numbers, or None."""
    return None if values is None else values.reshape(68, 2)


def child(parent: str, *names: str, folder: bool = True) -> str | None:
    """The path of the first of `names` in `parent`, matched in any letter case (datasets are
    unpacked on case-insensitive disks too), or None."""
    if not os.path.isdir(parent):
        return None
    entries = {n.lower(): n for n in sorted(os.listdir(parent))}
    for name in names:
        path = os.path.join(parent, entries.get(name.lower(), name))
        if (os.path.isdir if folder else os.path.isfile)(path):
            return path
    return None
