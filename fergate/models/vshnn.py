"""VSHNN's video backbone: the visual scene-aware hybrid neural network (Lee et al.,
Sensors 2020, sections 3.2-3.6), trained in two stages.

Stage 1 (`variant=frames`): a per-frame 2D CNN (the paper's DenseNet121-FC, or a small CNN
for CPUs) learns expressions from random frames of the training clips, each frame under
its clip's label; `fergate features` then writes its last FC layer's output, the appearance
features x_1..x_N, into the clip records (`clip_features`). Stage 2: a C3D-style 3D CNN
reads the whole clip and gives the scene feature v (FC, ReLU) with an auxiliary
classifier (FC - BN - dropout - ReLU - FC, loss weight lambda, Eq. 15); the scene-aware
RNN (SALSTM / SAGRU) reads x_1..x_N with v by one of three connections (Fig. 5): A, v
enters every gate (Eq. 3-6); B, h_0 = v (Eq. 9-10); C, the input is [x_n, v] (Eq. 11-14).
Its last hidden state goes through dropout - Dense - ReLU - Dense(K). The time loop is a
`jax.lax.scan`, so compile time does not grow with N. One `fergate train` runs both stages
(`config.data.features_from`).

Part 2 (sections 3.4, 4): the frame substitution (FS) module between the appearance features
and the SARNN; LMED-CF, a clip's landmark statistics (34 pair distances: max, mean, std over
frames, and the inter-frame correlations), read by an MLP (`variant=lmedcf` alone); and its
fusion with the video model (`vshnn.fusion`): IC (Eq. 16), WS (Eq. 17), LRMF (Liu et al.
2018) and LRMAF (Eq. 18-21). All of it is in the graph, batched, and costs next to nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np

from fergate import plots
from fergate.data import pipeline
from fergate.data.landmarks import LEFT_EYE, LMED_PAIRS, RIGHT_EYE
from fergate.errors import UserError
from fergate.models import Family, Results, compute_dtype, masked_cross_entropy, num_classes_from_data
from fergate.models.layers import ConvEncoder, conv3_im2col

#: Table 2's rows: the 3D CNN alone, the frame CNN with a plain RNN (CNN-LSTM / CNN-GRU),
#: and VSHNN = C3D + CNN-SALSTM / CNN-SAGRU with connection A, B or C; `frames` is stage 1;
#: `lmedcf` the landmark model alone (Table 9's LMED-CF MLP).
VARIANTS = ("frames", "c3d", "cnn_lstm", "cnn_gru",
            *(f"c3d_sa{cell}_{t}" for cell in ("lstm", "gru") for t in "abc"), "lmedcf")
#: `vshnn.fusion` of the video model with LMED-CF (section 4.2): "" none, intermediate
#: concatenation, weighted summation, low-rank fusion, low-rank attention fusion
FUSIONS = ("", "ic", "ws", "lrmf", "lrmaf")
#: the record field `fergate features` writes: (T, F) appearance features per clip
FEATURES_FIELD = "clip_features"
#: the input a head-only model reads v from (`fergate bench` of the SARNN against PyTorch)
SCENE_FIELD = "scene"


def parse_variant(variant: str) -> tuple[bool, str | None, str | None]:
    """(uses the 3D CNN, RNN cell or None, connection or None) of a variant name."""
    if variant in ("frames", "c3d", "lmedcf"):
        return variant == "c3d", None, None
    if variant.startswith("cnn_"):
        return False, variant.removeprefix("cnn_"), None
    cell, connection = variant.removeprefix("c3d_sa").split("_")
    return True, cell, connection


# ----------------------------------------------------------------------------- frame CNN
class DenseNet(nn.Module):
    """DenseNet-121 (Huang et al. 2017: growth 32, blocks 6-12-24-16, bottleneck 4 x growth,
    compression 0.5), BN - ReLU after the last block and no global average pooling: the
    paper's DenseNet-FC replaces it by two FC layers on the flattened maps."""

    blocks: Sequence[int] = (6, 12, 24, 16)
    growth: int = 32
    bottleneck: int = 4
    stem: int = 64
    dtype: jnp.dtype = jnp.float32

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


