"""`fergate prep`: dataset reader -> face pipeline (process pool) -> ArrayRecord shards.

Items are split deterministically: item j of a split goes to file j % M, and machine i of
`num_shards` writes the files f with f % num_shards == i, so machines never write the same
file and a re-run skips every file already complete (see fergate.data.shards).

A rerun over an existing `--out` brings it up to date or refuses, never mixing two
preparations: run with other options (or another dataset) than `--out` was prepared with
(`.stats/prep.json`, else its manifest), it refuses in one line naming the difference
(`--overwrite` prepares it anew); from other items, the shards whose items changed (a photo
added, replaced or removed: each shard's sidecar keeps a digest of its items' keys, labels,
sizes and modification times, `shard_inputs`) are redone and the shards the new plan has no
place for are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import threadpoolctl

from data_prep import readers
from data_prep.contact_sheet import contact_sheet
from data_prep.splits import assign
from fergate import detectors
from fergate import face as F
from fergate.data import protocol, schema, shards
from fergate.data.cache import builtin_dir, cache_root
from fergate.errors import UserError
from fergate.files import free_bytes, human
from fergate.video import ClipOptions, clip_record

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PrepOptions(ClipOptions):
    """The face pipeline's options (`ClipOptions`, `face`) and how the records are stored."""

    compress: bool = False  #: store images as PNG: ~40% smaller, ~100x slower to decode than raw
    records_per_file: int = 1024
    test_fraction: float = 0.2  #: a source without a test split: this share of its subjects is held out


_WORKER: dict = {}
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _init_worker(name: str, source: str | None, reader_options: dict, opts: PrepOptions) -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core: library threads only oversubscribe
    _WORKER["reader"] = make_reader(name, source, reader_options, opts)
    _WORKER["opts"] = opts


def make_reader(name: str, source: str | None, reader_options: dict, opts: PrepOptions) -> readers.Reader:
    """The dataset's reader with `reader_options`, and the options it takes from prep's unless
    they set them (`readers.prep_fields`: the clip length T the sample set generates, the
    decode bound of the video readers). An option the reader does not declare is a UserError."""
    given = {k: getattr(opts, k) for k in readers.prep_fields(name)}
    return readers.reader(name, source, **{**given, **reader_options})


def process_item(item: readers.Item) -> tuple[bytes | None, str | None]:
    """(encoded record, None) or (None, skip reason); never raises for a bad item."""
    reader, opts = _WORKER["reader"], _WORKER["opts"]
    try:
        loaded = reader.load(item)
        if item.kind == "record":
            rec = loaded
        elif item.kind == "clip":
            rec = clip_record(loaded, opts)
        else:
            rec = F.process_face(loaded, opts.face)
    except F.SkipItem as e:
        return None, e.reason
    except Exception as e:  # a reader or decoder failure must not stop the run
        return None, f"error:{type(e).__name__}"
    rec.update(label=item.label, label_name=reader.classes[item.label], subject=item.subject,
               source=str(item.source))
    return schema.encode(rec, compress=opts.compress), None


#: a held-out subject's items move from each split to its test split
HELD_OUT = {"train": "test", "train_clips": "test_clips"}


def hold_out(items: list[readers.Item], fraction: float, seed: int = 0) -> list[readers.Item]:
    """A source with no test split gets a subject-independent one: `fraction` of the
    training subjects (at least one, never all) move to `test`, their clips to `test_clips`
    (`HELD_OUT`), chosen (`covering_subjects`) so that every class is in both splits where
    the subjects allow, at random (`seed`) beyond that."""
    held = [it for it in items if it.split in HELD_OUT and it.kind != "bad"]
    subjects = sorted({it.subject for it in held})
    if fraction <= 0 or any(it.split.startswith("test") and it.kind != "bad" for it in items) or len(subjects) < 2:
        return items
    n = min(len(subjects) - 1, max(1, round(fraction * len(subjects))))
    classes: dict[str, set] = {s: set() for s in subjects}
    for it in held:  # a class in a split: (the split it would go to, its label)
        classes[it.subject].add((HELD_OUT[it.split], it.label))
    test = set(covering_subjects(classes, n, np.random.default_rng(seed)))
    log.info(f"[prep] the source has no test split: {n} of its {len(subjects)} subjects ({fraction:.0%}, "
             "--test_fraction) are held out as `test`, chosen to give it every class the subjects allow")
    return [dataclasses.replace(it, split=HELD_OUT[it.split]) if it.split in HELD_OUT and it.subject in test else it
            for it in items]


