"""A contact sheet of a prepared split: `per_class` aligned faces (or images, or a clip's
middle frame) per class, one row each, with the landmarks drawn; written by `fergate prep`
as DIR/contact_sheet.png. Many classes (the 50 compound ones) get 4 smaller faces each, in
columns of 10 classes."""

from __future__ import annotations

import glob
import os

import cv2
import numpy as np

from fergate.data import schema


def contact_sheet(data_dir: str, split: str, classes: list[str], out: str, per_class: int = 8) -> str | None:
    from array_record.python.array_record_module import ArrayRecordReader

    rows: dict[int, list[np.ndarray]] = {i: [] for i in range(len(classes))}
    for path in sorted(glob.glob(os.path.join(data_dir, f"{split}-*.array_record"))):
        reader = ArrayRecordReader(path)
        for i in range(reader.num_records()):
            rec = schema.decode(reader.read([i])[0])
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
        reader.close()
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
