"""LFW (Labeled Faces in the Wild) and its pairs, for face verification."""

from __future__ import annotations

import os
from dataclasses import dataclass

from data_prep.readers.base import Item, LayoutReader, bad_item, option
from data_prep.readers.layout import child, text_lines
from fergate import face as F


@dataclass(frozen=True)
class LfwOptions:
    pairs: str | None = option(None, "the pairs file in ROOT (default pairs.txt, else pairsDevTest.txt)",
                               metavar="FILE")


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
    title = "LFW"
    Options = LfwOptions
    layout = "ROOT/lfw/<Name>/<Name>_0001.jpg and ROOT/pairs.txt (View 2: `10<TAB>300`, then the folds' pairs)"
    FOLDERS = ("lfw", "lfw-deepfunneled", "lfw_funneled", "lfw-funneled")

    def locate(self):
        pairs = self.options.pairs
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


READERS = (LfwReader,)