def covering_subjects(classes: dict[str, set], n: int, rng: np.random.Generator) -> list[str]:
    """`n` of the subjects (`classes`: subject -> the classes it has) to hold out, so that the
    held-out ones have as many classes as they can while those left keep every class they
    have. Greedily: each pick is the subject bringing the most classes not yet held out, of
    those not the last one left with a class of theirs (as many picks as there are classes
    at most); once none brings a new class, the rest in a random order drawn from `rng`,
    the last ones left with a class of theirs only when no other remains. Ties go in that
    order too: with every class in every subject, the first `n` of a random permutation."""
    order = [str(s) for s in rng.permutation(sorted(classes))]
    left = Counter(c for cs in classes.values() for c in cs)  # per class: its subjects not held out
    held: dict[str, None] = {}  # in the order picked
    covered: set = set()

    def hold(s: str) -> None:
        held[s] = None
        covered.update(classes[s])
        left.subtract(classes[s])

    def last_of_a_class(s: str) -> bool:
        return any(left[c] == 1 for c in classes[s])

    def brings(s: str) -> int:
        return sum(c not in covered and left[c] > 1 for c in classes[s])

    while len(held) < n:
        best = max((s for s in order if s not in held), key=lambda s: (not last_of_a_class(s), brings(s)))
        if last_of_a_class(best) or not brings(best):
            break
        hold(best)
    for keep_last in (True, False):  # no subject brings a new class: in random order, the last of a class kept
        for s in order:
            if len(held) < n and s not in held and not (keep_last and last_of_a_class(s)):
                hold(s)
    return list(held)


def plan(items: list[readers.Item], records_per_file: int, num_shards: int) -> dict[str, list[list]]:
    """split -> files -> items: M = num_shards * ceil(n / (num_shards * records_per_file))."""
    by_split = defaultdict(list)
    for it in items:
        by_split[it.split].append(it)
    out = {}
    for split, its in sorted(by_split.items()):
        m = num_shards * max(1, math.ceil(len(its) / (num_shards * records_per_file)))
        out[split] = [its[f::m] for f in range(m)]
    return out


#: the record of how `--out` is being prepared, written when a preparation starts
PREPARED_WITH = os.path.join(".stats", "prep.json")
SHARD_FILE = re.compile(r"(?:\.tmp-)?(.+-\d{5}-of-\d{5}\.array_record)")


def prepared_with(out: str) -> dict | None:
    """{"dataset", "options"} `out` was prepared with: its `PREPARED_WITH`, else (an output of
    an earlier fergate) its manifest's; None for a directory without either."""
    for name in (PREPARED_WITH, "manifest.json"):
        path = os.path.join(out, name)
        if os.path.exists(path):
            with open(path) as f:
                m = json.load(f)
            return {"dataset": m.get("dataset"), "options": m.get("options", {})}
    return None


