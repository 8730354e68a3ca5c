"""`fergate verify DATA`: every shard of prepared data read back and held against its
manifest, before a long job finds a damaged one at hour three.

Per shard, in this order (the first problem found is the one reported): the file is there
and opens; every record reads (riegeli checks each chunk's hash) and is a record of this
schema; it holds the records the manifest says; its stats sidecar (`.stats/NAME.json`, where
training reads the labels from) is there and agrees; its SHA-256 is the one prep recorded in
the manifest (a shard whose records all read but whose digest differs was *changed* since
prep: rewritten or replaced, not damaged). Shard files the manifest does not name are
reported too: reading a split refuses them.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Iterator

from fergate.data import schema, shards
from fergate.data.records import reason
from fergate.errors import UserError
from fergate.files import need_json

#: a problem's word in the shard's line, and how the summary counts it
PROBLEMS = {"missing": "missing", "damaged": "damaged", "count": "with other counts", "schema": "of another schema",
            "sidecar": "with a bad sidecar", "changed": "changed since prep", "extra": "not in the manifest"}
BATCH = 64  #: records read at once (one at a time only to find which of a batch fails)


@dataclasses.dataclass(frozen=True)
class Check:
    """What `verify` found of one shard (`problem` "": none)."""

    name: str
    problem: str
    detail: str
    records: int = 0

    def line(self) -> str:
        return f"{(self.problem or 'ok').upper():<8} {self.name}  {self.detail}"


def read_manifest(data_dir: str) -> dict:
    """The manifest of prepared data; a directory that is none is a UserError."""
    if not os.path.isdir(data_dir):
        raise UserError(f"{data_dir}: no such directory")
    manifest = need_json(os.path.join(data_dir, "manifest.json"),
                         f"{data_dir} holds no manifest.json: not a `fergate prep` output (or prep has not finished)")
    if not isinstance(manifest, dict) or "splits" not in manifest:
        raise UserError(f"{data_dir}/manifest.json is not a `fergate prep` manifest (no splits)")
    return manifest


def verify(data_dir: str, manifest: dict) -> Iterator[Check]:
    """A `Check` of each shard the manifest names, as each is read, then of each shard file it
    does not name."""
    entries = manifest.get("shards", {})
    if manifest.get("schema_version") != schema.SCHEMA_VERSION:
        yield Check("manifest.json", "schema", f"schema version {manifest.get('schema_version')}, this fergate reads "
                    f"version {schema.SCHEMA_VERSION}")
    named = set()
    for split, v in manifest["splits"].items():
        found, fine = 0, True
        for i in range(v["files"]):
            named.add(name := shards.shard_name(split, i, v["files"]))
            c = check_shard(data_dir, name, entries.get(name))
            found, fine = found + c.records, fine and not c.problem
            yield c
        if fine and found != v["records"]:  # a manifest without per-shard counts
            yield Check(split, "count", f"{found} records in its shards, the manifest says {v['records']}")
    for path in sorted(glob.glob(os.path.join(data_dir, "*-?????-of-?????.array_record"))):
        if os.path.basename(path) not in named:
            yield Check(os.path.basename(path), "extra", "a shard the manifest does not name (an earlier "
                        "preparation's?): reading the data refuses its split while it is there; delete it")


def _read_all(path: str) -> tuple[int, str]:
    """(records in the file, "" or what stops reading it), every record read and its header
    checked (a batch at a time; one at a time only to find which of a batch fails)."""
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(path)
        n = reader.num_records()
    except Exception as e:
        return 0, f"cannot be opened ({reason(e)})"
    problem = ""
    for start in range(0, n, BATCH):
        end = min(n, start + BATCH)
        try:
            batch = reader.read(list(range(start, end)))
        except Exception:
            problem = f"records {start}-{end - 1} of {n} cannot be read together"
            for i in range(start, end):
                try:
                    reader.read([i])
                except Exception as e:
                    problem = f"record {i} of {n} cannot be read ({reason(e)})"
                    break
            break
        for i, data in enumerate(batch, start):
            try:
                schema.read_header(data)
            except schema.ForeignRecord as e:
                problem = f"record {i} of {n}: {e}"
                break
        if problem:
            break
    try:
        reader.close()  # a truncated file reads as fewer records and fails here, at its missing end
    except Exception as e:
        problem = problem or f"its end is damaged ({reason(e)})"
    return n, problem


def check_shard(data_dir: str, name: str, entry: dict | None) -> Check:
    """One shard against its manifest `entry` (records, sha256; None in manifests written
    before fergate recorded them) and its sidecar."""
    path = os.path.join(data_dir, name)
    if not os.path.exists(path):
        return Check(name, "missing", "the manifest names it, the directory has no such file")
    n, problem = _read_all(path)
    if problem:
        return Check(name, "schema" if "schema version" in problem else "damaged", problem, n)
    stats_file = shards.stats_path(data_dir, name)
    try:
        with open(stats_file) as f:
            stats = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return Check(name, "sidecar", f"its sidecar {os.path.relpath(stats_file, data_dir)} is "
                     f"{'missing' if isinstance(e, FileNotFoundError) else 'unreadable'}", n)
    want = entry["records"] if entry and "records" in entry else stats["records"]
    if n != want:
        return Check(name, "count", f"holds {n} records, the manifest says {want} (truncated or replaced?)", n)
    if stats["records"] != n or len(stats.get("labels", ())) != n:
        return Check(name, "sidecar", f"its sidecar says {stats['records']} records ({len(stats.get('labels', ()))} "
                     f"labels), the shard holds {n}", n)
    digest = (entry or {}).get("sha256") or stats.get("sha256")
    if digest is None:
        return Check(name, "", f"{_records(n)} (no digest recorded: prepared before fergate kept them)", n)
    if shards.file_digest(path) != digest:
        return Check(name, "changed", f"its {n} records read, but its SHA-256 is not the one prep recorded: the "
                     "file was rewritten or replaced since prep", n)
    return Check(name, "", _records(n), n)


def _records(n: int) -> str:
    return f"{n:,} record{'' if n == 1 else 's'}"


def summary(data_dir: str, manifest: dict, checks: list[Check]) -> str:
    """The closing line: all well, or the problems counted and what to do about them."""
    bad = [c for c in checks if c.problem]
    total = sum(c.records for c in checks if not c.problem)
    if not bad:
        return f"[verify] {data_dir}: {len(checks)} shards, {total:,} records: every record reads, as prep wrote it"
    counts = {p: sum(c.problem == p for c in bad) for p in PROBLEMS}
    found = ", ".join(f"{k} {PROBLEMS[p]}" for p, k in counts.items() if k)
    fix = []
    if any(c.problem not in ("extra", "schema") for c in bad):
        source = f"{manifest.get('source')} " if manifest.get("source") else ""
        fix.append(f"delete each such shard and its .stats/NAME.json, then rerun `fergate prep {source}--dataset "
                   f"{manifest.get('dataset', '?')} --out {data_dir}` with the options in its manifest: it redoes "
                   "only those shards")
    if counts["extra"]:
        fix.append("delete the shards the manifest does not name")
    if counts["schema"]:
        fix.append("prepare the data again with this fergate")
    return f"[verify] {data_dir}: {len(bad)} of {len(checks)} shards have problems ({found}): {'; '.join(fix)}"
