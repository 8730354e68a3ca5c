"""Published backbones the papers start from, at their published sizes and layer names: the
DenseNet-121 of VSHNN's frame CNN (paper 004, 3.2) and the C3D of its 3D CNN (3.3). Their
shapes follow the original definitions so that published weights map onto them."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fergate.models.layers import Layer, conv3_im2col


class DenseNet(Layer):
    """DenseNet-121 (Huang et al. 2017: growth 32, blocks 6-12-24-16, bottleneck 4 x growth,
    compression 0.5), BN - ReLU after the last block and no global average pooling: the
    paper's DenseNet-FC replaces it by two FC layers on the flattened maps."""

    blocks: Sequence[int] = (6, 12, 24, 16)
    growth: int = 32
    bottleneck: int = 4
    stem: int = 64

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
        return x.reshape(x.shape[0], -1)


def max_pool3d(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """Non-overlapping max pool over (T, H, W) of (B, T, H, W, C), rounding up (the end
    padded with -inf, as C3D's pool5 pads 7 -> 4): a reshape + max, whose gradient is a
    cheap mask where reduce_window's select-and-scatter is not."""
    pads = [(0, 0)] + [(0, -s % k) for s, k in zip(x.shape[1:4], window)] + [(0, 0)]
    if any(p for _, p in pads):
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
    max pool (`pools`: C3D's first keeps time, 1x2x2; the rest 2x2x2), flattened. With
    `downsample` k > 1 the clip is first average-pooled k x k in space (the CPU default
    reads 64 x 64 clips at 32 x 32: a 4x cheaper network)."""

    stages: Sequence[Sequence[int]]
    pools: Sequence[Sequence[int]]
    downsample: int = 1

    @nn.compact
    def __call__(self, clip):
        x = clip.astype(self.dtype) / 127.5 - 1.0
        if self.downsample > 1:
            b, t, h, w, c = x.shape
            k = self.downsample
            x = x[:, :, : h // k * k, : w // k * k].reshape(b, t, h // k, k, w // k, k, c).mean((3, 5))
        for s, (widths, pool) in enumerate(zip(self.stages, self.pools)):
            for i, f in enumerate(widths):
                x = nn.relu(Conv3D(f, dtype=self.dtype, name=f"conv{s}_{i}")(x))
            x = max_pool3d(x, pool)
        return x.reshape(x.shape[0], -1)
