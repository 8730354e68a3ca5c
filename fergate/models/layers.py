"""Layers shared by the model families: MLP and conv stacks, and the gates of the papers."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class Layer(nn.Module):
    """What every fergate module declares: `dtype`, the dtype it computes in (parameters stay
    float32; `fergate.models.compute_dtype`). Keyword-only, as flax's `name`: a parent passes
    it by name, so that a field added to a module cannot take its place."""

    dtype: jnp.dtype = dataclasses.field(default=jnp.float32, kw_only=True)


class MLP(Layer):
    """Dense - ReLU stack (ReLU after every layer: the paper's FCN features are >= 0)."""

    features: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            x = nn.relu(nn.Dense(f, dtype=self.dtype, name=f"dense{i}")(x))
        return x


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, floor (NHWC) as a reshape + max: its gradient is a cheap
    mask, where `nn.max_pool`'s (XLA select-and-scatter) costs 4-8x more on CPU."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class ConvPool(Layer):
    """len(features) x (Conv3x3 'same' - [BN -] ReLU - MaxPool2), NHWC, then flatten; with
    `batch_norm`, BN before each activation (`ConvEncoder`).

    Computed as conv - [BN -] pool - ReLU: the same function (ReLU is monotonic), with the
    ReLU on a quarter of the elements.
    """

    features: Sequence[int]
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, f in enumerate(self.features):
            x = nn.Conv(f, (3, 3), padding="SAME", dtype=self.dtype, name=f"conv{i}")(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"bn{i}")(x)
            x = nn.relu(max_pool2(x))
        return x.reshape(x.shape[0], -1)


class ConvEncoder(ConvPool):
    """len(features) x (Conv3x3 - BN - ReLU - MaxPool2), flattened: THIN's baseline trunk
    (VGG-style for faces with wider `features`), VSHNN's small frame CNN."""

    batch_norm: bool = True


def conv3_im2col(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'Same' convolution with a kernel of 3 along every spatial axis (3x3 of NHWC, kernel HWIO;
    3x3x3 of (B, T, H, W, C), kernel DHWIO) as one matmul over the 3^d shifted copies of x: for
    a few input channels (a grey face, an RGB clip) it beats XLA's convolution on CPU, and its
    weight gradient is a single matmul (for the 3D RGB input layer 2.5x faster than XLA:CPU's
    3D convolution: 410 vs 1039 ms at 16 x 16 x 64 x 64 x 3 -> 16)."""
    size = x.shape[1:-1]
    xp = jnp.pad(x, ((0, 0), *[(1, 1)] * len(size), (0, 0)))
    shifted = [xp[(slice(None), *(slice(o, o + n) for o, n in zip(offset, size)))]
               for offset in itertools.product(range(3), repeat=len(size))]  # in the kernel's order
    cols = jnp.concatenate(shifted, -1)
    taps = cols.shape[-1]  # 3^d * input channels
    return (cols.reshape(-1, taps) @ kernel.reshape(taps, -1)).reshape(*x.shape[:-1], -1)


class FaceGates(Layer):
    """Gates computed from the whole face, each a ConvPool trunk, an optional Dense - ReLU
    (`hidden` > 0) and Dense(outputs).

    `specs` = (name, outputs, kind) per gate. kind "landmark": 2 * sigmoid, values in
    [0, 2] with mean 1 at initialisation, so a gated input keeps its expected scale (MoDuL
    Eq. 2-3); kind "modal": softmax over the outputs (MoDuL Eq. 8). The gates share
    nothing but their input, so their first convolutions (on the full-resolution face,
    the costly layer) run as one im2col matmul with the gates' kernels side by side.
    Returns {name: gate values}.
    """

    specs: Sequence[tuple[str, int, str]]
    convs: Sequence[int] = (32, 64, 64)
    hidden: int = 64

    @nn.compact
    def __call__(self, face):
        cin, c0 = face.shape[-1], self.convs[0]
        kernels = [self.param(f"{name}_conv0_kernel", nn.initializers.lecun_normal(), (3, 3, cin, c0))
                   for name, _, _ in self.specs]
        biases = [self.param(f"{name}_conv0_bias", nn.initializers.zeros, (c0,)) for name, _, _ in self.specs]
        kernel = jnp.concatenate(kernels, -1).astype(self.dtype)
        h = conv3_im2col(face.astype(self.dtype), kernel) + jnp.concatenate(biases).astype(self.dtype)
        h = nn.relu(max_pool2(h))
        out = {}
        for (name, outputs, kind), hg in zip(self.specs, jnp.split(h, len(self.specs), -1)):
            hg = ConvPool(self.convs[1:], dtype=self.dtype, name=f"{name}_trunk")(hg) if len(self.convs) > 1 \
                else hg.reshape(hg.shape[0], -1)
            if self.hidden:
                hg = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name=f"{name}_hidden")(hg))
            logits = nn.Dense(outputs, dtype=jnp.float32, name=f"{name}_out")(hg).astype(jnp.float32)
            if kind == "landmark":
                out[name] = 2.0 * nn.sigmoid(logits)
            elif kind == "modal":
                out[name] = nn.softmax(logits, axis=-1)
            else:
                raise ValueError(f"unknown gate kind {kind!r}")
        return out


def tree_gate(d: jax.Array) -> jax.Array:
    """Leaf probabilities mu (B, 2^D) of a soft binary tree of depth D from its 2^D - 1 node
    decisions d (B, 2^D - 1) in breadth-first order (THIN Eq. 4-5): mu_leaf is the product
    along the root-to-leaf path of d_n (left child) or 1 - d_n (right child); sum mu = 1."""
    mu, start, width = jnp.ones(d.shape[:-1] + (1,), d.dtype), 0, 1
    while start < d.shape[-1]:
        dn = d[..., start : start + width]  # this level's nodes, left to right
        mu = jnp.stack([mu * dn, mu * (1 - dn)], -1).reshape(d.shape[:-1] + (2 * width,))
        start, width = start + width, 2 * width
    if start != d.shape[-1]:
        raise ValueError(f"{d.shape[-1]} node decisions do not form a full binary tree")
    return mu


class TreeGate(nn.Module):
    """Neural tree gate of depth D: d_n = sigmoid(w_n . h_g + b_n) (THIN Eq. 3), then
    `tree_gate`. Returns (B, 2^D) mixture weights."""

    depth: int

    @nn.compact
    def __call__(self, h_g):
        d = nn.sigmoid(nn.Dense(2**self.depth - 1, dtype=jnp.float32, name="nodes")(h_g.astype(jnp.float32)))
        return tree_gate(d)


class MLPClassifier(Layer):
    """MLP (Dense - ReLU) then Dense(outputs): logits. One weak predictor, or a head."""

    hidden: Sequence[int]
    outputs: int

    @nn.compact
    def __call__(self, x):
        x = MLP(self.hidden, dtype=self.dtype, name="mlp")(x)
        return nn.Dense(self.outputs, dtype=self.dtype, name="out")(x).astype(jnp.float32)


class Experts(MLPClassifier):
    """L = `members` weak predictors, each an `MLPClassifier` (`hidden` Dense-ReLU layers and
    a Dense(K = `outputs`)), as ONE module whose parameters carry an ensemble axis, never a
    Python loop: a shared input x (B, F) gives logits (B, L, K).

    The first layer reads the input every member shares, so it is one GEMM over all
    members: its kernel is stored (F, L, H) and used as an F x (L H) matrix. The other
    layers are batched matmuls over a leading ensemble axis (kernel{i}: L x in x out).
    Contracting x with an (L, F, H) kernel instead makes XLA transpose the whole kernel
    every step, and broadcasting x to (L, B, F) costs a reduction over L in the backward
    pass: both measured slower on CPU than this layout."""

    members: int

    @nn.compact
    def __call__(self, x):
        widths = [*self.hidden, self.outputs]
        n, b = self.members, x.shape[0]
        k0 = self.param("kernel0", nn.initializers.lecun_normal(in_axis=0, out_axis=-1, batch_axis=(1,)),
                        (x.shape[-1], n, widths[0]))
        b0 = self.param("bias0", nn.initializers.zeros, (n, widths[0]))
        h = (x.astype(self.dtype) @ k0.reshape(x.shape[-1], -1).astype(self.dtype)).reshape(b, n, widths[0])
        h = (h + b0.astype(self.dtype)).transpose(1, 0, 2)  # (L, B, H)
        for i, width in enumerate(widths[1:], start=1):
            h = nn.relu(h)
            k = self.param(f"kernel{i}", nn.initializers.lecun_normal(batch_axis=(0,)), (n, h.shape[-1], width))
            bias = self.param(f"bias{i}", nn.initializers.zeros, (n, width))
            h = jnp.einsum("lbf,lfh->lbh", h, k.astype(self.dtype)) + bias[:, None, :].astype(self.dtype)
        return h.astype(jnp.float32).transpose(1, 0, 2)


class LoopExperts(Experts):
    """The same L experts applied one by one in a Python loop: only for parity tests and
    for measuring what the batched `Experts` saves (`configs/thin.py:experts=loop`)."""

    @nn.compact
    def __call__(self, x):
        return jnp.stack([MLPClassifier(tuple(self.hidden), self.outputs, dtype=self.dtype, name=f"member{i}")(x)
                          for i in range(self.members)], 1)
