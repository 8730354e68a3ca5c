"""THIN's synthetic benchmarks with known exogenous factors: rotated (and scaled) digits,
rotated Fashion-MNIST and dSprites (data_prep.synthetic makes the images)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from data_prep import synthetic
from data_prep.readers.base import Item, Reader, option
from fergate.errors import UserError


@dataclass(frozen=True)
class DigitsOptions:
    copies: int = option(1, "rotations drawn of each source digit")
    seed: int = option(0, "seed of the rotations (and scales) drawn")


@dataclass(frozen=True)
class DSpritesOptions:
    size: int = option(70000, "points drawn of the factor grid")
    test_fraction: float = option(1 / 7, "their share in the test split", flag=False)  # prep's --test_fraction
    seed: int = option(0, "seed of the points drawn")


class RotatedDigitsReader(Reader):
    """THIN's MNIST-R (`digits_rotated`) and MNIST-RS (`digits_rotated_scaled`): every
    source digit under one random rotation (and scale), as section 3.4 builds them (60k /
    10k from MNIST; `copies` > 1 draws more); SOURCE = a folder of MNIST idx files, `tfds`,
    or nothing for scikit-learn's digits (data_prep.synthetic)."""

    name = "digits_rotated"
    title = "rotated digits"
    Options = DigitsOptions
    scaled = False
    classes = tuple(str(i) for i in range(10))
    default_source: str | None = None

    def __init__(self, source: str | None, options: DigitsOptions):
        source = source or self.default_source
        if source and source.split(":")[0] != "tfds" and not os.path.isdir(source):
            raise UserError(f"idx folder not found: {source}")
        super().__init__(source, options)
        self.copies, self.seed = options.copies, options.seed

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

    def load_item(self, item: Item) -> dict:
        imgs, _, _ = self.digits(item.split)
        i, c = item.params
        rng = np.random.default_rng([self.seed, i, c, item.split == "test"])
        return synthetic.rotated_digit(imgs[i], rng, self.scaled)


class RotatedScaledDigitsReader(RotatedDigitsReader):
    name = "digits_rotated_scaled"
    scaled = True


class RotatedFashionReader(RotatedDigitsReader):
    """Fashion-MNIST rotated like MNIST-R (`fashion_rotated`): a full-size benchmark that can
    be had offline, from Debian's `dataset-fashion-mnist` (60k / 10k idx files in
    /usr/share/datasets/fashion-mnist, the default SOURCE) or any folder of its idx files."""

    name = "fashion_rotated"
    classes = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot")
    default_source = "/usr/share/datasets/fashion-mnist"

    def __init__(self, source: str | None, options: DigitsOptions):
        if not (source or os.path.isdir(self.default_source)):
            raise UserError(f"{self.default_source} not found: `apt-get install dataset-fashion-mnist`, or give the "
                            "folder of Fashion-MNIST's idx files as SOURCE")
        super().__init__(source, options)


class DSpritesReader(Reader):
    """THIN's dSprites task: `size` random points of the dSprites factor grid (shape,
    scale, rotation, x, y); test = `test_fraction` (60k / 10k by default, as section 3.4). SOURCE `tfds` reads them from
    tensorflow-datasets' dsprites, nothing draws them (data_prep.synthetic.sprite)."""

    name = "dsprites"
    Options = DSpritesOptions
    classes = synthetic.SHAPES

    def __init__(self, source: str | None, options: DSpritesOptions):
        if source and source.split(":")[0] != "tfds":
            raise UserError(f"dsprites reads `tfds` or nothing (the generator), not {source!r}")
        super().__init__(source, options)
        self.size, self.test_fraction, self.seed = options.size, options.test_fraction, options.seed

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

    def load_item(self, item: Item) -> dict:
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


READERS = (RotatedDigitsReader, RotatedScaledDigitsReader, RotatedFashionReader, DSpritesReader)