class FrameCNN(nn.Module):
    """Frames (N, H, W, C) uint8 -> (appearance features (N, F), logits (N, K)): a trunk
    ("small": Conv3x3 - BN - ReLU - MaxPool stages; "densenet121"), then FC - ReLU layers
    `fc` (the paper: 4096, 4096), the last one's output being the appearance feature."""

    num_classes: int
    trunk: str = "small"
    convs: Sequence[int] = (16, 32, 64, 128)
    fc: Sequence[int] = (256, 256)
    dropout: float = 0.5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, frames, train: bool):
        x = frames.astype(self.dtype) / 127.5 - 1.0
        if self.trunk == "densenet121":
            h = DenseNet(dtype=self.dtype, name="densenet")(x, train)
        elif self.trunk == "small":
            h = ConvEncoder(tuple(self.convs), self.dtype, name="trunk")(x, train)
        else:
            raise ValueError(f"unknown frame CNN trunk {self.trunk!r}: small or densenet121")
        for i, f in enumerate(self.fc):
            h = nn.Dropout(self.dropout, deterministic=not train)(h) if i else h
            h = nn.relu(nn.Dense(f, dtype=self.dtype, name=f"fc{i}")(h))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(
            nn.Dropout(self.dropout, deterministic=not train)(h))
        return h.astype(jnp.float32), logits.astype(jnp.float32)


# ----------------------------------------------------------------------------- 3D CNN
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


class Conv3D(nn.Module):
    """A 3x3x3 'same' convolution with bias (kernel DHWIO, as `nn.Conv`'s): by im2col on a CPU
    when the input has few channels, else XLA's convolution (cuDNN's on a GPU)."""

    features: int
    dtype: jnp.dtype = jnp.float32

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


class C3D(nn.Module):
    """C3D-style 3D CNN (Tran et al. 2015): stages of Conv3x3x3 - ReLU, each followed by a
    max pool (`pools`: C3D's first keeps time, 1x2x2; the rest 2x2x2), flattened. With
    `downsample` k > 1 the clip is first average-pooled k x k in space (the CPU default
    reads 64 x 64 clips at 32 x 32: a 4x cheaper network)."""

    stages: Sequence[Sequence[int]]
    pools: Sequence[Sequence[int]]
    downsample: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, clip):
        x = clip.astype(self.dtype) / 127.5 - 1.0
        if self.downsample > 1:
            b, t, h, w, c = x.shape
            k = self.downsample
            x = x[:, :, : h // k * k, : w // k * k].reshape(b, t, h // k, k, w // k, k, c).mean((3, 5))
        for s, (widths, pool) in enumerate(zip(self.stages, self.pools)):
            for i, f in enumerate(widths):
                x = nn.relu(Conv3D(f, self.dtype, name=f"conv{s}_{i}")(x))
            x = max_pool3d(x, pool)
        return x.reshape(x.shape[0], -1)


class AuxClassifier(nn.Module):
    """The 3D CNN's auxiliary classifier on v: FC - BN - dropout - ReLU - FC (Fig. 3)."""

    hidden: int
    num_classes: int
    dropout: float = 0.5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, v, train: bool):
        h = nn.Dense(self.hidden, dtype=self.dtype, name="fc0")(v)
        h = nn.BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn")(h)
        h = nn.relu(nn.Dropout(self.dropout, deterministic=not train)(h))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc1")(h).astype(jnp.float32)


# ----------------------------------------------------------------------------- SARNN
#: gates per cell, in the order of the fused kernels' columns (PyTorch's)
CELL_GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


