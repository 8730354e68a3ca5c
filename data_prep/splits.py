"""`fergate prep --splits FILE`: a dataset's items put into the splits a protocol file
(`fergate.data.protocol`) gives their subjects, instead of the reader's splits and
`prep.hold_out`'s choice, so that a preparation on another machine, or a paper's, has the
same subjects in each split (and, with the file's folds, in each cross-validation fold).
"""

from __future__ import annotations

import dataclasses
import logging

from data_prep.readers import Item
from data_prep.readers.base import bad_item
from fergate.errors import UserError

log = logging.getLogger(__name__)

#: the skip reason (manifest `skipped`) of an item whose subject the protocol file names in no split
NOT_IN_PROTOCOL = "not_in_protocol"
CLIPS = "_clips"


def assign(items: list[Item], splits: dict[str, list[str]], path: str) -> list[Item]:
    """`items` with the split `splits` (split -> subjects) gives each one's subject, among the
    splits of its kind (a clip's `*_clips`, an image's others); a subject in several of them
    keeps its item's own split where that is one. An item whose subject is in none is skipped
    as `NOT_IN_PROTOCOL` (counted in the manifest; logged); a subject in several splits none of
    which is its item's is a one-line error naming `path`."""
    where: dict[str, list[str]] = {}
    for split, subjects in splits.items():
        for s in subjects:
            where.setdefault(s, []).append(split)
    out, left = [], 0
    for it in items:
        if it.kind == "bad":
            out.append(it)
            continue
        mine = [s for s in where.get(it.subject, []) if s.endswith(CLIPS) == it.split.endswith(CLIPS)]
        if not mine:
            out.append(bad_item(it.key, it.split, str(it.source), NOT_IN_PROTOCOL, f"subject {it.subject}"))
            left += 1
        elif len(mine) == 1 or it.split in mine:
            out.append(dataclasses.replace(it, split=mine[0] if len(mine) == 1 else it.split))
        else:
            raise UserError(f"--splits {path}: subject {it.subject!r} is in splits {', '.join(mine)}, and its item "
                            f"{it.key} is in {it.split}: name the subject in one split")
    if left:
        log.warning(f"[prep] --splits {path} names no split for the subjects of {left} items: skipped "
                    f"({NOT_IN_PROTOCOL} in the manifest)")
    return out
