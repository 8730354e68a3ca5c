"""The in-the-wild photo datasets: RAF-DB, AffectNet, FER-2013, SFEW and ExpW, each from
its official label files."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from data_prep.readers.base import Item, LayoutReader, bad_item, option
from data_prep.readers.layout import child, csv_row_at, csv_rows, fields, numbers, points, read_numbers, text_lines
from fergate import face as F
from fergate.data.labels import DATASET_CLASSES


@dataclass(frozen=True)
class RafDbOptions:
    original: bool = option(False, "the original photos (basic/Image/original, in basic/Annotation/boundingbox's "
                            "boxes) instead of the aligned 100 x 100 faces")


@dataclass(frozen=True)
class AffectNetOptions:
    contempt: bool = option(False, "keep contempt (8 classes; default 7)")


@dataclass(frozen=True)
class ExpwOptions:
    min_confidence: float = option(0.0, "skip faces whose box confidence is under this, counted as low_confidence "
                                   "(the papers: 60; default {default}: keep all)")


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
    title = "RAF-DB"
    Options = RafDbOptions
    layout = ("ROOT/basic/EmoLabel/list_patition_label.txt (lines `train_00001.jpg 5`) and "
              "ROOT/basic/Image/aligned/train_00001_aligned.jpg (--original: ROOT/basic/Image/original/)")

    def locate(self):
        basic = child(self.source, "basic") or self.source
        self.label_file = self.find("EmoLabel", "list_patition_label.txt", folder=False, base=basic)
        self.image_dir = self.find("Image", "original" if self.options.original else "aligned", base=basic)
        self.box_dir = child(child(basic, "Annotation") or "", "boundingbox")

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
            path = os.path.join(self.image_dir, name if self.options.original else f"{stem}_aligned.jpg")
            if not os.path.isfile(path):
                out.append(bad_item(f"{key} {name}", split, path, "missing_file", f"no {path}"))
                continue
            out.append(Item(stem, split, code - 1, stem, path))
        return out

    def load_item(self, item: Item) -> F.FaceInput:
        img = F.load_image(item.source)
        if not self.options.original:
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
    Options = AffectNetOptions
    layout = ("ROOT/Manually_Annotated_file_lists/{training,validation}.csv and "
              "ROOT/Manually_Annotated_Images/<subDirectory_filePath>")
    COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
               "expression", "valence", "arousal")
    #: the codes past the 8 expressions
    EXCLUDED = {8: "none", 9: "uncertain", 10: "non_face"}

    def locate(self):
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
        self.classes = DATASET_CLASSES["affectnet"][: 8 if self.options.contempt else 7]

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
    USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
    SIDE = 48

    def locate(self):
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
    SPLITS = {"train": "Train", "test": "Val"}

    def locate(self):
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
    title = "ExpW"
    Options = ExpwOptions
    layout = ("ROOT/label/label.lst (lines `image_name face_id top left right bottom confidence label`) and "
              "ROOT/image/origin/<image_name>")

    def locate(self):
        self.label_file = self.find("label", "label.lst", folder=False)
        self.image_dir = self.find("image", "origin")

    def items(self) -> list[Item]:
        out, min_confidence = [], self.options.min_confidence
        for number, line in text_lines(self.label_file):
            key = f"label.lst:{number}"
            try:
                parts = fields(line, 8)
                name, face, (top, left, right, bottom, conf), code = \
                    parts[0], int(parts[1]), map(float, parts[2:7]), int(parts[7])
                if right <= left or bottom <= top:
                    raise ValueError("an empty face box")
            except ValueError as e:
                out.append(bad_item(key, "train", self.label_file, "malformed_label", f"{key}: {e}"))
                continue
            path = os.path.join(self.image_dir, name)
            problem = ("label_out_of_range", f"{code} not in 0-6") if not 0 <= code < len(self.classes) else \
                ("low_confidence", f"{conf} < {min_confidence}") if conf < min_confidence else \
                ("missing_file", f"no {path}") if not os.path.isfile(path) else ()
            out.append(bad_item(f"{key} {name}", "train", path, *problem) if problem else
                       Item(f"{name}#{face}", "train", code, name, path, "image", ((left, top, right, bottom),)))
        return out

    def load_item(self, item: Item) -> F.FaceInput:
        return F.FaceInput(F.load_image(item.source), box=item.params[0])


READERS = (RafDbReader, AffectNetReader, Fer2013Reader, SfewReader, ExpwReader)
