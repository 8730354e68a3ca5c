"""The records of a split's shard files by global index, as grain's `ArrayRecordDataSource`
reads them, with a damaged shard turned into one line (`DamagedShard`): which file, which
record of it, and `fergate verify DATA` to check the rest. Without it a flipped byte ends a
long run in grain's traceback (`Corrupted Riegeli/records file: chunk data hash mismatch`)
that names no file, and a truncated shard silently shifts every later index onto another
record (its reader sees fewer records and raises nothing).

Every reader of prepared records in `fergate` goes through `Records`: the input pipeline's
`Load` (in grain's worker processes too: the error is a plain exception with its message
as its only argument, so it pickles back to the main process), `fergate features` and
`eval --pairs`.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Sequence

import grain

from fergate.errors import UserError
from fergate.files import read_json


class DamagedShard(UserError):
    """A shard that cannot be read as prep wrote it; the message names it and `fergate verify`."""


def shard_stats(path: str) -> dict | None:
    """The stats sidecar prep wrote beside shard `path` (`.stats/NAME.json`), None without one."""
    return read_json(os.path.join(os.path.dirname(path), ".stats", os.path.basename(path) + ".json"))


def expected_counts(files: Sequence[str]) -> list[int] | None:
    """Each file's record count by its sidecar; None when a sidecar is missing (shards written
    before sidecars: nothing to compare with)."""
    out = []
    for path in files:
        st = shard_stats(path)
        if st is None:
            return None
        out.append(int(st["records"]))
    return out


def reason(error: BaseException) -> str:
    """A reader's error in a few words: riegeli's message up to its first detail
    ("Corrupted Riegeli/records file: chunk data hash mismatch"), on one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(" (")[0].split(";")[0][:200]


def damaged(path: str, what: str) -> DamagedShard:
    return DamagedShard(f"damaged shard {path}: {what}; run `fergate verify {os.path.dirname(path) or '.'}` to "
                        "check every shard and see what to do")


class Records(Sequence):
    """The records of `files` in order, read by global index; a file that cannot be opened, one
    holding fewer or more records than `counts` (default: its sidecar's) or a record that
    cannot be read raises `DamagedShard`."""

    def __init__(self, files: Sequence[str], counts: Sequence[int] | None = None):
        self.files = list(files)
        self.counts = list(counts) if counts is not None else expected_counts(self.files)
        try:
            self.source = grain.sources.ArrayRecordDataSource(self.files)
        except Exception as e:  # a file whose index (footer) is damaged: find it
            for path in self.files:
                try:
                    grain.sources.ArrayRecordDataSource([path])
                except Exception:
                    raise damaged(path, f"it cannot be opened ({reason(e)})") from None
            raise
        if self.counts is not None and len(self.source) != sum(self.counts):
            for path, want in zip(self.files, self.counts):
                got = len(grain.sources.ArrayRecordDataSource([path]))
                if got != want:
                    raise damaged(path, f"it holds {got} records, prep wrote {want} (truncated or replaced?)")
        self._ends: list[int] | None = None

    def __len__(self) -> int:
        return len(self.source)

    def locate(self, index: int) -> tuple[str, int]:
        """(file, position in it) of record `index`."""
        if self._ends is None:
            counts = self.counts or [len(grain.sources.ArrayRecordDataSource([p])) for p in self.files]
            self._ends = list(itertools.accumulate(counts))
        f = bisect.bisect_right(self._ends, index)
        return self.files[f], index - (self._ends[f - 1] if f else 0)

    def __getitem__(self, index: int) -> bytes:
        try:
            return self.source[index]
        except Exception as e:
            path, position = self.locate(int(index))
            raise damaged(path, f"record {position} cannot be read ({reason(e)})") from None

    def undecodable(self, index: int, error: Exception) -> DamagedShard:
        """The error for record `index`, read but not a record of this schema (`error`)."""
        path, position = self.locate(int(index))
        return damaged(path, f"record {position} does not decode ({reason(error)})")