def _flat(options: dict, prefix: str = "") -> dict:
    """{"face_size": ..., "reader.size": ...}: nested options by one name each (face options
    by their own, as the flags name them)."""
    out = {}
    for k, v in options.items():
        if isinstance(v, dict):
            out.update(_flat(v, "" if k == "face" else f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _shown(v) -> str:
    return "x".join(map(str, v)) if isinstance(v, list) and all(isinstance(x, int) for x in v) else json.dumps(v)


def difference(theirs: dict, mine: dict) -> str | None:
    """The first option (or the dataset) in which two preparations differ, as "name X, this
    run asks Y (and N more)"; None when they agree. An option only one of them knows (added
    to fergate since) is no difference."""
    a = {"dataset": theirs["dataset"], **_flat(theirs["options"])}
    b = {"dataset": mine["dataset"], **_flat(mine["options"])}
    diff = [k for k in a if k in b and a[k] != b[k]]
    if not diff:
        return None
    k = diff[0]
    more = f" (and {len(diff) - 1} more: {', '.join(diff[1:4])})" if len(diff) > 1 else ""
    return f"{k} {_shown(a[k])}, this run asks {_shown(b[k])}{more}"


def claim(out: str, mine: dict, overwrite: bool, num_shards: int) -> None:
    """Makes `out` this preparation's (`mine`: its dataset and options, as JSON): one prepared
    otherwise is refused in one line naming the difference, or with `overwrite` emptied of
    what prep wrote there; then `PREPARED_WITH` records `mine`."""
    if overwrite:
        if num_shards > 1:
            raise UserError("--overwrite with --num_shards: machines would delete each other's shards; clear --out "
                            "once (or run one machine with --overwrite and --num_shards 1), then start them")
        removed = clear(out)
        if removed:
            log.info(f"[prep] --overwrite: removed the {removed} shards and the manifest of {out}'s earlier "
                     "preparation")
    theirs = prepared_with(out)
    differ = difference(theirs, mine) if theirs is not None else None
    if differ:
        raise UserError(f"--out {out} was prepared with {differ}: use another --out, or --overwrite to prepare it "
                        "anew")
    path = os.path.join(out, PREPARED_WITH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + f".{os.getpid()}", "w") as f:
        json.dump(mine, f, indent=1)
    os.replace(path + f".{os.getpid()}", path)


def clear(out: str) -> int:
    """Removes what prep writes in `out` (shards, sidecars, manifest, contact sheet); returns
    how many shards there were."""
    shard_files = [n for n in os.listdir(out) if SHARD_FILE.fullmatch(n)]
    for name in shard_files:
        os.remove(os.path.join(out, name))
    shutil.rmtree(os.path.join(out, ".stats"), ignore_errors=True)
    for name in ("manifest.json", "manifest.json.tmp", "contact_sheet.png"):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    return sum(not n.startswith(".tmp-") for n in shard_files)


def _stamp(source: str) -> list | None:
    """What tells a source file's content changed without reading it: its size and modification
    time (a folder's: its files'); None for an id that is no path (generated items)."""
    try:
        st = os.stat(source)
    except (OSError, ValueError):
        return None
    if not os.path.isdir(source):
        return [st.st_size, st.st_mtime_ns]
    return sorted([e.name, e.stat().st_size, e.stat().st_mtime_ns] for e in os.scandir(source) if e.is_file())


def shard_inputs(made: str, items: list[readers.Item]) -> str:
    """A digest of what a shard is made of: the preparation's dataset and options (`made`, as
    JSON) and its items in order, each its key, split, label, subject, kind, the reader's
    parameters and its source's size and modification time (`_stamp`)."""
    h = hashlib.sha256(made.encode())
    for it in items:
        h.update(json.dumps([it.key, it.split, it.label, it.subject, it.kind, repr(it.params),
                             _stamp(it.source)]).encode())
    return h.hexdigest()[:16]


def remove_stale(out: str, planned: set[str]) -> list[str]:
    """Removes the shards (finished or not, and their sidecars) of `out` that are not `planned`:
    an earlier preparation's, with another number of files per split or a split this one has
    not; returns the finished ones' names."""
    removed = []
    for name in sorted(os.listdir(out)):
        m = SHARD_FILE.fullmatch(name)
        if m and m.group(1) not in planned:
            os.remove(os.path.join(out, name))
            if not name.startswith(".tmp-"):
                removed.append(name)
                if os.path.exists(shards.stats_path(out, name)):
                    os.remove(shards.stats_path(out, name))
    return removed


def run(dataset: str, source: str | None, out: str, opts: PrepOptions = PrepOptions(),
        reader_options: dict | None = None, workers: int | None = None, shard_index: int = 0,
        num_shards: int = 1, overwrite: bool = False, splits: str | None = None) -> dict:
    """Prepares a dataset into `out` (brought up to date when it holds an earlier preparation
    of other items, refused when of other options, unless `overwrite`: module docstring);
    returns the manifest, which holds what the reader's optional `manifest_extras()` adds
    (LFW's pairs) besides the splits. `splits`: a protocol file (`fergate protocol export`)
    whose splits (and folds) the items go into (`data_prep.splits.assign`), recorded in the
    manifest's `protocol`."""
    if not 0 <= shard_index < num_shards:
        raise UserError(f"--shard_index {shard_index} must be in [0, --num_shards {num_shards})")
    if not 0 <= opts.test_fraction < 1:
        raise UserError(f"--test_fraction {opts.test_fraction}: must be in [0, 1)")
    if opts.face.illumination not in ("none", "diffusion"):
        raise UserError(f"--illumination {opts.face.illumination!r}: none or diffusion")
    detector = detectors.get(opts.face.detector)  # an unknown name: one line naming the choices
    if opts.face.align not in F.ALIGNMENTS:
        raise UserError(f"--align {opts.face.align!r}: one of {', '.join(F.ALIGNMENTS)}")
    if not 0 < opts.face.face_scale <= 4:
        raise UserError(f"--face_scale {opts.face.face_scale}: expected a number in (0, 4] (1: the template's size)")
    if opts.face.illumination != "none" and opts.face.color:
        raise UserError("--illumination diffusion normalises grey faces: add --grey")
    for name in ("frames", "min_faces", "max_frames", "clip_size"):
        if getattr(opts, name) < 1:
            raise UserError(f"--{name} {getattr(opts, name)}: must be at least 1")
    if opts.max_gap < 0:
        raise UserError(f"--max_gap {opts.max_gap}: must be at least 0")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a directory")
    reader_options = reader_options or {}
    rdr = make_reader(dataset, source, reader_options, opts)
    proto = protocol.read(splits) if splits else None
    items = assign(rdr.items(), proto["splits"], splits) if proto else hold_out(rdr.items(), opts.test_fraction)
    files = plan(items, opts.records_per_file, num_shards)
    os.makedirs(out, exist_ok=True)
    mine = json.loads(json.dumps({"dataset": dataset, "options": {**dataclasses.asdict(opts),
                                                                  "reader": reader_options}}))
    claim(out, mine, overwrite, num_shards)
    made = json.dumps({**mine, "options": shards.digested_options(mine["options"])}, sort_keys=True)
    inputs = {shards.shard_name(split, f, len(fl)): shard_inputs(made, its)
              for split, fl in files.items() for f, its in enumerate(fl)}
    stale = remove_stale(out, set(inputs))
    if stale:
        log.info(f"[prep] removed {len(stale)} shards of an earlier preparation of {out} that this one has no place "
                 f"for (items added or removed since): {', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}")
    ours = [(shards.shard_name(split, f, len(fl)), its) for split, fl in files.items() for f, its in enumerate(fl)
            if f % num_shards == shard_index]
    todo = [(name, its) for name, its in ours if not shards.shard_done(out, name, inputs[name])]
    redo = [name for name, _ in todo if shards.shard_done(out, name)]
    for name in redo:  # gone first: a run killed while redoing one never leaves its old file beside a new sidecar
        os.remove(os.path.join(out, name))
        os.remove(shards.stats_path(out, name))
    if redo:
        log.info(f"[prep] {len(redo)} finished shards of {out} were made of other items (added, replaced or removed "
                 "since): they are redone")
    n_todo = sum(len(its) for _, its in todo)
    n_mine = sum(len(its) for _, its in ours)
    log.info(f"[prep] {dataset}: {len(items):,} items -> {sum(map(len, files.values())):,} shards; "
        f"this machine ({shard_index}/{num_shards}): {n_todo:,} of {n_mine:,} items left to do")
    flat = [it for _, its in todo for it in its]
    check_space(out, flat, opts, len(todo))
    workers = workers or os.cpu_count() or 1
    init = (dataset, source, reader_options, opts)
    pool = None
    if workers > 1 and len(flat) > 1:
        saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))  # inherited by the spawned workers
        try:
            pool = mp.get_context("spawn").Pool(workers, _init_worker, init)
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        results = pool.imap(process_item, flat, chunksize=2)
    else:
        _init_worker(*init)
        results = map(process_item, flat)
    # in this process, one BLAS thread as in the workers: the face pipeline's small linear
    # algebra only loses to threads that spin, and loses 100x when another job holds the cores
    blas = threadpoolctl.threadpool_limits(1) if pool is None else contextlib.nullcontext()
    t0, done, counts, last_log = time.time(), 0, Counter(), 0.0
    first = None  # (time, items done) at the first progress line: the rate is measured from there on
    try:
        for name, its in todo:
            w = shards.ShardWriter(out, name, inputs[name])
            for it in its:
                data, reason = next(results)
                if data is None:
                    w.skip(it.key, reason)
                    counts["skipped"] += 1
                else:
                    w.write(data, it.label, it.subject)
                    counts["records"] += 1
                done += 1
                if time.time() - last_log > 5 or done == n_todo:
                    last_log = time.time()
                    log.info(f"[prep] {done:,}/{n_todo:,} items, {_rate(first, done, n_todo, t0)}, "
                             f"{counts['skipped']:,} skipped")
                    first = first or (last_log, done)
            w.close()
    finally:
        blas.__exit__(None, None, None)
        if pool is not None:
            pool.terminate()
    info = {"dataset": dataset, "source": source, "classes": list(rdr.classes),
            "options": {**dataclasses.asdict(opts), "reader": reader_options},
            "detector": f"{detector.name}: {detector.about} (upsample {opts.face.upsample}, min confidence "
                        f"{opts.face.min_score:g}; false positives rejected, then a strong detection (>= "
                        f"{detector.strong:g}) before a weak one, then the largest)",
            "landmark_model": f"dlib {F.LANDMARK_MODEL} (face-recognition-models)",
            "identity_model": f"dlib {F.IDENTITY_MODEL}" if opts.face.identity else None,
            **(rdr.manifest_extras() if hasattr(rdr, "manifest_extras") else {}),
            **({"protocol": {"file": os.path.abspath(splits), "digest": proto["digest"]}} if proto else {})}
    manifest = shards.write_manifest(out, {s: len(fl) for s, fl in files.items()}, info,
                                     (proto["folds"] or None) if proto else None)
    if manifest["complete"] and "train" in manifest["splits"]:
        contact_sheet(out, "train", list(rdr.classes), os.path.join(out, "contact_sheet.png"))
    if manifest["complete"] and (lacking := missing_classes(manifest)):
        log.warning(f"[prep] {lacking} (accuracy on such a split says nothing of those classes)")
    summary = ", ".join(f"{s}: {v['records']:,}" for s, v in manifest["splits"].items())
    pending = "" if manifest["complete"] else f"; {manifest['missing_shards']} shards left to other machines"
    log.info(f"[prep] wrote {out}: {summary}; skipped {manifest['skipped'] or 'none'}{pending}")
    return manifest