def lstm_step(carry: tuple[jax.Array, jax.Array], pre: jax.Array,
              w_h: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """One LSTM step (Eq. 3-8) from the input terms `pre` = W_x x_n (+ W_v v) + b, all four
    gates side by side: i, f, o = sigmoid, g = tanh; c = f c + i g; h = o tanh(c)."""
    h, c = carry
    i, f, g, o = jnp.split(pre + h @ w_h, 4, -1)
    c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    h = nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


def gru_step(h: jax.Array, pre: jax.Array, w_h: jax.Array, b_hn: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One GRU step (Cho et al. 2014, PyTorch's form): r, z = sigmoid(x-terms + W_h h);
    n = tanh(x-term + r (W_hn h + b_hn)); h = (1 - z) n + z h. A GRU has no cell state."""
    xr, xz, xn = jnp.split(pre, 3, -1)
    hr, hz, hn = jnp.split(h @ w_h, 3, -1)
    r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * (hn + b_hn))
    h = (1.0 - z) * n + z * h
    return h, h


class SARNN(nn.Module):
    """Scene-aware RNN over appearance features x (B, N, F) with the scene feature v (B, D)
    (None: a plain RNN, Table 2's CNN-LSTM / CNN-GRU). The input terms of every step
    (W_x x_n, and W_v v for type A) are one matmul before the loop; the loop is a scan of
    the recurrent matmul and the gates. Returns the logits and the last hidden state."""

    num_classes: int
    cell: str = "lstm"
    connection: str | None = "a"
    hidden: int = 2048
    head: int = 1024
    dropout: float = 0.5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, v, train: bool):
        gates = len(CELL_GATES[self.cell]) * self.hidden
        b = x.shape[0]
        x = x.astype(self.dtype)
        if self.connection == "c":  # Eq. 11-14: the input is [x_n, v]
            x = jnp.concatenate([x, jnp.broadcast_to(v[:, None].astype(self.dtype), (*x.shape[:2], v.shape[-1]))],
                                -1)
        pre = nn.Dense(gates, dtype=self.dtype, name="input")(x)  # (B, N, G H)
        if self.connection == "a":  # Eq. 3-6: W_v v in every gate, the same at every step
            pre = pre + nn.Dense(gates, use_bias=False, dtype=self.dtype, name="scene")(v.astype(self.dtype))[:, None]
        h0 = jnp.zeros((b, self.hidden), self.dtype)
        if self.connection == "b":  # Eq. 10: h_0 = v, projected when the widths differ
            h0 = v.astype(self.dtype) if v.shape[-1] == self.hidden else \
                nn.Dense(self.hidden, dtype=self.dtype, name="scene_to_h0")(v.astype(self.dtype))
        w_h = self.param("recurrent_kernel", nn.initializers.orthogonal(), (self.hidden, gates)).astype(self.dtype)
        if self.cell == "lstm":  # carry (h, c), c_0 = 0
            _, hs = jax.lax.scan(lambda carry, p: lstm_step(carry, p, w_h), (h0, jnp.zeros_like(h0)),
                                 pre.swapaxes(0, 1))
        else:  # carry h
            b_hn = self.param("recurrent_bias_n", nn.initializers.zeros, (self.hidden,)).astype(self.dtype)
            _, hs = jax.lax.scan(lambda h, p: gru_step(h, p, w_h, b_hn), h0, pre.swapaxes(0, 1))
        h = hs[-1]
        y = nn.Dropout(self.dropout, deterministic=not train)(h)
        y = nn.relu(nn.Dense(self.head, dtype=self.dtype, name="head0")(y))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head1")(y).astype(jnp.float32), h


# ----------------------------------------------------------------------------- FS and LMED-CF
def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    # full f32 products: a TPU's default bf16 passes would reorder close correlations
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def frame_correlation(x: jax.Array) -> jax.Array:
    """R of Eq. 1-2 (..., N, N) from per-frame vectors x (..., N, D): Y = X X^T, r_jk the
    Pearson correlation between columns j and k of Y over its rows. A constant column (all
    frames alike) correlates 0 with every column: one whose spread is under `CONSTANT` of its
    size, so that float32 rounding left in a constant column (which differs with the batch
    shape XLA compiles for) is not read as a correlation."""
    x = x.astype(jnp.float32)
    y = _mm(x, jnp.swapaxes(x, -1, -2))
    yc = y - y.mean(-2, keepdims=True)
    s = _mm(jnp.swapaxes(yc, -1, -2), yc)  # N s_jk
    d = jnp.sqrt(jnp.maximum(jnp.diagonal(s, axis1=-2, axis2=-1), 0.0))
    varies = d > CONSTANT * jnp.linalg.norm(y, axis=-2)
    den = jnp.where(varies[..., :, None] & varies[..., None, :], d[..., :, None] * d[..., None, :], 0.0)
    return jnp.where(den > 0, s / jnp.where(den > 0, den, 1.0), 0.0)


#: a column of Y whose spread over the frames is under this fraction of its norm is constant
#: (float32 keeps ~7 digits; rounding leaves ~1e-7 of a constant column)
CONSTANT = 1e-5


def frame_substitution(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The FS module (3.4) on appearance features x (B, N, D): the frames with the K lowest
    row means of R take the features of the K highest, the lowest the highest's, the second
    lowest the second highest's, and so on. Returns X' (same shape) and which frames were
    replaced (B, N), for the report."""
    n = x.shape[-2]
    if not 0 < 2 * k <= n:
        raise ValueError(f"frame substitution of K={k} frames needs 0 < 2K <= N={n}")
    means = jax.lax.stop_gradient(frame_correlation(x).mean(-1))
    _, top = jax.lax.top_k(means, k)  # U+, highest first
    _, bottom = jax.lax.top_k(-means, k)  # U-, lowest first
    source = jax.vmap(lambda lo, hi: jnp.arange(n).at[lo].set(hi))(bottom, top)
    return jnp.take_along_axis(x, source[..., None], -2), (source != jnp.arange(n)).astype(jnp.float32)


def lmed_cf_width(frames: int) -> int:
    """LMED-CF's length: 3 statistics of the 34 distances + N(N - 1) / 2 correlations (222 at 16)."""
    return 3 * len(LMED_PAIRS) + frames * (frames - 1) // 2


def lmed_cf(landmarks: jax.Array) -> jax.Array:
    """LMED-CF (4.1, Fig. 6) of clips' landmarks (B, N, 68, 2 or 3): per frame the 34
    `LMED_PAIRS` distances over the inter-ocular distance (l_n); their max, mean and std over
    the frames (LMED, 102); and the upper triangle (no diagonal) of R computed from L L^T as
    in Eq. 1-2 (CF, N(N - 1) / 2). 3D landmarks give 3D distances. Unscaled: the model scales
    it to [-1, 1] with the training split's range (`statistics`)."""
    lm = landmarks.astype(jnp.float32)
    pairs = np.asarray(LMED_PAIRS)
    d = jnp.linalg.norm(lm[..., pairs[:, 0], :] - lm[..., pairs[:, 1], :], axis=-1)  # (B, N, 34)
    iod = jnp.linalg.norm(lm[..., LEFT_EYE, :].mean(-2) - lm[..., RIGHT_EYE, :].mean(-2), axis=-1)
    l_ = d / jnp.maximum(iod, 1e-6)[..., None]
    upper = np.triu_indices(l_.shape[-2], 1)
    return jnp.concatenate([l_.max(-2), l_.mean(-2), l_.std(-2), frame_correlation(l_)[..., upper[0], upper[1]]],
                           -1)


class LandmarkMLP(nn.Module):
    """LMED-CF's network (5.2.4, Table A1): (Dense - BN - ReLU) blocks, 2 for lab data and 3
    in the wild, then Dense(K). Returns the last block's output l' (the IC fusion's landmark
    feature) and the scores q."""

    num_classes: int
    blocks: Sequence[int] = (256, 256)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, f: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        h = f.astype(self.dtype)
        for i, width in enumerate(self.blocks):
            h = nn.Dense(width, dtype=self.dtype, name=f"fc{i}")(h)
            h = nn.relu(nn.BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"bn{i}")(h))
        return h, nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(h).astype(jnp.float32)


class LowRankFusion(nn.Module):
    """LRMF (Liu et al. 2018) of modality vectors z_m: each with 1 appended, then
    o = sum_i lambda_i prod_m (W_m^(i) [z_m, 1]) + b, the rank-r factorisation of a full
    bilinear map of [z_vid, 1] (x) [z_lmk, 1] (Eq. 20). With `attention`, LRMAF: each
    [z_m, 1] is first scaled by its own sigmoid self-attention a_m = sigmoid(FC([z_m, 1]))
    (Eq. 18-19). Eq. 21 as printed sums the rank inside each modality's factor, which is not
    the factorisation of Eq. 20; the sum over i is outside the product here, as in Liu et
    al.'s code. Returns the output and the attention vectors {modality: (B, d_m + 1)}."""

    out: int
    rank: int = 4
    attention: bool = True
    modalities: Sequence[str] = ("video", "landmark")
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, *zs: jax.Array) -> tuple[jax.Array, dict]:
        fused, attn = jnp.ones((), jnp.float32), {}
        for name, z in zip(self.modalities, zs, strict=True):
            z = jnp.concatenate([z.astype(jnp.float32), jnp.ones((*z.shape[:-1], 1), jnp.float32)], -1)
            if self.attention:
                attn[name] = nn.sigmoid(nn.Dense(z.shape[-1], name=f"{name}_attention")(z))
                z = attn[name] * z
            factor = self.param(f"{name}_factor", nn.initializers.variance_scaling(
                1.0, "fan_avg", "normal", in_axis=-2, out_axis=-1, batch_axis=(0,)), (self.rank, z.shape[-1], self.out))
            fused = fused * jnp.einsum("bd,rdo->rbo", z, factor)
        weights = self.param("rank_weights", nn.initializers.normal(1.0 / np.sqrt(self.rank)), (self.rank,))
        bias = self.param("bias", nn.initializers.zeros, (self.out,))
        return jnp.einsum("r,rbo->bo", weights, fused) + bias, attn


# ----------------------------------------------------------------------------- the family's module
class VSHNN(nn.Module):
    variant: str = "c3d_sagru_b"
    num_classes: int = 7
    frame_trunk: str = "small"
    frame_convs: Sequence[int] = (16, 32, 64, 128)
    frame_fc: Sequence[int] = (256, 256)
    c3d_stages: Sequence[Sequence[int]] = ((16,), (32,), (64,), (128,))
    c3d_pools: Sequence[Sequence[int]] = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    c3d_downsample: int = 1  #: the clip average-pooled this many times in space before the 3D CNN
    scene: int = 256  #: width of v (the paper: 2048)
    aux_hidden: int = 256
    aux_weight: float = 0.5  #: lambda of Eq. 15
    hidden: int = 256
    head: int = 256
    dropout: float = 0.5
    head_only: bool = False  #: v read from the `scene` input, no 3D CNN nor its auxiliary classifier (benchmarks)
    fs_k: int = 0  #: frames substituted by the FS module (the paper: 3 of 16); 0: no FS
    fusion: str = ""  #: with LMED-CF: "" (none), "ic", "ws", "lrmf", "lrmaf"
    ws_alpha: float = 0.5  #: alpha of Eq. 17 (the paper: 0.6 AFEW, 0.5 CK+ / MMI)
    fusion_rank: int = 4  #: gamma of Eq. 20
    lmed_blocks: Sequence[int] = (256, 256)  #: LMED-CF MLP widths (2 blocks lab data, 3 in the wild)
    branch_weight: float = 1.0  #: late fusions: each branch's own cross-entropy also trains it, this weighted
    dtype: jnp.dtype = jnp.float32

    def landmarks(self, clip_landmarks: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """The landmark branch: LMED-CF mapped to [-1, 1] by the training split's range (the
        "stats" collection; sown as intermediates "lmed_cf"), through its MLP: (l', q)."""
        f = lmed_cf(clip_landmarks)
        lo = self.variable("stats", "lmed_min", jnp.zeros, f.shape[-1:], jnp.float32).value
        hi = self.variable("stats", "lmed_max", jnp.ones, f.shape[-1:], jnp.float32).value
        f = 2.0 * (f - lo) / jnp.maximum(hi - lo, 1e-6) - 1.0
        self.sow("intermediates", "lmed_cf", f)
        return LandmarkMLP(self.num_classes, tuple(self.lmed_blocks), self.dtype, name="lmed_mlp")(f, train)

    @nn.compact
    def __call__(self, batch: dict, train: bool = False) -> dict:
        if self.variant == "frames":  # stage 1: every frame classified on its own
            clip = batch["clip"]
            b, t = clip.shape[:2]
            feats, logits = FrameCNN(self.num_classes, self.frame_trunk, tuple(self.frame_convs),
                                     tuple(self.frame_fc), self.dropout, self.dtype,
                                     name="frame_cnn")(clip.reshape(b * t, *clip.shape[2:]), train)
            frame_logits = logits.reshape(b, t, -1)
            return {"logits": frame_logits.mean(1), "frame_logits": frame_logits,
                    "features": feats.reshape(b, t, -1)}
        if self.variant == "lmedcf":
            return {"logits": self.landmarks(batch["clip_landmarks"], train)[1]}
        uses_c3d, cell, connection = parse_variant(self.variant)
        out: dict = {"introspect": {}}
        l_feat = q = v = None
        if self.fusion:
            l_feat, q = self.landmarks(batch["clip_landmarks"], train)
        if uses_c3d:
            if self.head_only:
                v = batch[SCENE_FIELD].astype(self.dtype)
            else:
                h = C3D(tuple(map(tuple, self.c3d_stages)), tuple(map(tuple, self.c3d_pools)), self.c3d_downsample,
                        self.dtype, name="c3d_convs")(batch["clip"])
                v = nn.relu(nn.Dense(self.scene, dtype=self.dtype, name="scene")(h))
                out["aux_logits"] = AuxClassifier(self.aux_hidden, self.num_classes, self.dropout, self.dtype,
                                                  name="aux")(v, train)
        if cell is None:  # the 3D CNN alone: its main classifier on v
            p = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(v).astype(jnp.float32)
        else:
            x = batch[FEATURES_FIELD]
            if self.fs_k:
                x, out["introspect"]["substituted"] = frame_substitution(x, self.fs_k)
            if self.fusion == "ic":  # Eq. 16: v' = [BN(v), l'] is the SARNN's scene input
                v = jnp.concatenate([nn.BatchNorm(use_running_average=not train, dtype=self.dtype,
                                                  name="ic_bn")(v), l_feat.astype(self.dtype)], -1)
            p, _ = SARNN(self.num_classes, cell, connection, self.hidden, self.head, self.dropout,
                         self.dtype, name="sarnn")(x, v, train)
        if self.fusion in ("", "ic"):
            out["logits"] = p
        else:  # late fusions of the two score vectors; each branch also learns from its own loss
            out["branch_logits"] = {"video": p, "landmark": q}
            if self.fusion == "ws":  # Eq. 17 on the softmax scores; its log is what the loss and argmax read
                mix = self.ws_alpha * jax.nn.softmax(p) + (1.0 - self.ws_alpha) * jax.nn.softmax(q)
                out["logits"] = jnp.log(jnp.maximum(mix, 1e-30))
            else:
                out["logits"], attn = LowRankFusion(self.num_classes, self.fusion_rank, self.fusion == "lrmaf",
                                                    name="fusion")(p, q)
                out["introspect"].update({f"{m}_attention": a for m, a in attn.items()})
        if not out["introspect"]:
            del out["introspect"]
        return out


# ----------------------------------------------------------------------------- the family contract
def build(config) -> VSHNN:
    # freeze_convs acts through optim.frozen (`resolve`): the trainer makes frozen subtrees constants to autodiff
    return VSHNN(variant=config.variant, dtype=compute_dtype(config),
                 **{k: v for k, v in config.vshnn.items() if k != "freeze_convs"})


def train_frames(config) -> int:
    """Frames of each clip in a stage-1 training example (workdirs written before the option
    trained on whole clips)."""
    return config.input.get("train_frames", config.input.frames)


def uses_landmarks(config) -> bool:
    """Whether the model reads the clips' landmarks (LMED-CF alone or fused)."""
    return config.variant == "lmedcf" or bool(config.vshnn.get("fusion", ""))


def resolve(config, manifest: dict | None) -> None:
    """The classes from the data; FS and fusion checked against the variant; with
    `freeze_convs`, the 3D CNN's convolutions are also left out of the optimizer (no weight
    decay, no Adam state), not only of the gradient."""
    num_classes_from_data(config, "vshnn", 7)
    v, variant = config.vshnn, config.variant
    uses_c3d, cell, _ = parse_variant(variant)
    fusion = v.get("fusion", "")
    if fusion not in FUSIONS:
        raise UserError(f"config vshnn.fusion={fusion!r}: expected one of {', '.join(f for f in FUSIONS if f)} "
                        "or empty (none)")
    if fusion and variant in ("frames", "lmedcf"):
        raise UserError(f"config vshnn.fusion={fusion}: fuses LMED-CF with a video model, not variant={variant}")
    if fusion == "ic" and not (uses_c3d and cell):
        raise UserError(f"config vshnn.fusion=ic concatenates v with the landmark feature as the SARNN's scene input: "
                        f"it needs a C3D + SARNN variant (c3d_sa*), not {variant}")
    if not 0.0 <= v.get("ws_alpha", 0.5) <= 1.0:
        raise UserError(f"config vshnn.ws_alpha={v.ws_alpha}: must be in [0, 1]")
    if v.get("fs_k", 0):
        if cell is None:
            raise UserError(f"config vshnn.fs_k={v.fs_k}: frame substitution acts on the appearance features an RNN "
                            f"reads; variant={variant} has none")
        if not 0 < 2 * v.fs_k <= config.input.frames:
            raise UserError(f"config vshnn.fs_k={v.fs_k}: needs 0 < 2 fs_k <= input.frames={config.input.frames}")
    if config.vshnn.freeze_convs and "c3d_convs" not in config.optim.frozen:
        config.optim.frozen = (*config.optim.frozen, "c3d_convs")


def inputs(config) -> dict:
    """Stage 1's training batches hold `input.train_frames` frames of each clip, its
    evaluation batches all T (the model reads any number; `fergate bench` times the
    training shape)."""
    v, t, s = config.vshnn, config.input.frames, config.input.clip_size
    uses_c3d, cell, _ = parse_variant(config.variant)
    spec = {}
    if config.variant == "frames":  # training batches: `train_frames` frames of each clip (SampleFrames)
        spec["clip"] = ((train_frames(config), s, s, config.input.channels), np.uint8)
    elif uses_c3d and not v.head_only:
        spec["clip"] = ((t, s, s, config.input.channels), np.uint8)
    if uses_c3d and v.head_only:
        spec[SCENE_FIELD] = ((v.scene,), np.float32)
    if cell is not None:
        spec[FEATURES_FIELD] = ((t, v.frame_fc[-1]), np.float32)
    if uses_landmarks(config):  # 68 x 2, or 68 x 3 with 3D landmarks
        spec["clip_landmarks"] = ((t, 68, config.input.get("landmark_dims", 2)), np.float32)
    return spec


def predict_inputs(config) -> dict:
    """As `inputs`, stage 1 reading all T frames of a clip (its evaluation batches)."""
    spec = inputs(config)
    if config.variant == "frames":
        spec["clip"] = ((config.input.frames, *spec["clip"][0][1:]), np.uint8)
    return spec


def statistics(config, batches) -> dict:
    """LMED-CF's range over the training split, per dimension: the model scales it to [-1, 1]
    with these (4.1), so no held-out clip informs the scaling."""
    if not uses_landmarks(config):
        return {}
    f = jax.jit(lmed_cf)
    lo = hi = None
    for b in batches:
        keep = b["mask"] > 0
        if not keep.any():
            continue
        x = np.asarray(f(b["clip_landmarks"][keep]))
        lo = x.min(0) if lo is None else np.minimum(lo, x.min(0))
        hi = x.max(0) if hi is None else np.maximum(hi, x.max(0))
    if lo is None:
        raise UserError(f"the {config.data.train_split} split has no clips to measure LMED-CF's range on")
    return {"lmed_min": lo.astype(np.float32), "lmed_max": hi.astype(np.float32)}


@dataclasses.dataclass
class SampleFrames(grain.transforms.RandomMap):
    """Stage 1's training examples: `k` random frames of the clip (a RandomMap: evaluation
    and `fergate features` read all T). Whole clips would fill a batch with a few clips' near
    identical frames: a batch of 8 clips x 16 frames left the frame CNN at chance after 300
    steps where 128 frames of 64 clips trained it (same frames per step)."""

    k: int

    def random_map(self, rec: dict, rng: np.random.Generator) -> dict:
        t = rec["clip"].shape[0]
        return dict(rec, clip=rec["clip"][np.sort(rng.choice(t, self.k, replace=self.k > t))])


def augmentations(config) -> tuple[str, ...]:
    """Clips take a flip (5.2.2: the 3D CNN's only augmentation) and, for stage 1, a rotation
    and brightness / contrast (5.2.1: the frame CNN's); landmark distances take none (Table A1)."""
    return ("flip", "rotate", "brightness_contrast") if "clip" in inputs(config) else ()


def preprocess(config, train: bool) -> tuple[list, list]:
    """Clips: stage 1's frame sampling first (training); after the augmentations, frames
    resized to the input size (and made grey) when the records differ."""
    if "clip" not in inputs(config):  # LMED-CF alone: distances need no resizing
        return [], []
    s = config.input.clip_size
    return [SampleFrames(train_frames(config))] if config.variant == "frames" else [], \
        [pipeline.ResizeClip((s, s), grey=config.input.channels == 1)]


def loss(config, outputs: dict, batch: dict) -> tuple[jax.Array, dict]:
    """Stage 1: cross-entropy of every frame against its clip's label. Stage 2 (Eq. 15): the
    main cross-entropy plus lambda times the auxiliary classifier's; with a late fusion, plus
    `branch_weight` times each branch's own (the paper fuses networks trained each on its
    own)."""
    if "frame_logits" in outputs:
        fl = outputs["frame_logits"]
        ce = masked_cross_entropy(fl, jnp.broadcast_to(batch["label"][:, None], fl.shape[:2]), batch["mask"])
        return ce, {"ce": ce}
    total = masked_cross_entropy(outputs["logits"], batch["label"], batch["mask"])
    metrics = {"ce": total}
    if "aux_logits" in outputs:
        aux = masked_cross_entropy(outputs["aux_logits"], batch["label"], batch["mask"])
        total = total + config.vshnn.aux_weight * aux
        metrics["aux_ce"] = aux
    for name, logits in outputs.get("branch_logits", {}).items():
        ce = masked_cross_entropy(logits, batch["label"], batch["mask"])
        total = total + config.vshnn.branch_weight * ce
        metrics[f"{name}_ce"] = ce
    return total, metrics


def reports(results: Results, outdir: str) -> dict:
    """What the fusion and FS do per class: LRMAF's mean self-attention on each modality's
    score vector (Eq. 18), WS's fixed weights, and the share of clips whose frame n the FS
    module replaced."""
    intro, v, out = results.introspect, results.config.vshnn, {}
    name = f"{results.config.model}/{results.config.variant}"
    if "video_attention" in intro:
        cols = [f"{m}: {c}" for m in ("video", "landmark") for c in (*results.classes, "1")]
        video, landmark = results.class_means("video_attention"), results.class_means("landmark_attention")
        means = {c: np.concatenate([video[c], landmark[c]]) for c in video}
        plots.class_table(means, cols, f"{name} LRMAF: mean sigmoid self-attention on each modality's scores "
                          "(Eq. 18), per true class", os.path.join(outdir, "fusion_attention.png"),
                          "attention a (0: score suppressed, 1: kept)",
                          xlabel="score vector entry ([scores, 1] of each modality)")
        half = len(cols) // 2
        out["fusion_attention"] = {c: {"video": float(m[:half].mean()), "landmark": float(m[half:].mean())}
                                   for c, m in means.items()}
    if v.get("fusion", "") == "ws":
        out["fusion_weights"] = {"video": v.ws_alpha, "landmark": 1.0 - v.ws_alpha}
    if "substituted" in intro:
        means = results.class_means("substituted")
        plots.class_table(means, [str(i + 1) for i in range(len(next(iter(means.values()))))],
                          f"{name}: frames the FS module replaced, per true class (3.4)",
                          os.path.join(outdir, "frame_substitution.png"), "share of clips with frame n replaced",
                          xlabel="frame n of the clip")
    return out


class FAMILY(Family):
    name, section = "vshnn", "vshnn"
    build, resolve, inputs = staticmethod(build), staticmethod(resolve), staticmethod(inputs)
    predict_inputs, statistics, augmentations = staticmethod(predict_inputs), staticmethod(statistics), \
        staticmethod(augmentations)
    preprocess, loss, reports = staticmethod(preprocess), staticmethod(loss), staticmethod(reports)
