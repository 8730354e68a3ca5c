"""Synthetic benchmarks of THIN (its Tables 2-3) with known exogenous factors.

- Rotated (and rotated + scaled) digits: rotation uniform in [-90, 90] degrees, exogenous
  label = one of 18 bins of 10 degrees; scale uniform in [0.5, 1], 10 bins. Digits come
  from MNIST through tensorflow-datasets when it can be had, from MNIST-format idx files
  given by path, or offline from scikit-learn's 8x8 digits (upsampled to 28 x 28).
- dSprites-style shapes: square, ellipse, heart on 64 x 64, with the dSprites factor grid
  (6 scales in [0.5, 1], 40 rotations, 32 x 32 positions); exogenous label = scale index.
"""

from __future__ import annotations

import gzip
import os
import struct

import cv2
import numpy as np

ROTATION_BINS = 18  # [-90, 90) in 10-degree bins
SCALE_BINS = 10  # [0.5, 1] in 10 bins
SHAPES = ("square", "ellipse", "heart")
DSPRITES_SCALES = np.linspace(0.5, 1.0, 6)
DSPRITES_ROTATIONS = 40
DSPRITES_POSITIONS = 32


def read_idx(path: str) -> np.ndarray:
    """An MNIST-format idx file (optionally .gz) as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def tfds_source(source: str, default: str, split: str):
    """A prepared tensorflow-datasets set as a random-access source, without TensorFlow:
    `tfds` names `default`, `tfds:NAME` another (e.g. fashion_mnist); TFDS_DATA_DIR says
    where. It must have been built in ArrayRecord format; nothing is downloaded here."""
    try:
        import tensorflow_datasets as tfds  # optional: only when asked for
    except ImportError:
        raise FileNotFoundError(f"{source}: tensorflow-datasets is not installed (pip install 'fergate[tfds]')") \
            from None
    name = source.partition(":")[2] or default
    try:
        return tfds.data_source(name, split=split, download=False), f"tfds:{name}"
    except Exception as e:  # noqa: BLE001 - tfds raises several kinds for a set it cannot open
        raise FileNotFoundError(f"{source}: tensorflow-datasets cannot open {name!r} ({type(e).__name__}); build it "
                                f"with `tfds build {name} --file_format=array_record`") from None


def load_digits(source: str | None, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(images N x 28 x 28 uint8, labels, origin) of a digit source: a directory of MNIST
    idx files, `tfds[:NAME]` (tensorflow-datasets MNIST or another 28 x 28 set), or None
    for scikit-learn's digits (80/20 train/test split by index)."""
    if source and source.split(":")[0] == "tfds":
        ds, origin = tfds_source(source, "mnist", split)
        rows = [ds[i] for i in range(len(ds))]
        return np.stack([r["image"][..., 0] for r in rows]), np.array([r["label"] for r in rows], np.int64), origin
    if source:
        prefix = "train" if split == "train" else "t10k"
        names = os.listdir(source)
        img = next((n for n in names if n.startswith(f"{prefix}-images")), None)
        lab = next((n for n in names if n.startswith(f"{prefix}-labels")), None)
        if img is None or lab is None:
            raise FileNotFoundError(f"no {prefix}-images/-labels idx files in {source}")
        return read_idx(os.path.join(source, img)), read_idx(os.path.join(source, lab)).astype(np.int64), source
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    imgs = np.stack([cv2.resize((im * 255 / 16).astype(np.uint8), (20, 20), interpolation=cv2.INTER_CUBIC)
                     for im in d.images])
    imgs = np.pad(imgs, ((0, 0), (4, 4), (4, 4)))  # MNIST-like: 20 x 20 digit in a 28 x 28 frame
    cut = int(0.8 * len(imgs))
    sl = slice(0, cut) if split == "train" else slice(cut, None)
    return imgs[sl], d.target[sl].astype(np.int64), "sklearn:digits"


def rotate_scale(img: np.ndarray, angle: float, scale: float = 1.0) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, scale)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)


def rotated_digit(img: np.ndarray, rng: np.random.Generator, scaled: bool) -> dict:
    """A digit rotated uniformly in [-90, 90) (and scaled in [0.5, 1]) with its factor bins."""
    angle = rng.uniform(-90, 90)
    scale = rng.uniform(0.5, 1.0) if scaled else 1.0
    rec = {"image": rotate_scale(img, angle, scale)[..., None], "rotation_bin": int((angle + 90) // 10),
           "rotation": float(angle)}
    if scaled:
        rec.update(scale_bin=min(SCALE_BINS - 1, int((scale - 0.5) / 0.05)), scale=float(scale))
    return rec


def sprite(shape: int, scale_idx: int, rotation_idx: int, x_idx: int, y_idx: int, size: int = 64) -> np.ndarray:
    """A dSprites-style binary image (size x size uint8 in {0, 255})."""
    scale = DSPRITES_SCALES[scale_idx]
    angle = 2 * np.pi * rotation_idx / DSPRITES_ROTATIONS
    r = 0.18 * size * scale  # half extent
    margin = r * 1.2
    cx = margin + (size - 2 * margin) * x_idx / (DSPRITES_POSITIONS - 1)
    cy = margin + (size - 2 * margin) * y_idx / (DSPRITES_POSITIONS - 1)
    t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    if SHAPES[shape] == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * r * 0.85
    elif SHAPES[shape] == "ellipse":
        pts = np.stack([np.cos(t) * r, np.sin(t) * r * 0.55], 1)
    else:  # heart
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1) / 17.0 * r
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T + (cx, cy)
    img = np.zeros((size, size), np.uint8)
    cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    return img