#: bytes a record holds besides its arrays: landmarks, identity embedding, key and header
RECORD_OVERHEAD = 4096
#: bytes an ArrayRecord file may take besides its records: riegeli pads to its 64 KiB blocks,
#: then the footer's index
SHARD_OVERHEAD = 68 * 1024


def space_needed(items: Sequence[readers.Item], opts: PrepOptions, shards: int = 1) -> int:
    """About how many bytes the records of `items` take in `shards` files, every item giving
    one (an upper bound: skipped items write nothing): a face crop (and its patch stack), or
    a clip of `frames` aligned frames and their landmarks; PNG (`compress`) about 60% of it."""
    size = opts.face.face_size
    w, h = (size, size) if isinstance(size, int) else size
    channels = 3 if opts.face.color else 1
    face = w * h * channels + (68 * opts.face.patch_size ** 2 if opts.face.patches else 0)
    clip = opts.frames * (opts.clip_size ** 2 * 3 + 68 * 2 * 4)
    total = sum((clip if it.kind == "clip" else face if it.kind == "image" else 0) + RECORD_OVERHEAD for it in items)
    return int(total * (0.6 if opts.compress else 1.0)) + shards * SHARD_OVERHEAD


def check_space(out: str, items: Sequence[readers.Item], opts: PrepOptions, shards: int) -> None:
    """Refuses, before any work, a preparation whose records cannot fit on `out`'s device:
    a full disk hours into a prep would be found at the end otherwise."""
    needed, free = space_needed(items, opts, shards), free_bytes(out)
    if free is not None and needed > free:
        raise UserError(f"--out {out}: its {len(items):,} items need about {human(needed)}, its device has "
                        f"{human(free)} free: free space or choose another --out")


