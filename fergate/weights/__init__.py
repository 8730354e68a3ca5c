"""Published pretrained backbones, read exactly: the weights THIN (paper 003, 4.3) and VSHNN
(paper 004, 3.2-3.3) start from.

    variables = fergate.weights.load("vgg_face_dag.safetensors", "vggface")
    feats = fergate.weights.features("vggface", variables, images)  # uint8 RGB N x 224 x 224 x 3

Archs (`ARCHS`): vgg16 and vggface (features: fc7 after ReLU, 4096), densenet121 (the pooled
trunk, 1024), c3d (fc7 after ReLU, 4096; clips 16 x 112 x 112), resnet3d18 and resnext3d101
(the pooled trunk, 512 / 2048). Files: `.safetensors` and `.npz` of the source's state dict,
or its `.pth` when PyTorch is installed. Every tensor of the file is used once: a missing,
extra or mis-shaped tensor is a one-line `UserError` naming it (`inspect` lists them all).
Training loads them with `--config.init.weights` (`fergate.weights.init`).
"""

from __future__ import annotations

import jax
import numpy as np

from fergate.errors import UserError
from fergate.weights import convert, files
from fergate.weights.archs import ARCHS, Arch, detect, get

__all__ = ["ARCHS", "Arch", "detect", "features", "inspect", "load", "read"]


def read(path: str, arch: str | Arch | None = None) -> tuple[Arch, dict[str, np.ndarray]]:
    """(the arch, the state dict) of `path`; without `arch`, the one its layout follows."""
    tensors = files.read(path)
    if arch is None:
        name = detect(tensors)
        if name is None:
            raise UserError(f"weights file {path}: its {len(tensors)} tensors follow none of the layouts fergate reads "
                            f"({', '.join(ARCHS)}); name one with --arch to see what differs")
        arch = name
    return get(arch), tensors


def load(path: str, arch: str | Arch | None = None) -> dict:
    """The variables ({"params", "batch_stats"}) of the network `arch` from the state dict in
    `path`, converted (`fergate.weights.convert`); the classifier as wide as the file's."""
    arch, tensors = read(path, arch)
    report, _ = convert.match(arch, tensors)
    convert.require(report, path)
    return convert.to_variables(report, tensors, arch)


def network(arch: str | Arch, variables: dict):
    """The flax module of `arch` for `variables` (its classifier's width read from them)."""
    arch = get(arch)
    kernels = _classifier_leaves(arch, variables)
    if len(kernels) != 1:
        raise UserError(f"these variables are not a {arch.name} network's (no {arch.classes} among them)")
    return arch.build(int(np.shape(kernels[0][1])[-1]))


def _classifier_leaves(arch: Arch, variables: dict):
    """The kernel of the last layer (the one `arch.classes` names)."""
    from flax.traverse_util import flatten_dict

    want = arch.classes.removesuffix(".weight")
    return [(p, x) for p, x in flatten_dict(variables["params"]).items()
            if p[-1] == "kernel" and arch.source(p[:-1]) == want]


def features(arch: str | Arch, variables: dict, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """The network's penultimate features of uint8 RGB `images` (N x H x W x 3 at the native
    size; clips N x 16 x 112 x 112 x 3), normalised inside as the weights' source expects."""
    arch = get(arch)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != arch.input_shape:
        raise UserError(f"{arch.name} reads uint8 RGB of shape N x {' x '.join(map(str, arch.input_shape))}, got "
                        f"{images.dtype} {images.shape}")
    module = network(arch, variables)
    apply = jax.jit(lambda v, x: module.apply(v, x, train=False)[0])
    return np.concatenate([np.asarray(apply(variables, images[i : i + batch_size]))
                           for i in range(0, len(images), batch_size)])


def inspect(path: str, arch: str | None = None) -> tuple[convert.Report, list[str]]:
    """(report, lines): every tensor of `path` and the fergate leaf it fills, then what is
    missing, mis-shaped or extra: what `fergate weights inspect` prints."""
    arch, tensors = read(path, arch)
    report, _ = convert.match(arch, tensors)
    n = sum(int(np.size(v)) for v in tensors.values())
    lines = [f"{path}: {len(tensors)} tensors, {n:,} values; layout {arch.name} ({arch.what}), "
             f"{report.num_classes} classes"]
    for e in report.used:
        how = "flattened (C,S)->(S,C), " if e.flattened else ""
        lines.append(f"  {e.source:<52} {str(e.source_shape):<22} -> {e.collection}/{'/'.join(e.path)} "
                     f"{how}{e.shape}")
    for e in report.missing:
        lines.append(f"  MISSING {e.source} {e.source_shape} (for {e.collection}/{'/'.join(e.path)})")
    for e, got in report.misshaped:
        lines.append(f"  MIS-SHAPED {e.source}: {got} in the file, {e.source_shape} in the layout")
    for k in report.extra:
        lines.append(f"  EXTRA {k} (not read)")
    lines.append("ok: every tensor maps onto the network" if report.ok else
                 f"not loadable: {len(report.missing)} missing, {len(report.misshaped)} mis-shaped, "
                 f"{len(report.extra)} extra")
    return report, lines
