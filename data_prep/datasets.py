"""Dataset readers: each lists its items (cheap, deterministic) and loads one item's pixels.

A reader is a class with `classes`, `items() -> list[Item]` and `load(item)`, returning an
RGB image, or a list of frames for a clip item. Readers never run the face pipeline;
`data_prep.prep` does, in worker processes. A missing or wrongly laid out source is a
UserError when the reader is made; an item that cannot be read raises SkipItem in `load`,
and is counted in the manifest.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from data_prep import face as F
from data_prep import sample as S
from data_prep import synthetic, video
from fergate.data import compound as compound_labels
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


class VideoFolderReader:
    """Clips in one sub-folder per class: `ROOT/<class>/<clip>`, or `ROOT/<split>/<class>/...`
    when ROOT holds `train/` or `test/`; a clip is a video file (`video.VIDEO_EXTS`) or a
    folder of frame images (CK+ / MMI style, natural name order); other files are ignored.
    Each clip is its own subject unless its name has a `<subject>__` prefix. At most
    `max_frames` frames of a clip are read, evenly spaced (`data_prep.video`); an unreadable,
    empty or faceless clip is skipped and counted by reason."""

    name = "video_folder"
    layout = "ROOT/<class>/<video file or folder of frames>, or ROOT/{train,test}/<class>/..."

    def __init__(self, source: str | None = None, max_frames: int = video.MAX_FRAMES, **_):
        if not source:
            raise UserError(f"--dataset {self.name} needs ROOT: {self.layout}")
        if not os.path.isdir(source):
            raise UserError(f"--dataset {self.name}: ROOT not found: {source} (expected {self.layout})")
        self.source, self.max_frames = source, max_frames
        self.roots, self.classes = self.find_layout(source)

    def find_layout(self, source: str) -> tuple[dict[str, str], tuple[str, ...]]:
        roots, classes = class_layout(source)
        if not classes:
            raise UserError(f"--dataset {self.name}: no class folders in {source} (expected {self.layout})")
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
            raise UserError(f"--dataset {self.name}: no video ({', '.join(video.VIDEO_EXTS)}) or frame folder "
                            f"in the class folders of {self.source} (expected {self.layout})")
        return out

    def load(self, item: Item) -> list[np.ndarray]:
        return video.read_clip(item.source, self.max_frames)


class AfewReader(VideoFolderReader):
    """AFEW (Acted Facial Expressions in the Wild: film excerpts): `ROOT/Train/<Emotion>/*.avi`
    and `ROOT/Val/<Emotion>/*.avi` (folder names in any case, `Train_AFEW` / `Val_AFEW` too),
    the 7 emotion folders spelled as AFEW does. Val is the test split: AFEW's own test set
    has no public labels, and the papers report Val. AFEW names no actor, so each video is
    its own subject; other folders (AFEW's unlabelled Test) are ignored."""

    name = "afew"
    classes = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
    splits = {"train": ("train", "train_afew"), "test": ("val", "val_afew")}
    layout = "ROOT/Train/<Emotion>/*.avi and ROOT/Val/<Emotion>/*.avi, Emotion one of " + ", ".join(classes)

    def find_layout(self, source: str) -> tuple[dict[str, str], tuple[str, ...]]:
        top = subfolders(source)
        roots = {split: os.path.join(source, top[n]) for split, names in self.splits.items()
                 for n in names if n in top}
        known = {c.lower() for c in self.classes}
        if not any(known & set(subfolders(r)) for r in roots.values()):
            raise UserError(f"--dataset afew: no Train/ or Val/ folder of emotion folders in {source} "
                            f"(expected {self.layout})")
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

    classes = compound_labels.CLASSES

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
                    out.append(Item(key, split, 0, "", path, "bad", ("malformed_label", f"{key}: {label}")))
                    continue
                problem = ("duplicate_label", f"{name} is labelled earlier") if name in seen else \
                    ("missing_file", f"no photo {name} under {self.source}") if name not in photos else ()
                seen.add(name)
                out.append(Item(f"{key} {name}" if problem else name, split, label, self.subject_of(name),
                                photos.get(name, path), "bad" if problem else "image", problem))
        if not any(it.kind == "image" for it in out):
            raise UserError(f"no labelled photo found under {self.source} (label files: "
                            f"{', '.join(os.path.basename(p) for p in self.label_files)})")
        return out

    def load(self, item: Item):
        if item.kind == "bad":
            raise F.SkipItem(*item.params)
        return F.load_image(item.source)


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
           "video_folder": VideoFolderReader}


def reader(name: str, source: str | None, **options):
    if name not in READERS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}")
    return READERS[name](source, **options)