def _rate(first: tuple[float, int] | None, done: int, total: int, t0: float) -> str:
    """The progress line's rate and ETA, measured from the `first` line (time, items done) on:
    the first results wait for the workers to start (seconds of imports and model loading), so
    a rate over them promised hours for minutes. At the first line, the start-up time only."""
    now = time.time()
    if first is None or done <= first[1]:
        return f"first results after {now - t0:.1f}s"
    rate = (done - first[1]) / max(now - first[0], 1e-9)
    left = total - done
    return f"{rate:,.1f} items/s" + (f", ETA {_duration(left / rate)}" if left else f", {_duration(now - t0)} in all")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def missing_classes(manifest: dict) -> str:
    """What classes the splits of a manifest have no record of ("" if none): those no split
    has, then per split the others it lacks, e.g. "test lacks displeased, surprise"."""
    splits = {s: {c for c, k in v["per_class"].items() if not k} for s, v in manifest["splits"].items()}
    nowhere = set.intersection(*splits.values()) if splits else set()
    parts = [f"no split has {', '.join(c for c in manifest['classes'] if c in nowhere)}"] if nowhere else []
    parts += [f"{s} lacks {', '.join(c for c in manifest['classes'] if c in cs - nowhere)}"
              for s, cs in splits.items() if cs - nowhere]
    return "; ".join(parts)


