"""The record schema: the contract between `data_prep` (writer) and `fergate` (reader).

A record is one face image or one clip, serialized as a dict of named fields. The byte
layout is self-describing and needs nothing but numpy to read:

    b"FGR" | version: uint8 | header_len: uint32 (little endian) | header | payload

`header` is UTF-8 JSON ``{"fields": {name: [encoding, dtype, shape, offset, nbytes]}}``;
`payload` is the concatenated field bytes. Encodings:

- ``raw``: the array's C-order bytes; decoding is a zero-copy ``np.frombuffer``.
- ``png``: a uint8 image (H x W x C, or T x H x W x C for a clip, one PNG per frame) stored
  losslessly compressed; chosen per field at write time (`compress=True`).
- ``str`` / ``int`` / ``float``: scalars, stored in the header itself (payload empty).

Version history (bump `SCHEMA_VERSION` on any incompatible change):

- 1: the documented fields (`FIELDS`) plus free-form extras. Fields added since, each
  optional (records written before lack it, and read as before): `detector_score`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
MAGIC = b"FGR"
_HEADER = struct.Struct("<3sBI")

#: Documented fields: name -> (kind, dtype, shape with None for free sizes, meaning).
FIELDS: dict[str, tuple[str, str | None, tuple | None, str]] = {
    "label": ("int", None, None, "class index"),
    "label_name": ("str", None, None, "class name"),
    "subject": ("str", None, None, "subject id: subject-independent splits, THIN identity"),
    "source": ("str", None, None, "path or id of the original image or video"),
    "face": ("array", "uint8", (None, None, None), "aligned face crop, H x W x C (C = 1 or 3)"),
    "landmarks": ("array", "float32", (68, 2), "68 iBUG landmarks (x, y) in face pixels"),
    "iod": ("float", None, None, "inter-ocular distance in face pixels"),
    "patches": ("array", "uint8", (None, None, None), "N_l x P x P grey crops around landmarks"),
    "identity": ("array", "float32", (128,), "dlib ResNet face-recognition embedding"),
    "clip": ("array", "uint8", (None, None, None, None), "T x H x W x C aligned frames"),
    "clip_landmarks": ("array", "float32", (None, 68, 2), "T x 68 x 2 landmarks per frame"),
    "clip_features": ("array", "float32", (None, None), "T x F per-frame features of a model (fergate features)"),
    "image": ("array", "uint8", (None, None, None), "a non-face image, H x W x C (synthetic benchmarks)"),
    "rotation_bin": ("int", None, None, "exogenous label: rotation bin (synthetic benchmarks)"),
    "scale_bin": ("int", None, None, "exogenous label: scale bin (synthetic benchmarks)"),
    "box_source": ("int", None, None, "where the face box came from (`BOX_SOURCES`): 0 the detector, 1 the "
                   "dataset's annotation, 2 the whole crop (a pre-aligned face the detector missed)"),
    "detector_score": ("float", None, None, "the detector's score of the face's box: dlib HOG's SVM score or "
                       "YuNet's confidence (the manifest's detector; box_source 0 only; added in version 1, absent "
                       "from records written before)"),
}
#: `box_source` values, by name (the manifest counts records by these names)
BOX_SOURCES = ("detected", "dataset", "crop")
IMAGE_FIELDS = ("face", "clip", "patches", "image")


class SchemaError(ValueError):
    """A record that is not of this schema (wrong magic, version, or field type)."""


class ForeignRecord(SchemaError):
    """Bytes that are no record of this schema at all (too short, wrong magic or version)."""


def _check_field(name: str, value: Any) -> None:
    spec = FIELDS.get(name)
    if spec is None:
        return
    kind, dtype, shape, _ = spec
    if kind == "array":
        value = np.asarray(value)
        if value.dtype != np.dtype(dtype):
            raise SchemaError(f"field {name!r} must be {dtype}, got {value.dtype}")
        if shape is not None and (
            value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape))
        ):
            raise SchemaError(f"field {name!r} must have shape {shape}, got {value.shape}")
    elif kind == "int" and not isinstance(value, (int, np.integer)):
        raise SchemaError(f"field {name!r} must be an int, got {type(value).__name__}")
    elif kind == "float" and not isinstance(value, (float, int, np.floating, np.integer)):
        raise SchemaError(f"field {name!r} must be a float, got {type(value).__name__}")
    elif kind == "str" and not isinstance(value, str):
        raise SchemaError(f"field {name!r} must be a str, got {type(value).__name__}")


def _png_encode(img: np.ndarray) -> bytes:
    """H x W x C (C = 1 or 3, RGB) -> PNG bytes."""
    import cv2

    ok, buf = cv2.imencode(".png", img[..., ::-1] if img.shape[-1] == 3 else img[..., 0])
    if not ok:
        raise SchemaError(f"PNG encoding failed for an image of shape {img.shape}")
    return buf.tobytes()


def _png_decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img.ndim == 3 and img.shape[-1] == 3:
        img = img[..., ::-1]
    return np.ascontiguousarray(img).reshape(shape)


def encode(record: dict[str, Any], compress: bool = False) -> bytes:
    """Serializes a record; `compress` stores image fields (`IMAGE_FIELDS`) as PNG."""
    fields, chunks, offset = {}, [], 0
    for name, value in record.items():
        _check_field(name, value)
        if isinstance(value, str):
            fields[name] = ["str", None, None, value, 0]
            continue
        if isinstance(value, (bool, int, np.integer)):
            fields[name] = ["int", None, None, int(value), 0]
            continue
        if isinstance(value, (float, np.floating)):
            fields[name] = ["float", None, None, float(value), 0]
            continue
        arr = np.ascontiguousarray(value)
        if compress and name in IMAGE_FIELDS and arr.dtype == np.uint8:
            if name == "clip":  # T x H x W x C: one PNG per frame
                frames = arr.reshape((-1,) + arr.shape[-3:])
            elif name == "patches":  # N_l x P x P: tiled into one N_l*P x P grey image
                frames = arr.reshape(1, -1, arr.shape[-1], 1)
            else:  # H x W x C
                frames = arr.reshape((1,) + arr.shape[:2] + (-1,))
            data = [_png_encode(f) for f in frames]
            lens = [len(d) for d in data]
            blob = b"".join(data)
            fields[name] = ["png", "uint8", list(arr.shape), offset, len(blob), lens]
        else:
            blob = arr.tobytes()
            fields[name] = ["raw", arr.dtype.str, list(arr.shape), offset, len(blob)]
        chunks.append(blob)
        offset += len(blob)
    header = json.dumps({"fields": fields}, separators=(",", ":")).encode()
    return _HEADER.pack(MAGIC, SCHEMA_VERSION, len(header)) + header + b"".join(chunks)


def read_header(data: bytes) -> tuple[int, dict, int]:
    """Returns (version, header dict, payload offset); raises SchemaError on a foreign record."""
    if len(data) < _HEADER.size:
        raise ForeignRecord(f"record of {len(data)} bytes is too short to be a fergate record")
    magic, version, hlen = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ForeignRecord("not a fergate record (bad magic); was it written by another tool?")
    if version != SCHEMA_VERSION:
        raise ForeignRecord(
            f"record has schema version {version}, this fergate reads version {SCHEMA_VERSION}; "
            "re-run `fergate prep` with this version"
        )
    return version, json.loads(data[_HEADER.size : _HEADER.size + hlen]), _HEADER.size + hlen


def decode(data: bytes, fields: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Deserializes a record (only `fields`, when given: the rest is never decoded)."""
    _, header, base = read_header(data)
    out: dict[str, Any] = {}
    view = memoryview(data)
    for name, meta in header["fields"].items():
        if fields is not None and name not in fields:
            continue
        enc, dtype, shape, offset, nbytes = meta[:5]
        if enc in ("str", "int", "float"):
            out[name] = offset
        elif enc == "raw":
            out[name] = np.frombuffer(view[base + offset : base + offset + nbytes], dtype).reshape(shape)
        elif enc == "png":
            start, frames = base + offset, []
            for n in meta[5]:
                frames.append(_png_decode(bytes(view[start : start + n]), (-1,)))
                start += n
            out[name] = np.concatenate(frames).reshape(shape)
        else:
            raise SchemaError(f"field {name!r} has unknown encoding {enc!r}")
    if fields is not None:
        missing = [f for f in fields if f not in out]
        if missing:
            raise SchemaError(f"record lacks fields {missing}; it has {sorted(header['fields'])}")
    return out
