"""Dataset readers: each lists its items (cheap, deterministic) and loads one item's pixels.

A reader is a class with `classes`, `items() -> list[Item]` and `load(item)`, returning an
RGB image (or a `face.FaceInput`: the image with the dataset's face box or landmarks, or
marked a pre-aligned crop), or a list of frames for a clip item; an optional
`manifest_extras() -> dict` adds entries to the manifest (LFW's pairs). Its classes come
from `fergate.data.labels.DATASET_CLASSES` unless the data names them (folder, csv, lfw).
Readers never run the face pipeline; `data_prep.prep` does, in worker processes, which make
their own reader: whatever `load` needs is set up in `__init__`. A missing or wrongly laid
out source is a one-line UserError naming the path and the expected layout when the reader
is made; a malformed label line, a label out of range or a missing file is a "bad" item
(`bad_item`) and an item that cannot be read raises SkipItem in `load`: both are skipped
and counted in the manifest by reason, never fatal.
"""

from __future__ import annotations

import csv
import functools
import glob
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from xml.etree import ElementTree

import numpy as np

from data_prep import sample as S
from data_prep import synthetic
from fergate import face as F
from fergate import video
from fergate.data import compound as compound_labels
from fergate.data.labels import DATASET_CLASSES, canonical
from fergate.errors import UserError

log = logging.getLogger(__name__)

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