def builtin(dataset: str, options: dict) -> str:
    """The directory of a built-in dataset (`sample`, THIN's synthetic sets) prepared with
    `options` in the cache (those of FaceOptions, e.g. face_size "125x160", color, and of
    PrepOptions, e.g. clip_size, frames, go there, the rest to the reader), prepared here
    first if absent: under a file lock, so that concurrent runs (tests, the processes of one
    job) prepare it once."""
    out = builtin_dir(dataset, options)
    face_fields = {f.name for f in dataclasses.fields(F.FaceOptions)}
    prep_fields = {f.name for f in dataclasses.fields(PrepOptions)} - {"face"}
    face = {k: F.parse_size(v) if k == "face_size" else v for k, v in options.items() if k in face_fields}
    prep = {k: v for k, v in options.items() if k in prep_fields}
    reader = {k: v for k, v in options.items() if k not in face_fields | prep_fields}
    # a misspelled key: a one-line error before anything is prepared
    readers.options(dataset, reader, "data.prep_options (face, prep or reader options): ")
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):
        return out
    os.makedirs(cache_root(), exist_ok=True)
    with open(out + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(manifest):
            log.info(f"[data] preparing the built-in {dataset} dataset into {out} (once)")
            if not run(dataset, None, out, PrepOptions(face=F.FaceOptions(**face), **prep), reader)["complete"]:
                raise UserError(f"preparing the {dataset} dataset into {out} did not complete")
    return out
