"""The reader of the built-in synthetic sample set (data_prep.sample)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from data_prep import sample as S
from data_prep import sample_au as U
from data_prep.readers.base import Item, Reader, option
from fergate.data import compound as compound_labels
from fergate.errors import UserError


@dataclass(frozen=True)
class SampleOptions:
    size: int = option(2800, "face images drawn, for the train and test splits")
    clips: int = option(140, "expression clips drawn (default {default}; 0: none), neutral -> apex over T frames, for "
                        "the train_clips and test_clips splits")
    frames: int = option(16, "T: the frames a clip is generated with", from_prep=True)
    test_subjects: int = option(3, "subjects held out: their images and clips are the test splits")
    seed: int = option(0, "seed of the expressions, intensities and jitter drawn")
    compound: bool = option(False, "the 50 compound classes of iCV-MEFED (two expressions blended) instead of the 7 "
                            "basic ones")
    style: str = option("warp", "how expressions and subjects are made: warp (the source faces' landmarks moved, one "
                        "subject a face) or au (each action unit's move and appearance: teeth, folds, wrinkles, eye "
                        "whites; subjects morphed from pairs of source faces, test_subjects of the source faces held "
                        "out; data_prep.sample_au)")

    def __post_init__(self):
        if self.style not in STYLES:
            raise UserError(f"--style {self.style}: one of {', '.join(STYLES)}")
        if self.style == "au" and self.compound:
            raise UserError("--style au: the 7 basic classes only (not --compound)")


#: the sample set's styles (SampleOptions.style)
STYLES = ("warp", "au")


class SampleReader(Reader):
    """The built-in synthetic set (data_prep.sample): `size` images and `clips` clips spread
    evenly over classes and subjects. `test_subjects` subjects form the test split: every
    k-th of the names in reverse sorted order (k = #subjects // test_subjects), i.e.
    grace_hopper when only the two photos of scikit-image and matplotlib are there.
    `compound`: the 50 compound classes of iCV-MEFED (fergate.data.compound) instead of the
    7 basic expressions, each a blend of two (the dominant stronger)."""

    name = "sample"
    title = "the built-in sample set"
    Options = SampleOptions

    def __init__(self, source: str | None, options: SampleOptions):
        super().__init__(source, options)
        try:
            sources = S.sample_photos(source)
        except FileNotFoundError as e:
            raise UserError(str(e)) from None
        if not sources:
            raise UserError(f"no face photos found{' in ' + source if source else ''} for the sample dataset")
        self.classes = compound_labels.CLASSES if options.compound else S.CLASSES
        self.subjects: dict[str, list[tuple[str, int]]] = {}
        for name, path, index in sources:
            self.subjects.setdefault(name, []).append((path, index))
        names = sorted(self.subjects, reverse=True)
        count = min(options.test_subjects, len(names) - 1)
        self.test = set(names[:: max(1, len(names) // count)][:count]) if count > 0 else set()
        self.morphs: dict[str, tuple] = {}
        self.identities: dict[str, U.Identity] = {}
        if options.style == "au":  # subjects: identities morphed within the training / held-out source faces
            first = [(n, *self.subjects[n][0]) for n in sorted(self.subjects)]
            if not 2 <= count <= len(names) - 2:
                raise UserError(f"--style au: {len(names)} source faces, --test_subjects {options.test_subjects}: "
                                "identities are morphed from pairs, so at least 2 faces are held out and 2 train")
            morphs = U.identities(first, self.test)
            self.morphs = {name: params for name, params, _ in morphs}
            self.test = {name for name, _, held in morphs if held}
            self.subjects = {name: [(params[0][1], 0)] for name, params in self.morphs.items()}

    def _items(self, n: int, kind: str) -> list[Item]:
        out, names = [], sorted(self.subjects)
        for i in range(n):
            label = i % len(self.classes)
            name = names[(i // len(self.classes)) % len(names)]
            path, index = self.subjects[name][(i // (len(self.classes) * len(names))) % len(self.subjects[name])]
            rng = np.random.default_rng([self.options.seed, i, kind == "clip"])
            intensity = 0.0 if label == 0 else float(rng.uniform(0.6, 1.4))
            split = ("test" if name in self.test else "train") + ("_clips" if kind == "clip" else "")
            out.append(Item(f"{kind}{i:07d}", split, label, name, path, kind,
                            (self.expression(label), intensity, int(rng.integers(2**31)), index)))
        return out

    def expression(self, label: int) -> str | tuple[str, str]:
        """The sample generator's expression of a class: its name, or a compound class's
        (complementary, dominant) pair."""
        if not self.options.compound:
            return self.classes[label]
        pair = compound_labels.compound_pair(label)
        if pair is None:
            return "neutral"
        return tuple(S.COMPOUND_EXPRESSIONS[compound_labels.EMOTIONS[e - 1]] for e in pair)

    def items(self) -> list[Item]:
        return self._items(self.options.size, "image") + self._items(self.options.clips, "clip")

    @staticmethod
    @functools.cache
    def _subject(name: str, path: str, index: int) -> S.Subject:
        return S.Subject(name, path, index)

    def _identity(self, name: str) -> U.Identity:
        """A morphed identity, made once per process (the prep workers each hold the reader)."""
        if name not in self.identities:
            (na, *pa), (nb, *pb), alpha, seed = self.morphs[name]
            self.identities[name] = U.Identity(name, self._subject(na, *pa), self._subject(nb, *pb), alpha,
                                               np.random.default_rng(seed))
        return self.identities[name]

    def load_item(self, item: Item):
        expression, intensity, seed, index = item.params
        if self.morphs:
            identity, rng = self._identity(item.subject), np.random.default_rng(seed)
            if item.kind == "clip":
                return U.clip_au(identity, expression, intensity, self.options.frames, rng)
            return U.synthesize_au(identity, expression, intensity, rng)
        subject = self._subject(item.subject, item.source, index)
        rng = np.random.default_rng(seed)
        if item.kind == "clip":
            return S.clip_frames(subject, expression, intensity, self.options.frames, rng)
        return S.synthesize(subject, expression, intensity, rng)


READERS = (SampleReader,)
