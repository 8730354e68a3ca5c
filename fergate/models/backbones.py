"""Published backbones the papers start from, at their published sizes: the VGG-16 of THIN's
expression and identity networks (paper 003, 4.3), the DenseNet-121 of VSHNN's frame CNN
(paper 004, 3.2), and its 3D CNNs (3.3): C3D, ResNet3D-18 and ResNeXt3D-101. Each computes
what its source computes (layers, padding, pooling, the input normalisation its weights
expect: `NORMS`), so that the published weights (`fergate.weights`) load onto it."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fergate.models.layers import Layer, conv3_im2col

#: input normalisations of uint8 RGB pixels p, as the weights' sources train on them:
#: (scale, mean, std) per channel, x = (p / scale - mean) / std
NORMS = {
    "unit": (127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),  # fergate's from-scratch default: [-1, 1]
    "imagenet": (255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's VGG-16, DenseNet-121
    "vggface": (1.0, (129.186, 104.762, 93.594), (1.0, 1.0, 1.0)),  # VGG-Face: 0-255 minus its mean RGB face
    "raw": (1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # the C3D port: 0-255 as read
    "kinetics": (255.0, (0.4345, 0.4051, 0.3775), (0.2768, 0.2713, 0.2737)),  # 3D-ResNets (Kinetics mean / std)
}


def normalize(pixels: jax.Array, norm: str, dtype=jnp.float32) -> jax.Array:
    """uint8 pixels (..., C) as the weights of `norm` (`NORMS`) expect them; a grey input
    (C = 1) takes the mean of the RGB constants."""
    if norm not in NORMS:
        raise ValueError(f"unknown input normalisation {norm!r}: {', '.join(NORMS)}")
    scale, mean, std = NORMS[norm]
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if pixels.shape[-1] != 3:
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    x = pixels.astype(jnp.float32) / scale
    return ((x - mean) / std).astype(dtype)


class VGG16(Layer):
    """VGG-16's 13 convolutions (Simonyan & Zisserman 2015, configuration D): 5 blocks of
    Conv3x3 'same' - ReLU (64 x 2, 128 x 2, 256 x 3, 512 x 3, 512 x 3), each followed by a
    2 x 2 max pool; the maps flattened (7 x 7 x 512 = 25088 at 224). THIN's representation
    layer (paper 003, 4.3); layers named as VGG-Face's (conv1_1 ... conv5_3). Reads uint8
    pixels, normalised by `norm`."""

    blocks: Sequence[Sequence[int]] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
    norm: str = "imagenet"

    @nn.compact
    def __call__(self, pixels, train: bool = False):
        x = normalize(pixels, self.norm, self.dtype)
        for b, widths in enumerate(self.blocks, 1):
            for i, f in enumerate(widths, 1):
                x = nn.relu(nn.Conv(f, (3, 3), padding=1, dtype=self.dtype, name=f"conv{b}_{i}")(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        return x.reshape(x.shape[0], -1)


class DenseNet(Layer):
    """DenseNet-121 (Huang et al. 2017: growth 32, blocks 6-12-24-16, bottleneck 4 x growth,
    compression 0.5), BN - ReLU after the last block, torchvision's layers (max pool 3/2
    padded 1 after the stem; BN epsilon 1e-5). Without `pool`, no global average pooling:
    the paper's DenseNet-FC replaces it by two FC layers on the flattened maps; with it,
    torchvision's 1024-d feature."""

    blocks: Sequence[int] = (6, 12, 24, 16)
    growth: int = 32
    bottleneck: int = 4
    stem: int = 64
    pool: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        def bn_relu(y, name):
            return nn.relu(nn.BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)(y))

        x = nn.Conv(self.stem, (7, 7), 2, padding=3, use_bias=False, dtype=self.dtype, name="conv0")(x)
        x = nn.max_pool(bn_relu(x, "norm0"), (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for b, layers in enumerate(self.blocks):
            for i in range(layers):
                y = nn.Conv(self.bottleneck * self.growth, (1, 1), use_bias=False, dtype=self.dtype,
                            name=f"block{b}_layer{i}_conv1")(bn_relu(x, f"block{b}_layer{i}_norm1"))
                y = nn.Conv(self.growth, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                            name=f"block{b}_layer{i}_conv2")(bn_relu(y, f"block{b}_layer{i}_norm2"))
                x = jnp.concatenate([x, y], -1)
            if b < len(self.blocks) - 1:  # transition: halve the channels and the resolution
                x = nn.Conv(x.shape[-1] // 2, (1, 1), use_bias=False, dtype=self.dtype,
                            name=f"transition{b}_conv")(bn_relu(x, f"transition{b}_norm"))
                x = nn.avg_pool(x, (2, 2), (2, 2))
        x = bn_relu(x, "norm5")
        return x.mean((1, 2)) if self.pool else x.reshape(x.shape[0], -1)


def max_pool3d(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """Non-overlapping max pool over (T, H, W) of (B, T, H, W, C), rounding up: an axis the
    window does not divide is padded with -inf at its start, as the C3D port's pool5
    (padding 1 on both sides, the last window dropped) takes 7 -> 4 from the windows
    (pad, 0), (1, 2), (3, 4), (5, 6). A reshape + max, whose gradient is a cheap mask where
    reduce_window's select-and-scatter is not."""
    pads = [(0, 0)] + [(-s % k, 0) for s, k in zip(x.shape[1:4], window)] + [(0, 0)]
    if any(p for p, _ in pads):
        x = jnp.pad(x, pads, constant_values=-jnp.inf)
    b, t, h, w, c = x.shape
    (kt, kh, kw) = window
    return x.reshape(b, t // kt, kt, h // kh, kh, w // kw, kw, c).max(axis=(2, 4, 6))


class Conv3D(Layer):
    """A 3x3x3 'same' convolution with bias (kernel DHWIO, as `nn.Conv`'s): by im2col on a CPU
    when the input has few channels, else XLA's convolution (cuDNN's on a GPU)."""

    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if x.shape[-1] <= 4 and jax.default_backend() == "cpu":
            y = conv3_im2col(x, kernel)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), "SAME",
                                             dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        return y + bias.astype(self.dtype)


class C3D(Layer):
    """C3D-style 3D CNN (Tran et al. 2015): stages of Conv3x3x3 - ReLU, each followed by a
    max pool (`pools`: C3D's first keeps time, 1x2x2; the rest 2x2x2), flattened (T, H, W,
    C). With `downsample` k > 1 the clip is first average-pooled k x k in space (the CPU
    default reads 64 x 64 clips at 32 x 32: a 4x cheaper network). `norm`: the input
    normalisation (`NORMS`; the Sports-1M port's weights read 0-255 RGB, "raw")."""

    stages: Sequence[Sequence[int]]
    pools: Sequence[Sequence[int]]
    downsample: int = 1
    norm: str = "unit"

    @nn.compact
    def __call__(self, clip):
        x = normalize(clip, self.norm, self.dtype)
        if self.downsample > 1:
            b, t, h, w, c = x.shape
            k = self.downsample
            x = x[:, :, : h // k * k, : w // k * k].reshape(b, t, h // k, k, w // k, k, c).mean((3, 5))
        for s, (widths, pool) in enumerate(zip(self.stages, self.pools)):
            for i, f in enumerate(widths):
                x = nn.relu(Conv3D(f, dtype=self.dtype, name=f"conv{s}_{i}")(x))
            x = max_pool3d(x, pool)
        return x.reshape(x.shape[0], -1)


#: C3D (Tran et al. 2015): conv1 | conv2 | conv3a-b | conv4a-b | conv5a-b, pools 1x2x2 then 2x2x2
C3D_STAGES = ((64,), (128,), (256, 256), (512, 512), (512, 512))
C3D_POOLS = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))


class ResBlock3D(Layer):
    """One residual block of 3D-ResNets (Hara et al. 2018), shortcut type B (a strided
    1x1x1 conv - BN where the shape changes). `cardinality` 0: the basic block (Conv3x3x3 -
    BN - ReLU - Conv3x3x3 - BN); else ResNeXt's bottleneck (Conv1x1x1 to cardinality x
    planes / 32 - BN - ReLU - grouped Conv3x3x3 - BN - ReLU - Conv1x1x1 to 2 planes - BN);
    then the sum and a ReLU. Padding as the source's: 1 on both sides, at any stride."""

    planes: int
    stride: int = 1
    cardinality: int = 0

    @nn.compact
    def __call__(self, x, train: bool):
        def conv(y, f, k, stride=1, groups=1, name=None):
            return nn.Conv(f, (k,) * 3, (stride,) * 3, padding=((k // 2, k // 2),) * 3, feature_group_count=groups,
                           use_bias=False, dtype=self.dtype, name=name)(y)

        def bn(y, name):
            return nn.BatchNorm(use_running_average=not train, epsilon=1e-5, dtype=self.dtype, name=name)(y)

        if self.cardinality:
            mid, out = self.cardinality * self.planes // 32, 2 * self.planes
            y = nn.relu(bn(conv(x, mid, 1, name="conv1"), "bn1"))
            y = nn.relu(bn(conv(y, mid, 3, self.stride, self.cardinality, name="conv2"), "bn2"))
            y = bn(conv(y, out, 1, name="conv3"), "bn3")
        else:
            out = self.planes
            y = nn.relu(bn(conv(x, out, 3, self.stride, name="conv1"), "bn1"))
            y = bn(conv(y, out, 3, name="conv2"), "bn2")
        if self.stride != 1 or x.shape[-1] != out:
            x = bn(conv(x, out, 1, self.stride, name="downsample_conv"), "downsample_bn")
        return nn.relu(y + x)


class ResNet3D(Layer):
    """3D-ResNets' ResNet / ResNeXt on clips (B, T, H, W, C) uint8: Conv 7x7x7 stride
    (1, 2, 2) - BN - ReLU - max pool 3 / 2 (padded 1), four stages of `ResBlock3D` (the first
    block of stages 2-4 at stride 2), global average pooling. ResNet3D-18: layers 2-2-2-2,
    widths 64-128-256-512 (512-d); ResNeXt3D-101: 3-4-23-3, widths 128-256-512-1024,
    cardinality 32 (2048-d). Input normalised by `norm` (3D-ResNets: Kinetics mean / std)."""

    layers: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    cardinality: int = 0
    stem: int = 64
    norm: str = "kinetics"

    @nn.compact
    def __call__(self, clip, train: bool = False):
        x = normalize(clip, self.norm, self.dtype)
        x = nn.Conv(self.stem, (7, 7, 7), (1, 2, 2), padding=((3, 3),) * 3, use_bias=False, dtype=self.dtype,
                    name="conv1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, epsilon=1e-5, dtype=self.dtype, name="bn1")(x))
        x = nn.max_pool(x, (3, 3, 3), (2, 2, 2), padding=((1, 1),) * 3)
        for s, (n, planes) in enumerate(zip(self.layers, self.widths), 1):
            for i in range(n):
                x = ResBlock3D(planes, 2 if (s > 1 and i == 0) else 1, self.cardinality, dtype=self.dtype,
                               name=f"layer{s}_{i}")(x, train)
        return x.mean((1, 2, 3))


#: the 3D CNNs of VSHNN's Table 2 beside C3D: ResNet3D-18 and ResNeXt3D-101 (3D-ResNets' sizes)
RESNETS_3D = {
    "resnet3d18": dict(layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), cardinality=0),
    "resnext3d101": dict(layers=(3, 4, 23, 3), widths=(128, 256, 512, 1024), cardinality=32),
}
