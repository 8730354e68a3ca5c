"""iCV-MEFED, the micro-emotion challenge's dataset of compound expressions."""

from __future__ import annotations

import dataclasses
import logging
import os

from data_prep.readers.base import Item, Reader, bad_item, option
from data_prep.readers.layout import fields, text_lines
from fergate import face as F
from fergate import video
from fergate.data import compound as compound_labels
from fergate.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IcvMefedOptions:
    val_subjects: int = option(0, "the last N subjects of the training label files (in subject number order) form "
                               "the `val` split, as paper 001 validates on the last 9 of its 92 labelled persons "
                               "(IV-C); 0: none", metavar="N")


class IcvMefedReader(Reader):
    """iCV-MEFED (the micro-emotion challenge's dataset): flat folders of
    `Sample_<subject>_<idx>.JPG` photos anywhere under SOURCE, and label files (`*.txt` in
    SOURCE) of lines `NAME<TAB>c_d` (`N_N`: neutral) mapped to the 50 compound classes
    (fergate.data.compound). A label file's name gives its items' split: one naming `test`
    is the test split, one naming `valid` (and not `train`) `val`, any other `train`. A line
    that does not parse, a name labelled twice and a labelled photo that is not there become
    skipped items, counted in the manifest by reason. `val_subjects` N moves the training
    items of the last N subjects (by subject number) to `val`."""

    name = "icv_mefed"
    title = "iCV-MEFED"
    Options = IcvMefedOptions

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
        return self.last_subjects_to_val(out, self.options.val_subjects)

    @staticmethod
    def last_subjects_to_val(items: list[Item], n: int) -> list[Item]:
        """The training items of the last `n` training subjects, in subject number order
        (`Sample_<subject>_<idx>`), moved to the `val` split (section IV-C's validation set)."""
        if n <= 0:
            return items
        if any(it.split == "val" and it.kind != "bad" for it in items):
            raise UserError(f"--val_subjects {n}: a label file already gives a `val` split (its name says "
                            "'valid'): use one or the other")
        subjects = sorted({it.subject for it in items if it.split == "train" and it.kind != "bad"},
                          key=video.natural_key)
        if n >= len(subjects):
            raise UserError(f"--val_subjects {n}: the training label files have {len(subjects)} subjects; at "
                            "least one must remain for training")
        val = set(subjects[-n:])
        log.info(f"[prep] icv_mefed: the last {n} of {len(subjects)} training subjects ({subjects[-n]} to "
                 f"{subjects[-1]}) form the `val` split (--val_subjects)")
        return [dataclasses.replace(it, split="val") if it.split == "train" and it.subject in val else it
                for it in items]


READERS = (IcvMefedReader,)
