"""Every tensor of a published state dict, converted into fergate's layout, and back.

The layer kinds, each one function (`to_fergate`) with its inverse shape (`source_shape`):

- convolution kernels: PyTorch's O x I x [D x] H x W -> flax's [D x] H x W x I x O; a grouped
  convolution's I is already in-channels per group in both;
- dense kernels: O x I -> I x O; the first one after a flatten also reorders its inputs,
  since PyTorch flattens (C, [T,] H, W) and fergate (NHWC) ([T,] H, W, C);
- BatchNorm: weight -> params scale, bias -> params bias, running_mean / running_var ->
  batch_stats mean / var; `num_batches_tracked` (PyTorch's counter) is read and dropped;
- biases as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax
import jax
import numpy as np

from fergate.errors import UserError
from fergate.weights.archs import Arch

#: fergate's leaf name -> the source's, per collection
LEAF_NAMES = {("params", "kernel"): "weight", ("params", "bias"): "bias", ("params", "scale"): "weight",
              ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
#: a BatchNorm's counter in PyTorch state dicts: consumed, not loaded
COUNTER = "num_batches_tracked"


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """O x I x [D x] H x W -> [D x] H x W x I x O."""
    return np.transpose(w, (*range(2, w.ndim), 1, 0))


def dense_kernel(w: np.ndarray) -> np.ndarray:
    """O x I -> I x O."""
    return np.transpose(w)


def flattened_dense_kernel(w: np.ndarray, spatial: tuple[int, ...], channels: int) -> np.ndarray:
    """A dense layer on flattened maps: O x (C * S) with the inputs in PyTorch's (C, *S)
    order -> (S * C) x O in fergate's (*S, C) order."""
    o = w.shape[0]
    w = w.reshape(o, channels, *spatial)
    return np.transpose(w, (*range(2, w.ndim), 1, 0)).reshape(-1, o)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One source tensor and the fergate leaf it fills."""

    source: str
    collection: str
    path: tuple[str, ...]  #: module path and leaf name within the collection
    shape: tuple[int, ...]  #: the fergate leaf's shape
    flattened: tuple | None = None  #: (spatial, channels) of a dense layer reading flattened maps

    @property
    def source_shape(self) -> tuple[int, ...]:
        s = self.shape
        if self.path[-1] != "kernel":
            return s
        if len(s) == 2:
            return (s[1], s[0])
        return (s[-1], s[-2], *s[:-2])

    def convert(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float32)
        if self.path[-1] != "kernel":
            return a
        if a.ndim == 2:
            return flattened_dense_kernel(a, *self.flattened) if self.flattened else dense_kernel(a)
        return conv_kernel(a)


def entries(arch: Arch, shapes: Mapping) -> list[Entry]:
    """The mapping of `arch` from its network's variable shapes: one entry per leaf."""
    out = []
    for collection, tree in shapes.items():
        for path, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items():
            module, name = path[:-1], path[-1]
            out.append(Entry(f"{arch.source(module)}.{LEAF_NAMES[collection, name]}", collection, tuple(path),
                             tuple(leaf.shape), arch.flattened.get(module)))
    return out


def network_shapes(arch: Arch, num_classes: int):
    """(module, its variables' shapes) with `num_classes` outputs, at the native input."""
    module = arch.build(num_classes)
    x = jax.ShapeDtypeStruct((1, *arch.input_shape), np.uint8)
    return module, jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)


@dataclasses.dataclass
class Report:
    """How a state dict maps onto `arch`: the entries found with the right shape, those
    missing, those of another shape, and the file's tensors no entry reads."""

    arch: str
    num_classes: int
    used: list[Entry]
    missing: list[Entry]
    misshaped: list[tuple[Entry, tuple]]  #: (entry, the file's shape)
    extra: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.misshaped or self.extra)

    def error(self, path: str) -> str:
        """The first problem, in one line naming the tensor."""
        if self.misshaped:
            e, got = self.misshaped[0]
            return (f"weights file {path}: tensor {e.source} has shape {tuple(got)}, the {self.arch} layout "
                    f"{e.source_shape}")
        if self.missing:
            return (f"weights file {path}: tensor {self.missing[0].source} missing (the {self.arch} layout; "
                    f"{len(self.missing)} missing in all)")
        return (f"weights file {path}: tensor {self.extra[0]} is not part of the {self.arch} layout "
                f"({len(self.extra)} extra in all)")


def match(arch: Arch, tensors: Mapping[str, np.ndarray]) -> tuple[Report, object]:
    """(report, the network built as wide as the file's classifier) of `tensors` against `arch`."""
    tensors = {arch.rename(k): v for k, v in tensors.items()}
    rows = tensors.get(arch.classes)
    num_classes = int(rows.shape[0]) if rows is not None and rows.ndim >= 1 else 1
    module, shapes = network_shapes(arch, num_classes)
    used, missing, misshaped = [], [], []
    for e in entries(arch, shapes):
        a = tensors.get(e.source)
        if a is None:
            missing.append(e)
        elif tuple(a.shape) != e.source_shape:
            misshaped.append((e, tuple(a.shape)))
        else:
            used.append(e)
    read = {e.source for e in used} | {e.source for e in missing} | {e.source for e, _ in misshaped}
    bn = {e.source.rpartition(".")[0] for e in (*used, *missing) if e.collection == "batch_stats"}
    extra = [k for k in sorted(tensors) if k not in read and not (k.endswith("." + COUNTER) and
                                                                 k.rpartition(".")[0] in bn)]
    return Report(arch.name, num_classes, used, missing, misshaped, extra), module


def to_variables(report: Report, tensors: Mapping[str, np.ndarray], arch: Arch) -> dict:
    """{collection: nested dict} of the converted tensors (a report without problems)."""
    tensors = {arch.rename(k): v for k, v in tensors.items()}
    flat = {(e.collection, *e.path): e.convert(tensors[e.source]) for e in report.used}
    return flax.traverse_util.unflatten_dict(flat)


def require(report: Report, path: str) -> None:
    if not report.ok:
        raise UserError(report.error(path))
