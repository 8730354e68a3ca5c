"""A contact sheet of a prepared split, written by `fergate prep` as DIR/contact_sheet.png.
Where the records name their subjects (the sample set, CK+, ...) and the classes are few: one
row per subject (up to `subjects`), one column per class, each cell the subject's expression
at apex (a clip's last frame; among images, the one furthest from the subject's neutral face).
Otherwise `per_class` aligned faces (or images, or a clip's middle frame) per class, one row
each, with the landmarks drawn; many classes (the 50 compound ones) get 4 smaller faces each,
in columns of 10 classes."""

from __future__ import annotations

import glob
import os

import cv2
import numpy as np

from fergate.data import schema


def _records(data_dir: str, split: str):
    from array_record.python.array_record_module import ArrayRecordReader

    for path in sorted(glob.glob(os.path.join(data_dir, f"{split}-*.array_record"))):
        reader = ArrayRecordReader(path)
        for i in range(reader.num_records()):
            yield schema.decode(reader.read([i])[0])
        reader.close()


def _label(text: str, size: tuple[int, int]) -> np.ndarray:
    """A white cell with `text`, one line per "+"-separated part (a morphed identity's sources)."""
    label = np.full(size + (3,), 255, np.uint8)
    parts = text.split("+")
    for k, part in enumerate(parts):
        y = size[0] // 2 + 5 + 16 * k - 8 * (len(parts) - 1)
        cv2.putText(label, part, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return label


def _short(name: str) -> str:
    return name.removeprefix("morph_").replace("pyfeat_", "").replace("+", "+ ")


def subject_sheet(data_dir: str, split: str, classes: list[str], out: str, subjects: int = 10) -> str | None:
    """Subjects x classes at apex (the issue-34 sheet of the sample set); None where the
    records carry no subject. The neutral column is the class named "neutral" (or none: then
    an image cell is the subject's first of that class)."""
    faces: dict[str, dict[int, list[tuple[np.ndarray, bool]]]] = {}
    for rec in _records(data_dir, split):
        name = rec.get("subject") or ""
        if not name or (name not in faces and len(faces) >= subjects):
            continue
        img = rec.get("face", rec.get("image"))
        apex = img is None and "clip" in rec
        img = rec["clip"][-1] if apex else img
        if img is not None:
            faces.setdefault(name, {}).setdefault(rec["label"], []).append((np.asarray(img), apex))
    if not faces:
        return None
    neutral = classes.index("neutral") if "neutral" in classes else None

    def apex_of(cells: list[tuple[np.ndarray, bool]], base: np.ndarray | None) -> np.ndarray:
        clips = [f for f, apex in cells if apex]
        if clips or base is None:
            return (clips or [cells[0][0]])[0]
        return max((f for f, _ in cells), key=lambda f: float(np.abs(f.astype(np.float32) - base).mean()))

    size = next(f for c in faces.values() for v in c.values() for f, _ in v).shape[:2]
    name_w = max(110, 8 * max(len(p) for n in faces for p in _short(n).split("+")) + 8)
    head = [_label("", (24, name_w))] + [_label(c, (24, size[1])) for c in classes]
    lines = [np.concatenate(head, 1)]
    for name in sorted(faces):
        cells = faces[name]
        base = cells[neutral][0][0].astype(np.float32) if neutral is not None and neutral in cells else None
        row = [_label(_short(name), (size[0], name_w))]
        for c in range(len(classes)):
            f = apex_of(cells[c], base) if c in cells else np.zeros(size + (3,), np.uint8)
            row.append(np.ascontiguousarray(np.repeat(f, 3 // f.shape[-1], -1)))
        lines.append(np.concatenate(row, 1))
    cv2.imwrite(out, np.concatenate(lines, 0)[..., ::-1])
    return out


def contact_sheet(data_dir: str, split: str, classes: list[str], out: str, per_class: int = 8) -> str | None:
    if len(classes) <= 12 and subject_sheet(data_dir, split, classes, out):
        return out
    rows: dict[int, list[np.ndarray]] = {i: [] for i in range(len(classes))}
    for rec in _records(data_dir, split):
        img, lms = rec.get("face", rec.get("image")), rec.get("landmarks", ())
        if img is None and "clip" in rec:
            mid = len(rec["clip"]) // 2
            img, lms = rec["clip"][mid], rec["clip_landmarks"][mid]
        if img is None or len(rows[rec["label"]]) >= per_class:
            continue
        face = np.ascontiguousarray(np.repeat(img, 3 // img.shape[-1], -1))
        for x, y in lms:
            cv2.circle(face, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1)
        rows[rec["label"]].append(face)
    if not any(rows.values()):
        return None
    many = len(classes) > 12  # the 50 compound classes: 4 smaller faces a class, in columns of 10 classes
    shown = 4 if many else per_class
    size = next(f for r in rows.values() for f in r).shape[:2]
    if many and size[0] > 96:
        size = (96, round(size[1] * 96 / size[0]))
    label_w = max(110, 10 * max(len(c) for c in classes) + 8)
    lines = []
    for c, faces in rows.items():
        faces = [cv2.resize(f, size[::-1], interpolation=cv2.INTER_AREA) for f in faces[:shown]]
        faces += [np.zeros(size + (3,), np.uint8)] * (shown - len(faces))
        label = np.full((size[0], label_w, 3), 255, np.uint8)
        cv2.putText(label, classes[c], (4, size[0] // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        lines.append(np.concatenate([label, *faces], 1))
    per_column = 10 if many else len(lines)
    lines += [np.full_like(lines[0], 255)] * (-len(lines) % per_column)
    columns = [np.concatenate(lines[i : i + per_column], 0) for i in range(0, len(lines), per_column)]
    cv2.imwrite(out, np.concatenate(columns, 1)[..., ::-1])
    return out
