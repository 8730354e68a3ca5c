"""State dicts on disk: {tensor name: array} from a `.safetensors` file (read here, without
the safetensors package: an 8-byte header length, a JSON header of names, dtypes, shapes and
byte offsets, then the bytes), an `.npz` of the same names, or a PyTorch `.pth` (read with
torch when it is installed; it is no dependency of fergate)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from fergate.errors import UserError

#: safetensors dtype names <-> numpy
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
SUFFIXES = (".safetensors", ".npz", ".pth", ".pt")


def read(path: str) -> dict[str, np.ndarray]:
    """The state dict in `path` by its suffix; a checkpoint dict holding one under
    "state_dict" (3D-ResNets') is unwrapped, and DataParallel's "module." prefix removed."""
    if not os.path.isfile(path):
        raise UserError(f"weights file {path} not found")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        tensors = read_safetensors(path)
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                tensors = {k: z[k] for k in z.files}
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise UserError(f"weights file {path}: not a readable .npz ({e})") from None
    elif suffix in (".pth", ".pt"):
        tensors = read_torch(path)
    else:
        raise UserError(f"weights file {path}: expected {', '.join(SUFFIXES)}")
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        raw = f.read(8)
        try:
            (n,) = struct.unpack("<Q", raw)
            if n > os.path.getsize(path) - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(n))
        except (struct.error, ValueError) as e:
            raise UserError(f"weights file {path}: not a safetensors file ({e})") from None
        data = f.read()
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(spec.get("dtype"))
        begin, end = spec["data_offsets"]
        if dtype is None or end > len(data) or begin > end:
            raise UserError(f"weights file {path}: tensor {name} has dtype {spec.get('dtype')} or offsets "
                            f"{spec['data_offsets']} this reader cannot take")
        out[name] = np.frombuffer(data[begin:end], dtype).reshape(spec["shape"])
    return out


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
    """`tensors` as a safetensors file (what `fergate.weights` reads; tests, conversions)."""
    names = {np.dtype(v): k for k, v in DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a.tobytes())
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise UserError(f"weights file {path}: reading a .pth needs PyTorch, which fergate does not install; convert "
                        "it on a machine with torch to .safetensors (README, 'Pretrained backbones') or install "
                        "torch") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's
        raise UserError(f"weights file {path}: torch cannot read it ({str(e).splitlines()[0]})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise UserError(f"weights file {path}: holds a {type(obj).__name__}, not a state dict")
    return {k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
            for k, v in obj.items() if hasattr(v, "detach")}


def sha256(path: str) -> str:
    """SHA-256 of a file's bytes (what an export records of the weights a model started from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
