"""iCV-MEFED, the micro-emotion challenge's dataset of compound expressions."""

from __future__ import annotations

import logging
import os

from data_prep.readers.base import Item, Reader, bad_item
from data_prep.readers.layout import fields, text_lines
from fergate import face as F
from fergate.data import compound as compound_labels
from fergate.data.labels import DATASET_CLASSES
from fergate.errors import UserError

log = logging.getLogger(__name__)


class IcvMefedReader(Reader):
    """iCV-MEFED (the micro-emotion challenge's dataset): flat folders of
    `Sample_<subject>_<idx>.JPG` photos anywhere under SOURCE, and label files (`*.txt` in
    SOURCE) of lines `NAME<TAB>c_d` (`N_N`: neutral) mapped to the 50 compound classes
    (fergate.data.compound). A label file's name gives its items' split: one naming `test`
    is the test split, one naming `valid` (and not `train`) `val`, any other `train`. A line
    that does not parse, a name labelled twice and a labelled photo that is not there become
    skipped items, counted in the manifest by reason."""

    name = "icv_mefed"
    classes = DATASET_CLASSES["icv_mefed"]

    def __init__(self, source: str | None, options):
        super().__init__(self.source_folder(source, "SOURCE: the folder of the photos and label files"), options)
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
            for number, line in text_lines(path):
                key = f"{os.path.basename(path)}:{number}"
                try:
                    name, label = fields(line, 2, "NAME and c_d")
                    rows.append((key, name, compound_labels.parse_label(label)))
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


READERS = (IcvMefedReader,)
