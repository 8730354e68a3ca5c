"""Protocol files: which subjects a prepared dataset has in each split and in each
cross-validation fold, in a JSON file one machine writes (`fergate protocol export DATA`) and
another prepares the same source by (`fergate prep --splits FILE`), and the digest that tells
two such assignments apart (`digest`), which eval.json and cv.json record: two numbers are
comparable when their digests are equal.

    {"format": "fergate-protocol/1", "dataset": "...",
     "splits": {"train": ["s01", "s02", ...], "test": ["s07", ...]},
     "folds": {"s01": 0, "s02": 3, ...},
     "digest": "..."}

`splits` lists each split's subjects (clip splits, `train_clips`, by their own name); a
subject is normally in one split. `folds` (optional) gives each subject its fold, 0 to k - 1,
for `fergate cv --folds k`. The digest covers `splits` and `folds`, nothing else: the same
assignment gives the same digest whatever the data's path, options or name.
"""

from __future__ import annotations

import hashlib
import json
import os

from fergate.errors import UserError

FORMAT = "fergate-protocol/1"


def canonical(splits: dict, folds: dict | None) -> dict:
    """The assignment as digested: each split's subjects sorted, once; folds as ints."""
    return {"splits": {str(s): sorted({str(x) for x in subs}) for s, subs in sorted(splits.items())},
            "folds": {str(k): int(v) for k, v in sorted((folds or {}).items())}}


def digest(splits: dict, folds: dict | None = None) -> str:
    """16 hex digits of SHA-256 over the `canonical` assignment."""
    return hashlib.sha256(json.dumps(canonical(splits, folds), sort_keys=True).encode()).hexdigest()[:16]


def of_manifest(manifest: dict, folds: dict | None = None) -> dict:
    """The protocol of a prepared dataset: its splits' subjects, and `folds` (default: the
    manifest's own, `shards.subject_folds`, or those its protocol file gave), with its digest."""
    splits = {s: v["subjects"] for s, v in manifest["splits"].items()}
    folds = manifest.get("folds", {}) if folds is None else folds
    out = {"format": FORMAT, "dataset": manifest.get("dataset"), **canonical(splits, folds)}
    return {**out, "digest": digest(splits, folds)}


def read(path: str, option: str = "--splits") -> dict:
    """A protocol file, checked: its format, `splits` (split -> list of subjects), `folds`
    (subject -> fold >= 0, every subject of the splits given one) and, when it states one,
    its digest (a file edited since it was written says so). Each problem is a one-line
    UserError naming the file."""
    try:
        with open(path) as f:
            p = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{option} {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{option} {path}: not a JSON protocol file ({e})") from None
    where = f"{option} {path}"
    if not isinstance(p, dict) or p.get("format") != FORMAT:
        raise UserError(f"{where}: not a protocol file (its \"format\" is not {FORMAT!r}; write one with "
                        "`fergate protocol export DATA`)")
    splits, folds = p.get("splits"), p.get("folds") or {}
    if not isinstance(splits, dict) or not splits or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in splits.values()):
        raise UserError(f"{where}: \"splits\" must map each split to a list of subject names")
    if not isinstance(folds, dict) or not all(isinstance(v, int) and v >= 0 for v in folds.values()):
        raise UserError(f"{where}: \"folds\" must map subjects to fold numbers 0, 1, ...")
    subjects = {x for v in splits.values() for x in v}
    if folds and (lacking := sorted(subjects - set(folds))):
        raise UserError(f"{where}: {len(lacking)} subjects of its splits have no fold ({', '.join(lacking[:3])}"
                        f"{', ...' if len(lacking) > 3 else ''})")
    d = digest(splits, folds)
    if p.get("digest") not in (None, d):
        raise UserError(f"{where}: its digest {p['digest']} is not that of its splits and folds ({d}): the file was "
                        "edited since it was written (remove \"digest\" to accept the edit)")
    return {"format": FORMAT, "dataset": p.get("dataset"), **canonical(splits, folds), "digest": d}


def write(path: str, protocol: dict) -> None:
    """Writes `protocol` (`of_manifest`) as JSON, atomically."""
    from fergate.files import write_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, json.dumps(protocol, indent=1) + "\n")
