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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fergate.data import pipeline
from fergate.models import cross_entropy, masked_mean, num_classes_from_data
from fergate.models.layers import ConvEncoder

#: Table 2's rows: the 3D CNN alone, the frame CNN with a plain RNN (CNN-LSTM / CNN-GRU),
#: and VSHNN = C3D + CNN-SALSTM / CNN-SAGRU with connection A, B or C; `frames` is stage 1.
VARIANTS = ("frames", "c3d", "cnn_lstm", "cnn_gru",
            *(f"c3d_sa{cell}_{t}" for cell in ("lstm", "gru") for t in "abc"))
#: the record field `fergate features` writes: (T, F) appearance features per clip
FEATURES_FIELD = "clip_features"
#: the input a head-only model reads v from (`fergate bench` of the SARNN against PyTorch)
SCENE_FIELD = "scene"


def parse_variant(variant: str) -> tuple[bool, str | None, str | None]:
    """(uses the 3D CNN, RNN cell or None, connection or None) of a variant name."""
    if variant in ("frames", "c3d"):
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


def conv3x3x3_im2col(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3x3 'same' convolution of (B, T, H, W, C) as one matmul over the 27 shifted copies:
    for the RGB input layer its kernel gradient is 2.5x faster than XLA:CPU's 3D convolution
    (410 vs 1039 ms at 16 x 16 x 64 x 64 x 3 -> 16)."""
    b, t, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, dt:dt + t, dy:dy + h, dx:dx + w] for dt in range(3) for dy in range(3)
                            for dx in range(3)], -1)
    return (cols.reshape(-1, 27 * c) @ kernel.reshape(27 * c, -1)).reshape(b, t, h, w, -1)


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
            y = conv3x3x3_im2col(x, kernel)
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
    freeze_convs: bool = False  #: a pretrained 3D CNN's convolutions kept fixed (section 3.3)
    hidden: int = 256
    head: int = 256
    dropout: float = 0.5
    head_only: bool = False  #: v read from the `scene` input, no 3D CNN nor its auxiliary classifier (benchmarks)
    dtype: jnp.dtype = jnp.float32

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
        uses_c3d, cell, connection = parse_variant(self.variant)
        out: dict = {}
        v = None
        if uses_c3d:
            if self.head_only:
                v = batch[SCENE_FIELD].astype(self.dtype)
            else:
                h = C3D(tuple(map(tuple, self.c3d_stages)), tuple(map(tuple, self.c3d_pools)), self.c3d_downsample,
                        self.dtype, name="c3d_convs")(batch["clip"])
                if self.freeze_convs:  # no gradient through the fixed convolutions: their backward is skipped
                    h = jax.lax.stop_gradient(h)
                v = nn.relu(nn.Dense(self.scene, dtype=self.dtype, name="scene")(h))
                out["aux_logits"] = AuxClassifier(self.aux_hidden, self.num_classes, self.dropout, self.dtype,
                                                  name="aux")(v, train)
        if cell is None:  # the 3D CNN alone: its main classifier on v
            out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(v).astype(jnp.float32)
        else:
            out["logits"], _ = SARNN(self.num_classes, cell, connection, self.hidden, self.head, self.dropout,
                                     self.dtype, name="sarnn")(batch[FEATURES_FIELD], v, train)
        return out


# ----------------------------------------------------------------------------- the family contract
def build(config) -> VSHNN:
    return VSHNN(variant=config.variant, dtype=jnp.dtype(config.train.dtype), **config.vshnn)


def train_frames(config) -> int:
    """Frames of each clip in a stage-1 training example (workdirs written before the option
    trained on whole clips)."""
    return config.input.get("train_frames", config.input.frames)


def resolve(config, manifest: dict | None) -> None:
    """The classes from the data; with `freeze_convs`, the 3D CNN's convolutions are also
    left out of the optimizer (no weight decay, no Adam state), not only of the gradient."""
    num_classes_from_data(config, "vshnn", 7)
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
    return spec


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


def transforms(config, train: bool) -> list:
    """Clips, in training: stage 1's frame sampling, the augmentations `config.data` asks for
    (a horizontal flip; stage 1 also a rotation and brightness / contrast, as the paper's
    DenseNet training, 5.2.1; the 3D CNN's only augmentation is the flip, 5.2.2); then frames
    resized to the input size (and made grey) when the records differ."""
    if "clip" not in inputs(config):
        return []
    d, s = config.data, config.input.clip_size
    return ([SampleFrames(train_frames(config))] if config.variant == "frames" else []) + \
        ([pipeline.RandomFlip(pipeline.FACE_FLIP)] if d.flip else []) + \
        ([pipeline.RandomRotate({"clip": "clip_landmarks"}, (), d.rotate)] if d.rotate else []) + \
        ([pipeline.BrightnessContrast(("clip",))] if d.brightness_contrast else []) + \
        [pipeline.ResizeClip((s, s), grey=config.input.channels == 1)]


def loss(config, outputs: dict, batch: dict) -> tuple[jax.Array, dict]:
    """Stage 1: cross-entropy of every frame against its clip's label. Stage 2 (Eq. 15): the
    main cross-entropy plus lambda times the auxiliary classifier's."""
    if "frame_logits" in outputs:
        fl = outputs["frame_logits"]
        labels = jnp.broadcast_to(batch["label"][:, None], fl.shape[:2])
        ce = masked_mean(optax.softmax_cross_entropy_with_integer_labels(fl, labels).mean(1), batch["mask"])
        return ce, {"ce": ce}
    total, metrics = cross_entropy(config, outputs, batch)
    if "aux_logits" in outputs:
        aux = masked_mean(optax.softmax_cross_entropy_with_integer_labels(outputs["aux_logits"], batch["label"]),
                          batch["mask"])
        total = total + config.vshnn.aux_weight * aux
        metrics["aux_ce"] = aux
    return total, metrics