class SampleReader:
    """The built-in synthetic set (data_prep.sample): `size` images and `clips` clips spread
    evenly over classes and subjects. `test_subjects` subjects form the test split: every
    k-th of the names in reverse sorted order (k = #subjects // test_subjects), i.e.
    grace_hopper when only the two photos of scikit-image and matplotlib are there.
    `compound`: the 50 compound classes of iCV-MEFED (fergate.data.compound) instead of the
    7 basic expressions, each a blend of two (the dominant stronger)."""

    def __init__(self, source: str | None = None, size: int = 2800, clips: int = 140, frames: int = 16,
                 test_subjects: int = 3, seed: int = 0, compound: bool = False, **_):
        try:
            sources = S.sample_photos(source)
        except FileNotFoundError as e:
            raise UserError(str(e)) from None
        if not sources:
            raise UserError(f"no face photos found{' in ' + source if source else ''} for the sample dataset")
        self.classes = compound_labels.CLASSES if compound else S.CLASSES
        self.compound = compound
        self.size, self.clips, self.frames, self.seed = size, clips, frames, seed
        self.subjects: dict[str, list[tuple[str, int]]] = {}
        for name, path, index in sources:
            self.subjects.setdefault(name, []).append((path, index))
        names = sorted(self.subjects, reverse=True)
        count = min(test_subjects, len(names) - 1)
        self.test = set(names[:: max(1, len(names) // count)][:count]) if count > 0 else set()

    def _items(self, n: int, kind: str) -> list[Item]:
        out, names = [], sorted(self.subjects)
        for i in range(n):
            label = i % len(self.classes)
            name = names[(i // len(self.classes)) % len(names)]
            path, index = self.subjects[name][(i // (len(self.classes) * len(names))) % len(self.subjects[name])]
            rng = np.random.default_rng([self.seed, i, kind == "clip"])
            intensity = 0.0 if label == 0 else float(rng.uniform(0.6, 1.4))
            split = ("test" if name in self.test else "train") + ("_clips" if kind == "clip" else "")
            out.append(Item(f"{kind}{i:07d}", split, label, name, path, kind,
                            (self.expression(label), intensity, int(rng.integers(2**31)), index)))
        return out

    def expression(self, label: int) -> str | tuple[str, str]:
        """The sample generator's expression of a class: its name, or a compound class's
        (complementary, dominant) pair."""
        if not self.compound:
            return self.classes[label]
        pair = compound_labels.compound_pair(label)
        if pair is None:
            return "neutral"
        return tuple(S.COMPOUND_EXPRESSIONS[compound_labels.EMOTIONS[e - 1]] for e in pair)

    def items(self) -> list[Item]:
        return self._items(self.size, "image") + self._items(self.clips, "clip")

    @staticmethod
    @functools.cache
    def _subject(name: str, path: str, index: int) -> S.Subject:
        return S.Subject(name, path, index)

    def load(self, item: Item):
        expression, intensity, seed, index = item.params
        subject = self._subject(item.subject, item.source, index)
        rng = np.random.default_rng(seed)
        if item.kind == "clip":
            return S.clip_frames(subject, expression, intensity, self.frames, rng)
        return S.synthesize(subject, expression, intensity, rng)


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


def bad_item(key: str, split: str, source: str, reason: str, detail: str = "") -> Item:
    """An item the reader found unusable (a malformed line, a label out of range, a missing
    file): skipped when loaded, counted in the manifest under `reason`."""
    return Item(key, split, 0, "", source, "bad", (reason, detail))


def text_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of the non-blank lines of a text file, undecodable bytes replaced
    (a label file's one bad byte must not stop the run)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, line.lstrip("\ufeff")


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


class LayoutReader:
    """What the readers of a dataset's official layout share: ROOT checked, the parts of the
    layout found (`find`) or a one-line UserError naming the path and the expected `layout`,
    and `load` raising a bad item's SkipItem before `load_item` reads a good one."""

    name = ""
    layout = ""

    def __init__(self, source: str | None = None, **_):
        if not source:
            raise UserError(f"--dataset {self.name} needs ROOT: {self.layout}")
        if not os.path.exists(source):
            raise self.error("ROOT not found", source)
        self.source = source

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

    def load(self, item: Item):
        if item.kind == "bad":
            raise F.SkipItem(*item.params)
        return self.load_item(item)

    def load_item(self, item: Item):
        return F.load_image(item.source)


class FolderReader:
    """One sub-folder per class (`SOURCE/<class>/*.jpg`), or `SOURCE/<split>/<class>/...`
    when SOURCE holds `train/` and `test/`. Each file is its own subject unless its name has
    a `<subject>__` prefix."""

    def __init__(self, source: str | None = None, **_):
        if not source:
            raise UserError("--dataset folder needs a SOURCE folder")
        if not os.path.isdir(source):
            raise UserError(f"source folder not found: {source}")
        self.roots, self.classes = class_layout(source)
        if not self.classes:
            raise UserError(f"no class sub-folders in {source}")

    def items(self) -> list[Item]:
        out = []
        for split, root in sorted(self.roots.items()):
            for label, c in enumerate(self.classes):
                d = os.path.join(root, c)
                for fname in sorted(os.listdir(d)) if os.path.isdir(d) else ():
                    path = os.path.join(d, fname)
                    if os.path.isdir(path):
                        continue
                    out.append(Item(f"{split}/{c}/{fname}", split, label, subject_of(os.path.splitext(fname)[0]),
                                    path))
        return out

    def load(self, item: Item):
        return F.load_image(item.source)


class VideoFolderReader(LayoutReader):
    """Clips in one sub-folder per class: `ROOT/<class>/<clip>`, or `ROOT/<split>/<class>/...`
    when ROOT holds `train/` or `test/`; a clip is a video file (`video.VIDEO_EXTS`) or a
    folder of frame images (CK+ / MMI style, natural name order); other files are ignored.
    Each clip is its own subject unless its name has a `<subject>__` prefix. At most
    `max_frames` frames of a clip are read, evenly spaced (`data_prep.video`); an unreadable,
    empty or faceless clip is skipped and counted by reason."""

    name = "video_folder"
    layout = "ROOT/<class>/<video file or folder of frames>, or ROOT/{train,test}/<class>/..."

    def __init__(self, source: str | None = None, max_frames: int = video.MAX_FRAMES, **_):
        super().__init__(source)
        if not os.path.isdir(source):
            raise self.error("ROOT is not a folder", source)
        self.max_frames = max_frames
        self.roots, self.classes = self.find_layout(source)

    def find_layout(self, source: str) -> tuple[dict[str, str], tuple[str, ...]]:
        roots, classes = class_layout(source)
        if not classes:
            raise self.error("no class folders", source)
        return roots, classes

    def items(self) -> list[Item]:
        out = []
        for split, root in sorted(self.roots.items()):
            folders = subfolders(root)
            for label, c in enumerate(self.classes):
                d = os.path.join(root, c if os.path.isdir(os.path.join(root, c)) else folders.get(c.lower(), c))
                for name in sorted(os.listdir(d), key=video.natural_key) if os.path.isdir(d) else ():
                    path = os.path.join(d, name)
                    if os.path.isdir(path) or name.lower().endswith(video.VIDEO_EXTS):
                        out.append(Item(os.path.relpath(path, self.source), split, label,
                                        subject_of(os.path.splitext(name)[0]), path, "clip"))
        if not out:
            raise self.error(f"no video ({', '.join(video.VIDEO_EXTS)}) or frame folder in the class folders",
                             self.source)
        return out

    def load_item(self, item: Item) -> list[np.ndarray]:
        return video.read_clip(item.source, self.max_frames)


class AfewReader(VideoFolderReader):
    """AFEW (Acted Facial Expressions in the Wild: film excerpts): `ROOT/Train/<Emotion>/*.avi`
    and `ROOT/Val/<Emotion>/*.avi` (folder names in any case, `Train_AFEW` / `Val_AFEW` too),
    the 7 emotion folders spelled as AFEW does. Val is the test split: AFEW's own test set
    has no public labels, and the papers report Val. AFEW names no actor, so each video is
    its own subject; other folders (AFEW's unlabelled Test) are ignored."""

    name = "afew"
    classes = DATASET_CLASSES["afew"]
    splits = {"train": ("train", "train_afew"), "test": ("val", "val_afew")}
    layout = "ROOT/Train/<Emotion>/*.avi and ROOT/Val/<Emotion>/*.avi, Emotion one of " + ", ".join(classes)

    def find_layout(self, source: str) -> tuple[dict[str, str], tuple[str, ...]]:
        top = subfolders(source)
        roots = {split: os.path.join(source, top[n]) for split, names in self.splits.items()
                 for n in names if n in top}
        known = {c.lower() for c in self.classes}
        if not any(known & set(subfolders(r)) for r in roots.values()):
            raise self.error("no Train/ or Val/ folder of emotion folders", source)
        for r in roots.values():
            if extra := sorted(n for k, n in subfolders(r).items() if k not in known):
                log.info(f"[prep] afew: {r}: {', '.join(extra)} not one of AFEW's 7 emotions: ignored")
        return roots, self.classes


class IcvMefedReader:
    """iCV-MEFED (the micro-emotion challenge's dataset): flat folders of
    `Sample_<subject>_<idx>.JPG` photos anywhere under SOURCE, and label files (`*.txt` in
    SOURCE) of lines `NAME<TAB>c_d` (`N_N`: neutral) mapped to the 50 compound classes
    (fergate.data.compound). A label file's name gives its items' split: one naming `test`
    is the test split, one naming `valid` (and not `train`) `val`, any other `train`. A line
    that does not parse, a name labelled twice and a labelled photo that is not there become
    skipped items, counted in the manifest by reason."""

    classes = DATASET_CLASSES["icv_mefed"]

    def __init__(self, source: str | None = None, **_):
        if not source:
            raise UserError("--dataset icv_mefed needs SOURCE: the folder of the photos and label files")
        if not os.path.isdir(source):
            raise UserError(f"--dataset icv_mefed: source folder not found: {source}")
        self.source = source
        self.label_files = sorted(os.path.join(source, f) for f in os.listdir(source) if f.lower().endswith(".txt"))
        if not self.label_files:
            raise UserError(f"no label files (*.txt of NAME<TAB>c_d lines) in {source}")

    @staticmethod
    def split_of(label_file: str) -> str:
        name = os.path.basename(label_file).lower()
        return "test" if "test" in name else "val" if "valid" in name and "train" not in name else "train"

    @staticmethod
    def subject_of(name: str) -> str:
        parts = os.path.splitext(name)[0].split("_")
        return parts[1] if len(parts) >= 3 and parts[0].lower() == "sample" else os.path.splitext(name)[0]

    def items(self) -> list[Item]:
        photos = {}
        for root, _, files in os.walk(self.source):
            for f in files:
                if f.lower().endswith(F.IMAGE_EXTS):
                    photos.setdefault(f, os.path.join(root, f))
        out, seen = [], set()
        for path in self.label_files:
            split, rows = self.split_of(path), []
            with open(path, encoding="utf-8", errors="replace") as fh:
                for number, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    key, parts = f"{os.path.basename(path)}:{number}", line.split()
                    try:
                        if len(parts) != 2:
                            raise ValueError(f"{len(parts)} fields, expected NAME and c_d")
                        rows.append((key, parts[0], compound_labels.parse_label(parts[1])))
                    except ValueError as e:
                        rows.append((key, None, str(e)))
            if not any(name for _, name, _ in rows):  # a list of names (order_of_test.txt), a readme
                log.info(f"[prep] icv_mefed: {path} has no NAME<TAB>c_d line: not a label file, ignored")
                continue
            for key, name, label in rows:
                if name is None:
                    out.append(bad_item(key, split, path, "malformed_label", f"{key}: {label}"))
                    continue
                problem = ("duplicate_label", f"{name} is labelled earlier") if name in seen else \
                    ("missing_file", f"no photo {name} under {self.source}") if name not in photos else ()
                seen.add(name)
                out.append(bad_item(f"{key} {name}", split, photos.get(name, path), *problem) if problem else
                           Item(name, split, label, self.subject_of(name), photos[name]))
        if not any(it.kind == "image" for it in out):
            raise UserError(f"no labelled photo found under {self.source} (label files: "
                            f"{', '.join(os.path.basename(p) for p in self.label_files)})")
        return out

    def load(self, item: Item):
        if item.kind == "bad":
            raise F.SkipItem(*item.params)
        return F.load_image(item.source)


class CkPlusReader(LayoutReader):
    """CK+ (the extended Cohn-Kanade set): frames `ROOT/cohn-kanade-images/S005/001/
    S005_001_00000011.png`, labels `ROOT/Emotion/S005/001/S005_001_00000011_emotion.txt` (one
    float, `3.0000000e+00`: 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy,
    6 sadness, 7 surprise), and where present `ROOT/Landmarks/S005/001/
    S005_001_00000011_landmarks.txt` (68 lines `x y`), used instead of dlib's detection and
    fit (box_source 1). Only the labelled sequences (327 of 593) are read. Each gives its
    last `apex_frames` frames (the apex, labelled with its emotion), its first
    `neutral_frames` frames as neutral (MoDuL: 3 and 3; 0: none) and, with `sequences`, the
    whole sequence as one clip (`train_clips`, for the video models); `contempt=False` drops
    the contempt sequences (7 classes). Subject = S005. CK+ has no split: prep's
    --test_fraction holds subjects out, and the manifest's `folds` are the papers'
    subject-independent folds."""

    name = "ckplus"
    layout = ("ROOT/cohn-kanade-images/S005/001/S005_001_00000011.png and "
              "ROOT/Emotion/S005/001/S005_001_00000011_emotion.txt (ROOT/Landmarks/... optional)")

    def __init__(self, source: str | None = None, apex_frames: int = 3, neutral_frames: int = 3,
                 contempt: bool = True, sequences: bool = True, max_frames: int = video.MAX_FRAMES, **_):
        super().__init__(source)
        if apex_frames < 1 or neutral_frames < 0:
            raise UserError(f"--apex_frames {apex_frames} / --neutral_frames {neutral_frames}: at least 1 / 0")
        self.images, self.emotions = self.find("cohn-kanade-images"), self.find("Emotion")
        self.landmarks = child(self.source, "Landmarks")
        self.apex, self.neutral, self.sequences, self.max_frames = apex_frames, neutral_frames, sequences, max_frames
        self.classes = tuple(c for c in DATASET_CLASSES["ckplus"] if contempt or c != "contempt")

    def items(self) -> list[Item]:
        out, all_classes = [], DATASET_CLASSES["ckplus"]
        for path in sorted(glob.glob(os.path.join(glob.escape(self.emotions), "*", "*", "*_emotion.txt"))):
            subject, seq = path.split(os.sep)[-3:-1]
            key = f"{subject}/{seq}"
            value = read_numbers(path, 1)
            if value is None or value[0] != round(float(value[0])):
                out.append(bad_item(key, "train", path, "malformed_label", f"{path}: not one whole number"))
                continue
            code = int(value[0])
            if not 0 <= code < len(all_classes):
                out.append(bad_item(key, "train", path, "label_out_of_range", f"{path}: {code} not in 0-7"))
                continue
            if all_classes[code] not in self.classes:
                out.append(bad_item(key, "train", path, f"excluded:{all_classes[code]}"))
                continue
            folder = os.path.join(self.images, subject, seq)
            frames = video.frame_names(folder)
            if not frames:
                out.append(bad_item(key, "train", path, "missing_file", f"no frames in {folder}"))
                continue
            label = self.classes.index(all_classes[code])
            neutral = frames[: max(0, min(self.neutral, len(frames) - self.apex))]
            for name, y in [(n, self.classes.index("neutral")) for n in neutral] + \
                           [(n, label) for n in frames[-self.apex:]]:
                out.append(Item(f"{key}/{name}", "train", y, subject, os.path.join(folder, name)))
            if self.sequences:
                out.append(Item(key, "train_clips", label, subject, folder, "clip"))
        if not any(it.kind != "bad" for it in out):
            raise self.error("no labelled sequence with frames", self.emotions)
        return out

    def face(self, frame: str) -> F.FaceInput:
        """A frame with the landmarks of its Landmarks file, where it has one that parses."""
        lm = None
        if self.landmarks:
            subject, seq, name = frame.split(os.sep)[-3:]
            lm = points(read_numbers(os.path.join(self.landmarks, subject, seq,
                                                  os.path.splitext(name)[0] + "_landmarks.txt"), 136))
        return F.FaceInput(F.load_image(frame), landmarks=lm)

    def load_item(self, item: Item):
        if item.kind == "clip":
            names = video.frame_names(item.source)
            return [self.face(os.path.join(item.source, names[j]))
                    for j in video.even_indices(len(names), self.max_frames)]
        return self.face(item.source)


class RafDbReader(LayoutReader):
    """RAF-DB (basic emotions): `ROOT/basic/EmoLabel/list_patition_label.txt` of lines
    `train_00001.jpg 5` (1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger,
    7 neutral; the split is the name's prefix, train or test) and the aligned 100 x 100 faces
    `ROOT/basic/Image/aligned/train_00001_aligned.jpg`: pre-aligned crops, fitted as a whole
    when the detector misses them (box_source 2). `original`: the photos
    `ROOT/basic/Image/original/train_00001.jpg` instead, in the face box of
    `ROOT/basic/Annotation/boundingbox/train_00001_boundingbox.txt` (`x0 y0 x1 y1`) where
    there (box_source 1), else detected. ROOT may be the `basic` folder itself. RAF-DB names
    no person: every image is its own subject."""

    name = "rafdb"
    layout = ("ROOT/basic/EmoLabel/list_patition_label.txt (lines `train_00001.jpg 5`) and "
              "ROOT/basic/Image/aligned/train_00001_aligned.jpg (--original: ROOT/basic/Image/original/)")
    classes = DATASET_CLASSES["rafdb"]

    def __init__(self, source: str | None = None, original: bool = False, **_):
        super().__init__(source)
        basic = child(self.source, "basic") or self.source
        self.label_file = self.find("EmoLabel", "list_patition_label.txt", folder=False, base=basic)
        self.image_dir = self.find("Image", "original" if original else "aligned", base=basic)
        self.box_dir = child(child(basic, "Annotation") or "", "boundingbox")
        self.original = original

    def items(self) -> list[Item]:
        out = []
        for number, line in text_lines(self.label_file):
            key, parts = f"list_patition_label.txt:{number}", line.split()
            split = parts[0].split("_")[0].lower() if parts else ""
            if len(parts) != 2 or not parts[1].isdigit() or split not in ("train", "test"):
                out.append(bad_item(key, "train", self.label_file, "malformed_label", f"{key}: {line.strip()!r}"))
                continue
            name, code = parts[0], int(parts[1])
            if not 1 <= code <= len(self.classes):
                out.append(bad_item(key, split, self.label_file, "label_out_of_range", f"{key}: {code} not in 1-7"))
                continue
            stem = os.path.splitext(name)[0]
            path = os.path.join(self.image_dir, name if self.original else f"{stem}_aligned.jpg")
            if not os.path.isfile(path):
                out.append(bad_item(f"{key} {name}", split, path, "missing_file", f"no {path}"))
                continue
            out.append(Item(stem, split, code - 1, stem, path))
        return out

    def load_item(self, item: Item) -> F.FaceInput:
        img = F.load_image(item.source)
        if not self.original:
            return F.FaceInput(img, crop=True)
        box = read_numbers(os.path.join(self.box_dir, f"{item.key}_boundingbox.txt"), 4) if self.box_dir else None
        return F.FaceInput(img, box=None if box is None else tuple(box))


class AffectNetReader(LayoutReader):
    """AffectNet's manually annotated part: `ROOT/Manually_Annotated_file_lists/training.csv`
    (train) and `validation.csv` (test: AffectNet's test set is not public), header
    `subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,
    valence,arousal` (without one the columns are taken in this order), images
    `ROOT/Manually_Annotated_Images/<subDirectory_filePath>`. expression: 0 neutral, 1 happy,
    2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt (kept with `contempt`), 8 none,
    9 uncertain, 10 non-face (skipped, counted as `excluded:<name>`). The given face box and
    68 landmarks (`x;y;x;y...`) replace dlib's (box_source 1). AffectNet names no person:
    every image is its own subject."""

    name = "affectnet"
    layout = ("ROOT/Manually_Annotated_file_lists/{training,validation}.csv and "
              "ROOT/Manually_Annotated_Images/<subDirectory_filePath>")
    COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
               "expression", "valence", "arousal")
    #: the codes past the 8 expressions
    EXCLUDED = {8: "none", 9: "uncertain", 10: "non_face"}

    def __init__(self, source: str | None = None, contempt: bool = False, **_):
        super().__init__(source)
        lists = self.find("Manually_Annotated_file_lists")
        self.image_dir = self.find("Manually_Annotated_Images")
        files = {split: child(lists, name, folder=False) for split, name in
                 (("train", "training.csv"), ("test", "validation.csv"))}
        self.files = {split: path for split, path in files.items() if path}
        if not self.files:
            raise self.error("no training.csv or validation.csv", lists)
        #: each list's column indices by name: its header's, else `COLUMNS` in order
        self.columns = {path: self.header(path) or {c: i for i, c in enumerate(self.COLUMNS)}
                        for path in self.files.values()}
        self.classes = DATASET_CLASSES["affectnet"][: 8 if contempt else 7]

    @classmethod
    def header(cls, path: str) -> dict[str, int] | None:
        first = next(csv_rows(path), (0, 0, []))[2]
        names = [c.strip() for c in first]
        return {c: names.index(c) for c in cls.COLUMNS if c in names} if cls.COLUMNS[0] in names else None

    def items(self) -> list[Item]:
        out, names = [], DATASET_CLASSES["affectnet"]
        for split, path in self.files.items():
            col, header = self.columns[path], self.header(path) is not None
            for number, offset, row in csv_rows(path):
                if header and number == 1:
                    continue
                key = f"{os.path.basename(path)}:{number}"
                try:
                    rel, code = row[col["subDirectory_filePath"]].strip(), int(row[col["expression"]])
                except (IndexError, KeyError, ValueError):
                    out.append(bad_item(key, split, path, "malformed_label", f"{key}: {','.join(row)[:80]!r}"))
                    continue
                if code in self.EXCLUDED or (0 <= code < len(names) and names[code] not in self.classes):
                    out.append(bad_item(key, split, path, f"excluded:{self.EXCLUDED.get(code) or names[code]}"))
                elif not 0 <= code < len(names):
                    out.append(bad_item(key, split, path, "label_out_of_range", f"{key}: {code} not in 0-10"))
                elif not os.path.isfile(image := os.path.join(self.image_dir, rel)):
                    out.append(bad_item(f"{key} {rel}", split, image, "missing_file", f"no {image}"))
                else:
                    out.append(Item(rel, split, code, os.path.splitext(os.path.basename(rel))[0], image, "image",
                                    (path, offset)))
        return out

    def load_item(self, item: Item) -> F.FaceInput:
        path, offset = item.params
        row = csv_row_at(path, offset)
        cell = {name: row[i] for name, i in self.columns[path].items() if i < len(row)}
        xywh = numbers(" ".join(cell.get(c, "") for c in ("face_x", "face_y", "face_width", "face_height")), 4)
        box = None
        if xywh is not None and min(xywh[2:]) > 0:
            x, y, w, h = xywh.tolist()
            box = (x, y, x + w, y + h)
        return F.FaceInput(F.load_image(item.source), box=box,
                           landmarks=points(numbers(cell.get("facial_landmarks", ""), 136)))


class Fer2013Reader(LayoutReader):
    """FER-2013: `ROOT/fer2013.csv` (or SOURCE the file itself), header `emotion,pixels,Usage`
    (columns found by name), one row a face: emotion 0 angry, 1 disgust, 2 fear, 3 happy,
    4 sad, 5 surprise, 6 neutral; pixels 2304 space-separated grey levels (48 x 48); Usage
    Training -> train, PublicTest -> val, PrivateTest -> test. The faces are registered crops:
    fitted as a whole when the detector misses them, as it does at 48 px (box_source 2; not
    upscaled: `face.CROP_INSET`). FER-2013 names no person: every row is its own subject;
    a record's `source` is `fer2013.csv:<line>`."""

    name = "fer2013"
    layout = "ROOT/fer2013.csv (header emotion,pixels,Usage; a row's pixels: 48 x 48 grey levels)"
    classes = DATASET_CLASSES["fer2013"]
    USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
    SIDE = 48

    def __init__(self, source: str | None = None, **_):
        super().__init__(source)
        self.csv = self.source if os.path.isfile(self.source) else self.find("fer2013.csv", folder=False)
        names = [c.strip().lower() for c in next(csv_rows(self.csv), (0, 0, []))[2]]
        if not {"emotion", "pixels", "usage"} <= set(names):
            raise self.error("no emotion,pixels,Usage header", self.csv)
        self.col = {c: names.index(c) for c in ("emotion", "pixels", "usage")}

    def items(self) -> list[Item]:
        out, name = [], os.path.basename(self.csv)
        for number, offset, row in csv_rows(self.csv):
            if number == 1:
                continue
            key = f"{name}:{number}"
            try:
                code, usage = int(row[self.col["emotion"]]), row[self.col["usage"]].strip().lower()
                size = len(row[self.col["pixels"]].split())
            except (IndexError, ValueError):
                out.append(bad_item(key, "train", self.csv, "malformed_label", f"{key}: not emotion,pixels,Usage"))
                continue
            split = self.USAGE.get(usage, "train")
            if usage not in self.USAGE or size != self.SIDE**2:
                out.append(bad_item(key, split, self.csv, "malformed_label",
                                    f"{key}: Usage {usage!r}, {size} pixels (expected {self.SIDE**2})"))
            elif not 0 <= code < len(self.classes):
                out.append(bad_item(key, split, self.csv, "label_out_of_range", f"{key}: {code} not in 0-6"))
            else:
                out.append(Item(key, split, code, f"fer2013_{number}", f"{self.csv}:{number}", "image", (offset,)))
        return out

    def load_item(self, item: Item) -> F.FaceInput:
        pixels = numbers(csv_row_at(self.csv, item.params[0])[self.col["pixels"]], self.SIDE**2)
        if pixels is None or pixels.min() < 0 or pixels.max() > 255:
            raise F.SkipItem("malformed_label", f"{item.key}: pixels not {self.SIDE**2} grey levels")
        return F.FaceInput(F.to_rgb8(pixels.reshape(self.SIDE, self.SIDE).astype(np.uint8)), crop=True)


class SfewReader(LayoutReader):
    """SFEW 2.0 (static frames of AFEW's films): the aligned faces
    `ROOT/Train/Train_Aligned_Faces/<Emotion>/*.png` (train) and
    `ROOT/Val/Val_Aligned_Faces/<Emotion>/*.png` (test: SFEW's test labels are not public),
    the 7 emotion folders spelled as AFEW's (any case). Pre-aligned crops: fitted as a whole
    when the detector misses them (box_source 2). A file's subject is its name without the
    trailing `_<frame number>`: the frames of one film excerpt stay together."""

    name = "sfew"
    layout = "ROOT/Train/Train_Aligned_Faces/<Emotion>/*.png and ROOT/Val/Val_Aligned_Faces/<Emotion>/*.png"
    classes = DATASET_CLASSES["sfew"]
    SPLITS = {"train": "Train", "test": "Val"}

    def __init__(self, source: str | None = None, **_):
        super().__init__(source)
        self.roots = {}
        for split, top in self.SPLITS.items():
            folder = child(self.source, top) or ""
            if aligned := child(folder, f"{top}_Aligned_Faces"):
                self.roots[split] = aligned
        if not self.roots:
            raise self.error("no Train/Train_Aligned_Faces or Val/Val_Aligned_Faces", self.source)

    @staticmethod
    def subject_of(stem: str) -> str:
        head, _, tail = stem.rpartition("_")
        return head if head and tail.isdigit() else stem

    def items(self) -> list[Item]:
        out = []
        for split, root in self.roots.items():
            for label, c in enumerate(self.classes):
                folder = child(root, c)
                for name in sorted(os.listdir(folder)) if folder else ():
                    if name.lower().endswith(F.IMAGE_EXTS):
                        out.append(Item(f"{split}/{c}/{name}", split, label,
                                        self.subject_of(os.path.splitext(name)[0]), os.path.join(folder, name)))
        return out

    def load_item(self, item: Item) -> F.FaceInput:
        return F.FaceInput(F.load_image(item.source), crop=True)


class ExpwReader(LayoutReader):
    """ExpW (Expression in-the-Wild): `ROOT/label/label.lst` of lines `image_name face_id top
    left right bottom confidence label` (label 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad,
    5 surprise, 6 neutral) and the photos `ROOT/image/origin/<image_name>`. The given face box
    replaces detection (box_source 1; dlib fits the landmarks in it); a face whose box
    confidence is under `min_confidence` (the papers: 60) is skipped as `low_confidence`.
    ExpW has no split: prep's --test_fraction holds out photos (subject = the image name, so
    the faces of one photo stay together)."""

    name = "expw"
    layout = ("ROOT/label/label.lst (lines `image_name face_id top left right bottom confidence label`) and "
              "ROOT/image/origin/<image_name>")
    classes = DATASET_CLASSES["expw"]

    def __init__(self, source: str | None = None, min_confidence: float = 0.0, **_):
        super().__init__(source)
        self.label_file = self.find("label", "label.lst", folder=False)
        self.image_dir = self.find("image", "origin")
        self.min_confidence = min_confidence

    def items(self) -> list[Item]:
        out = []
        for number, line in text_lines(self.label_file):
            key, parts = f"label.lst:{number}", line.split()
            try:
                if len(parts) != 8:
                    raise ValueError(f"{len(parts)} fields")
                name, face, (top, left, right, bottom, conf), code = \
                    parts[0], int(parts[1]), map(float, parts[2:7]), int(parts[7])
                if right <= left or bottom <= top:
                    raise ValueError("an empty face box")
            except ValueError as e:
                out.append(bad_item(key, "train", self.label_file, "malformed_label", f"{key}: {e}"))
                continue
            path = os.path.join(self.image_dir, name)
            problem = ("label_out_of_range", f"{code} not in 0-6") if not 0 <= code < len(self.classes) else \
                ("low_confidence", f"{conf} < {self.min_confidence}") if conf < self.min_confidence else \
                ("missing_file", f"no {path}") if not os.path.isfile(path) else ()
            out.append(bad_item(f"{key} {name}", "train", path, *problem) if problem else
                       Item(f"{name}#{face}", "train", code, name, path, "image", ((left, top, right, bottom),)))
        return out

    def load_item(self, item: Item) -> F.FaceInput:
        return F.FaceInput(F.load_image(item.source), box=item.params[0])


class Bu4dfeReader(LayoutReader):
    """BU-4DFE's 2D frames: `ROOT/<F001|M001...>/<Angry|Disgust|Fear|Happy|Sad|Surprise>/`
    folders of frame images (.jpg / .png / .bmp, natural name order), each a clip
    (`train_clips`) labelled with its folder's expression; subject = F001. With
    `apex_frames` k > 0 the middle k frames of each sequence also become images (`train`):
    BU-4DFE's sequences go neutral -> apex -> neutral, so the apex is in the middle. No
    split: prep's --test_fraction holds subjects out."""

    name = "bu4dfe"
    layout = "ROOT/<F001|M001...>/<Angry|Disgust|Fear|Happy|Sad|Surprise>/<frame images>"
    classes = DATASET_CLASSES["bu4dfe"]
    SUBJECT = re.compile(r"[FM]\d+", re.IGNORECASE)

    def __init__(self, source: str | None = None, apex_frames: int = 0, max_frames: int = video.MAX_FRAMES, **_):
        super().__init__(source)
        self.subjects = [n for n in subfolders(self.source).values() if self.SUBJECT.fullmatch(n)]
        if not self.subjects:
            raise self.error("no subject folders (F001, M001...)", self.source)
        if apex_frames < 0:
            raise UserError(f"--apex_frames {apex_frames}: at least 0")
        self.apex, self.max_frames = apex_frames, max_frames

    def items(self) -> list[Item]:
        out = []
        for subject in self.subjects:
            for label, c in enumerate(self.classes):
                folder = child(os.path.join(self.source, subject), c)
                frames = video.frame_names(folder) if folder else []
                key = f"{subject}/{c}"
                if not frames:
                    if folder:
                        out.append(bad_item(key, "train_clips", folder, "missing_file", f"no frames in {folder}"))
                    continue
                out.append(Item(key, "train_clips", label, subject, folder, "clip"))
                start = max(0, (len(frames) - self.apex) // 2)
                out += [Item(f"{key}/{n}", "train", label, subject, os.path.join(folder, n))
                        for n in frames[start:start + self.apex]]
        return out

    def load_item(self, item: Item):
        return video.read_frame_folder(item.source, self.max_frames) if item.kind == "clip" else \
            F.load_image(item.source)


class MmiReader(LayoutReader):
    """The MMI Facial Expression Database's videos: `ROOT/Sessions/<n>/<S001-002>.avi` with the
    session's metadata `<S001-002>.xml` holding `<Metatag Name="Emotion" Value="1"/>` (1 anger,
    2 disgust, 3 fear, 4 happiness, 5 sadness, 6 surprise; the AU annotations `*-oao_aucs.xml`
    are not read). ROOT may be the Sessions folder itself. Each video is a clip
    (`train_clips`); a session without an Emotion value (most: AU-only recordings, image
    sessions) is skipped and counted as `no_emotion` (or `no_video`, `malformed_label`,
    `label_out_of_range`). Subject: the id of a `<subject id="..."/>` element or a Subject
    metatag of the session's XML files (session.xml), else the `S001` of the video's name
    (MMI numbers subjects so), else the session. No split: prep's --test_fraction holds
    subjects out."""

    name = "mmi"
    layout = "ROOT/Sessions/<n>/S001-002.avi with its metadata S001-002.xml (<Metatag Name=\"Emotion\" Value=\"1-6\"/>)"
    classes = DATASET_CLASSES["mmi"]
    SUBJECT = re.compile(r"(S\d+)[-_]", re.IGNORECASE)

    def __init__(self, source: str | None = None, max_frames: int = video.MAX_FRAMES, **_):
        super().__init__(source)
        named = os.path.basename(os.path.normpath(self.source)).lower() == "sessions"
        self.sessions = self.source if named and os.path.isdir(self.source) else self.find("Sessions")
        self.max_frames = max_frames

    @staticmethod
    def metadata(paths: list[str]) -> tuple[str | None, str | None, str]:
        """(Emotion value, subject id, the first unparsable file) of a session's XML files."""
        emotion = subject = None
        broken = ""
        for path in paths:
            try:
                root = ElementTree.parse(path).getroot()
            except (ElementTree.ParseError, OSError):
                broken = broken or path
                continue
            for el in root.iter():
                tag, attrs = el.tag.lower(), {k.lower(): v for k, v in el.attrib.items()}
                name = attrs.get("name", "").lower()
                if tag == "metatag" and name == "emotion":
                    emotion = emotion or attrs.get("value")
                elif (tag == "subject" and attrs.get("id")) or (tag == "metatag" and name in ("subject", "subjectid")):
                    subject = subject or attrs.get("id") or attrs.get("value")
        return emotion, subject, broken

    def items(self) -> list[Item]:
        out = []
        names = sorted((n for n in os.listdir(self.sessions) if os.path.isdir(os.path.join(self.sessions, n))),
                       key=video.natural_key)
        for session in names:
            folder, key = os.path.join(self.sessions, session), f"Sessions/{session}"
            files = sorted(os.listdir(folder))
            videos = [f for f in files if f.lower().endswith(video.VIDEO_EXTS)]
            emotion, subject, broken = self.metadata(
                [os.path.join(folder, f) for f in files if f.lower().endswith(".xml") and "aucs" not in f.lower()])
            code = int(emotion) if emotion and emotion.strip().isdigit() else None
            problem = ("no_video", f"no video in {folder}") if not videos else \
                ("malformed_label", f"{broken} is not XML") if emotion is None and broken else \
                ("no_emotion", f"no Emotion metatag in {folder}") if emotion is None else \
                ("label_out_of_range", f"Emotion {emotion!r} not in 1-6") if code not in range(1, 7) else ()
            if problem:
                out.append(bad_item(key, "train_clips", folder, *problem))
                continue
            match = self.SUBJECT.match(videos[0])
            who = (f"S{int(subject):03d}" if subject.isdigit() else subject) if subject else \
                match.group(1).upper() if match else f"session{session}"
            out += [Item(f"{key}/{v}", "train_clips", code - 1, who, os.path.join(folder, v), "clip") for v in videos]
        if not names:
            raise self.error("no session folders", self.sessions)
        return out

    def load_item(self, item: Item) -> list[np.ndarray]:
        return video.read_clip(item.source, self.max_frames)


class LfwReader(LayoutReader):
    """LFW, for face verification: the photos `ROOT/lfw/<Name>/<Name>_0001.jpg` (or
    `lfw-deepfunneled/`, `lfw_funneled/`) and `ROOT/pairs.txt`, View 2: a line `10<TAB>300`,
    then 10 folds of 300 same-person lines `Name<TAB>n1<TAB>n2` and 300 different-person lines
    `Name1<TAB>n1<TAB>Name2<TAB>n2`; or a pairsDevTest.txt-style file (`pairs` names another
    file in ROOT) with one header line `N`: N same then N different lines, one fold. The
    items are the photos the pairs name: label = the person's index in the sorted names of
    those people (the classes), subject = the person, split `test`: LFW is a benchmark,
    never trained on (train on another dataset, then `fergate eval --pairs`). The manifest's
    `pairs` lists `[source_a, source_b, same, fold]`, each photo named by its records'
    `source`: its path relative to ROOT (`lfw/Name/Name_0001.jpg`); a pair whose photo has no
    record (missing, no face: counted as skipped) is left to the evaluator to drop."""

    name = "lfw"
    layout = "ROOT/lfw/<Name>/<Name>_0001.jpg and ROOT/pairs.txt (View 2: `10<TAB>300`, then the folds' pairs)"
    FOLDERS = ("lfw", "lfw-deepfunneled", "lfw_funneled", "lfw-funneled")

    def __init__(self, source: str | None = None, pairs: str | None = None, **_):
        super().__init__(source)
        folder = next((f for f in (child(self.source, n) for n in self.FOLDERS) if f), None)
        if folder is None:
            raise self.error("no lfw/ folder of <Name>/<Name>_0001.jpg", self.source)
        self.folder = os.path.basename(folder)
        self.pairs_file = child(self.source, *([pairs] if pairs else ["pairs.txt", "pairsDevTest.txt"]), folder=False)
        if self.pairs_file is None:
            raise self.error(f"no {pairs or 'pairs.txt'}", self.source)
        self.pairs, self.bad = self.read_pairs()
        self.classes = tuple(sorted({p.split("/")[1] for a, b, _, _ in self.pairs for p in (a, b)}))

    def read_pairs(self) -> tuple[list[list], list[Item]]:
        """([source_a, source_b, same, fold] of every well-formed line, bad items of the others)."""
        lines = list(text_lines(self.pairs_file))
        head = lines[0][1].split() if lines else []
        if not 1 <= len(head) <= 2 or not all(v.isdigit() for v in head) or int(head[-1]) < 1:
            raise self.error("the first line is not `folds<TAB>n` or `n`", self.pairs_file)
        per_fold, folds = 2 * int(head[-1]), int(head[0]) if len(head) == 2 else 1
        pairs, bad, name = [], [], os.path.basename(self.pairs_file)
        for i, (number, line) in enumerate(lines[1:]):
            parts = line.split()
            # same person: Name n1 n2; different people: Name1 n1 Name2 n2
            ab = {3: (parts[:2], [parts[0], parts[-1]]), 4: (parts[:2], parts[2:])}.get(len(parts))
            if ab is None or not all(n.isdigit() for _, n in ab):
                bad.append(bad_item(f"{name}:{number}", "test", self.pairs_file, "malformed_label",
                                    f"{name}:{number}: {line.strip()!r}"))
                continue
            pairs.append([self.relpath(*ab[0]), self.relpath(*ab[1]), len(parts) == 3,
                          min(i // per_fold, folds - 1)])  # lines past the header's count: the last fold
        return pairs, bad

    def relpath(self, person: str, number: str) -> str:
        return f"{self.folder}/{person}/{person}_{int(number):04d}.jpg"

    def items(self) -> list[Item]:
        out = list(self.bad)
        for rel in sorted({p for a, b, _, _ in self.pairs for p in (a, b)}):
            person = rel.split("/")[1]
            if os.path.isfile(os.path.join(self.source, rel)):
                out.append(Item(rel, "test", self.classes.index(person), person, rel))
            else:
                out.append(bad_item(rel, "test", rel, "missing_file", f"no {rel} in {self.source}"))
        return out

    def manifest_extras(self) -> dict:
        return {"pairs": self.pairs, "pairs_file": os.path.basename(self.pairs_file)}

    def load_item(self, item: Item):
        return F.load_image(os.path.join(self.source, item.source))


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

    def __init__(self, source: str | None = None, **_):
        super().__init__(source)
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


class RotatedDigitsReader:
    """THIN's MNIST-R (`digits_rotated`) and MNIST-RS (`digits_rotated_scaled`): every
    source digit under one random rotation (and scale), as section 3.4 builds them (60k /
    10k from MNIST; `copies` > 1 draws more); SOURCE = a folder of MNIST idx files, `tfds`,
    or nothing for scikit-learn's digits (data_prep.synthetic)."""

    scaled = False
    classes = tuple(str(i) for i in range(10))
    default_source: str | None = None

    def __init__(self, source: str | None = None, copies: int = 1, seed: int = 0, **_):
        source = source or self.default_source
        if source and source.split(":")[0] != "tfds" and not os.path.isdir(source):
            raise UserError(f"idx folder not found: {source}")
        self.source, self.copies, self.seed = source, copies, seed

    @functools.lru_cache(maxsize=2)  # noqa: B019 - one reader per process
    def digits(self, split: str):
        try:
            return synthetic.load_digits(self.source, split)
        except (FileNotFoundError, ImportError) as e:
            raise UserError(str(e)) from None

    def items(self) -> list[Item]:
        out = []
        for split in ("train", "test"):
            _, labels, origin = self.digits(split)
            for c in range(self.copies):
                out += [Item(f"{split}/{i}/{c}", split, int(y), f"{split}{i}", origin, "record", (i, c))
                        for i, y in enumerate(labels)]
        return out

    def load(self, item: Item) -> dict:
        imgs, _, _ = self.digits(item.split)
        i, c = item.params
        rng = np.random.default_rng([self.seed, i, c, item.split == "test"])
        return synthetic.rotated_digit(imgs[i], rng, self.scaled)


class RotatedScaledDigitsReader(RotatedDigitsReader):
    scaled = True


class RotatedFashionReader(RotatedDigitsReader):
    """Fashion-MNIST rotated like MNIST-R (`fashion_rotated`): a full-size benchmark that can
    be had offline, from Debian's `dataset-fashion-mnist` (60k / 10k idx files in
    /usr/share/datasets/fashion-mnist, the default SOURCE) or any folder of its idx files."""

    classes = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot")
    default_source = "/usr/share/datasets/fashion-mnist"

    def __init__(self, source: str | None = None, **options):
        if not (source or os.path.isdir(self.default_source)):
            raise UserError(f"{self.default_source} not found: `apt-get install dataset-fashion-mnist`, or give the "
                            "folder of Fashion-MNIST's idx files as SOURCE")
        super().__init__(source, **options)


class DSpritesReader:
    """THIN's dSprites task: `size` random points of the dSprites factor grid (shape,
    scale, rotation, x, y); test = `test_fraction` (60k / 10k by default, as section 3.4). SOURCE `tfds` reads them from
    tensorflow-datasets' dsprites, nothing draws them (data_prep.synthetic.sprite)."""

    def __init__(self, source: str | None = None, size: int = 70000, test_fraction: float = 1 / 7, seed: int = 0,
                 **_):
        if source and source.split(":")[0] != "tfds":
            raise UserError(f"dsprites reads `tfds` or nothing (the generator), not {source!r}")
        self.classes = synthetic.SHAPES
        self.source, self.size, self.test_fraction, self.seed = source, size, test_fraction, seed

    @functools.cached_property
    def tfds(self):
        try:
            return synthetic.tfds_source(self.source, "dsprites", "train")[0]  # tfds has one split
        except FileNotFoundError as e:
            raise UserError(str(e)) from None

    def items(self) -> list[Item]:
        rng = np.random.default_rng(self.seed)
        if self.source:
            n = len(self.tfds)
            picks = rng.choice(n, min(self.size, n), replace=False)
            n_test = int(len(picks) * self.test_fraction)
            return [Item(f"sprite{int(j)}", "test" if i < n_test else "train", int(self.tfds[int(j)]["label_shape"]),
                         f"sprite{int(j)}", self.source, "record", (int(j),)) for i, j in enumerate(picks)]
        factors = np.stack([rng.integers(0, n, self.size) for n in
                            (len(synthetic.SHAPES), len(synthetic.DSPRITES_SCALES), synthetic.DSPRITES_ROTATIONS,
                             synthetic.DSPRITES_POSITIONS, synthetic.DSPRITES_POSITIONS)], 1)
        n_test = int(self.size * self.test_fraction)
        return [Item(f"sprite{i}", "test" if i < n_test else "train", int(f[0]), f"sprite{i}", "generator",
                     "record", tuple(int(v) for v in f)) for i, f in enumerate(factors)]

    def load(self, item: Item) -> dict:
        if self.source:
            r = self.tfds[item.params[0]]
            image = np.asarray(r["image"], np.uint8)
            shape, scale, rot = int(r["label_shape"]), int(r["label_scale"]), int(r["label_orientation"])
            x, y = int(r["label_x_position"]), int(r["label_y_position"])
            image = image * np.uint8(255) if image.max() <= 1 else image  # dSprites pixels are 0/1
        else:
            shape, scale, rot, x, y = item.params
            image = synthetic.sprite(shape, scale, rot, x, y)[..., None]
        return {"image": image, "scale_bin": scale, "rotation_bin": rot, "position": np.array([x, y], np.int32)}


READERS = {"sample": SampleReader, "folder": FolderReader, "digits_rotated": RotatedDigitsReader,
           "digits_rotated_scaled": RotatedScaledDigitsReader, "fashion_rotated": RotatedFashionReader,
           "dsprites": DSpritesReader, "icv_mefed": IcvMefedReader, "afew": AfewReader,
           "video_folder": VideoFolderReader, "ckplus": CkPlusReader, "rafdb": RafDbReader,
           "affectnet": AffectNetReader, "fer2013": Fer2013Reader, "sfew": SfewReader, "expw": ExpwReader,
           "bu4dfe": Bu4dfeReader, "mmi": MmiReader, "lfw": LfwReader, "csv": CsvReader}


def reader(name: str, source: str | None, **options):
    if name not in READERS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}")
    return READERS[name](source, **options)
