"""The published networks `fergate.weights` reads, whole (trunk and classifier), and how
each of their layers is named in its source's state dict.

An `Arch` builds the network (its classifier as wide as the file's) and names, for every
fergate module path, the source's prefix (`source`): `torchvision.models.vgg16()`'s
`features.N` / `classifier.N`, the VGG-Face conversion's `conv1_1` ... `fc8`,
`torchvision.models.densenet121()`'s `features.denseblockB.denselayerL.*`, the C3D port's
`conv1` ... `fc8`, 3D-ResNets' `layerS.I.*`. The network's variables, walked leaf by leaf,
give the whole mapping (`fergate.weights.convert`), so a layer cannot be left out.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fergate.models import backbones
from fergate.models.layers import MLP, Layer


class VGGNet(Layer):
    """VGG-16: its 13 convolutions (`backbones.VGG16`, "convs"), fc6 - ReLU - fc7 - ReLU
    ("mlp": dense0, dense1) and fc8 ("out"); features: fc7 after its ReLU (4096)."""

    num_classes: int
    norm: str = "imagenet"
    blocks: Sequence[Sequence[int]] = backbones.VGG16.blocks
    fc: Sequence[int] = (4096, 4096)

    @nn.compact
    def __call__(self, images, train: bool = False):
        h = MLP(self.fc, name="mlp")(backbones.VGG16(self.blocks, self.norm, name="convs")(images))
        return h, nn.Dense(self.num_classes, name="out")(h)


class DenseNetNet(Layer):
    """DenseNet-121 (`backbones.DenseNet`, "densenet", globally average-pooled) and its
    classifier; features: the pooled trunk (1024)."""

    num_classes: int
    growth: int = 32
    blocks: Sequence[int] = (6, 12, 24, 16)
    stem: int = 64

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = backbones.normalize(images, "imagenet")
        h = backbones.DenseNet(self.blocks, self.growth, stem=self.stem, pool=True, name="densenet")(x, train)
        return h, nn.Dense(self.num_classes, name="classifier")(h)


class C3DNet(Layer):
    """C3D (`backbones.C3D`, "convs", 0-255 input), fc6 - ReLU - fc7 - ReLU - fc8; features:
    fc7 after its ReLU (4096)."""

    num_classes: int
    stages: Sequence[Sequence[int]] = backbones.C3D_STAGES
    fc: Sequence[int] = (4096, 4096)

    @nn.compact
    def __call__(self, clips, train: bool = False):
        h = backbones.C3D(self.stages, backbones.C3D_POOLS, norm="raw", name="convs")(clips)
        h = nn.relu(nn.Dense(self.fc[0], name="fc6")(h))
        h = nn.relu(nn.Dense(self.fc[1], name="fc7")(h))
        return h, nn.Dense(self.num_classes, name="fc8")(h)


class ResNet3DNet(Layer):
    """A 3D-ResNets network: its trunk (a `backbones.ResNet3D`, "resnet", e.g. of
    `backbones.RESNETS_3D`'s sizes) and fc; features: the pooled trunk."""

    num_classes: int
    resnet: backbones.ResNet3D

    @nn.compact
    def __call__(self, clips, train: bool = False):
        h = self.resnet(clips, train)
        return h, nn.Dense(self.num_classes, name="fc")(h)


def _resnet3d(name: str) -> Callable[[int], ResNet3DNet]:
    """The network of 3D-ResNets' `name` (`backbones.RESNETS_3D`) with k classes."""
    return lambda k: ResNet3DNet(k, backbones.ResNet3D(**backbones.RESNETS_3D[name]))


@dataclasses.dataclass(frozen=True)
class Arch:
    """A published network: `build(num_classes)` its flax module, `source(path)` the
    state-dict prefix of the fergate module at `path` (a tuple of names), `classes` the
    tensor whose rows are the classes, `input_shape` its native input (uint8 RGB),
    `flattened` {fergate module path: (spatial shape, channels)} of a Dense reading
    flattened maps, `signature` a tensor only this layout has (`detect`), `rename` the
    file's older names made current (torchvision's DenseNet `norm.1` -> `norm1`)."""

    name: str
    build: Callable[[int], nn.Module]
    source: Callable[[tuple[str, ...]], str]
    classes: str
    input_shape: tuple[int, ...]
    signature: str
    flattened: dict = dataclasses.field(default_factory=dict)
    rename: Callable[[str], str] = staticmethod(lambda k: k)
    what: str = ""  #: where the weights come from, for messages and the README


# ----------------------------------------------------------------------------- names
def _torchvision_vgg_index() -> dict[str, int]:
    """conv{b}_{i} -> its index in torchvision's `features` Sequential (Conv2d, ReLU per
    convolution, a MaxPool2d after each block)."""
    out, k = {}, 0
    for b, widths in enumerate(backbones.VGG16.blocks, 1):
        for i in range(1, len(widths) + 1):
            out[f"conv{b}_{i}"] = k
            k += 2  # Conv2d, ReLU
        k += 1  # MaxPool2d
    return out


TORCHVISION_VGG = _torchvision_vgg_index()
#: torchvision's VGG classifier: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
VGG_FC = {("mlp", "dense0"): ("classifier.0", "fc6"), ("mlp", "dense1"): ("classifier.3", "fc7"),
          ("out",): ("classifier.6", "fc8")}


def vgg16_source(path: tuple[str, ...]) -> str:
    if path[0] == "convs":
        return f"features.{TORCHVISION_VGG[path[1]]}"
    return VGG_FC[path][0]


def vggface_source(path: tuple[str, ...]) -> str:
    return path[1] if path[0] == "convs" else VGG_FC[path][1]


def densenet_source(path: tuple[str, ...]) -> str:
    if path == ("classifier",):
        return "classifier"
    name = path[1]
    if m := re.fullmatch(r"block(\d+)_layer(\d+)_(norm|conv)(\d)", name):
        b, i, kind, n = m.groups()
        return f"features.denseblock{int(b) + 1}.denselayer{int(i) + 1}.{kind}{n}"
    if m := re.fullmatch(r"transition(\d+)_(norm|conv)", name):
        return f"features.transition{int(m[1]) + 1}.{m[2]}"
    return f"features.{name}"  # conv0, norm0, norm5


def densenet_rename(key: str) -> str:
    """torchvision's published DenseNet files name `denselayerL.norm.1.weight` what its
    current module names `denselayerL.norm1.weight` (torchvision rewrites them on load too)."""
    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.", key)


#: C3D's stage s, conv i (fergate `conv{s}_{i}`) -> the port's layer
C3D_NAMES = {f"conv{s}_{i}": f"conv{s + 1}{'ab'[i] if len(w) > 1 else ''}"
             for s, w in enumerate(backbones.C3D_STAGES) for i in range(len(w))}


def c3d_source(path: tuple[str, ...]) -> str:
    return C3D_NAMES[path[1]] if path[0] == "convs" else path[0]


def resnet3d_source(path: tuple[str, ...]) -> str:
    if path[0] == "fc":
        return "fc"
    *blocks, layer = path[1:]
    if not blocks:
        return layer  # conv1, bn1
    stage, i = blocks[0].removeprefix("layer").split("_")
    layer = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(layer, layer)
    return f"layer{stage}.{i}.{layer}"


# ----------------------------------------------------------------------------- the archs
ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("vgg16", lambda k: VGGNet(k, "imagenet"), vgg16_source, "classifier.6.weight", (224, 224, 3),
         "classifier.6.weight", {("mlp", "dense0"): ((7, 7), 512)},
         what="torchvision's VGG-16 on ImageNet (vgg16-397923af.pth; features.N, classifier.N)"),
    Arch("vggface", lambda k: VGGNet(k, "vggface"), vggface_source, "fc8.weight", (224, 224, 3), "conv1_1.weight",
         {("mlp", "dense0"): ((7, 7), 512)},
         what="the Oxford VGG-Face network in its PyTorch conversion (vgg_face_dag.pth; conv1_1 ... fc8)"),
    Arch("densenet121", DenseNetNet, densenet_source, "classifier.weight", (224, 224, 3),
         "features.denseblock1.denselayer1.conv1.weight", rename=densenet_rename,
         what="torchvision's DenseNet-121 on ImageNet (densenet121-a639ec97.pth)"),
    Arch("c3d", C3DNet, c3d_source, "fc8.weight", (16, 112, 112, 3), "conv3a.weight",
         {("fc6",): ((1, 4, 4), 512)},
         what="C3D on Sports-1M in its PyTorch port's layout (c3d.pickle; conv1 ... fc8)"),
    Arch("resnet3d18", _resnet3d("resnet3d18"), resnet3d_source, "fc.weight",
         (16, 112, 112, 3), "layer1.0.conv2.weight",
         what="3D-ResNets' ResNet-18 on Kinetics (r3d18_K_200ep.pth; conv1, layerS.I.*, fc)"),
    Arch("resnext3d101", _resnet3d("resnext3d101"), resnet3d_source,
         "fc.weight", (16, 112, 112, 3), "layer1.0.conv3.weight",
         what="3D-ResNets' ResNeXt-101 (cardinality 32) on Kinetics (resnext-101-kinetics.pth)"),
)}


def get(arch: str | Arch) -> Arch:
    """`arch` itself, or the architecture it names (a UserError naming those fergate reads otherwise)."""
    from fergate.errors import UserError

    if isinstance(arch, Arch):
        return arch
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; fergate reads {', '.join(ARCHS)}")
    return ARCHS[arch]


def detect(keys) -> str | None:
    """The arch whose layout `keys` (a state dict's names) follows, by a tensor only that
    layout has (ResNet3D-18 has no conv3 in layer1; DenseNet's older names count too)."""
    keys = set(keys)
    found = [a.name for a in ARCHS.values() if a.signature in {a.rename(k) for k in keys}]
    if "resnext3d101" in found and "resnet3d18" in found:
        found.remove("resnet3d18")
    return found[0] if len(found) == 1 else None


def zeros_input(arch: Arch, n: int = 1) -> jnp.ndarray:
    return jnp.zeros((n, *arch.input_shape), jnp.uint8)
