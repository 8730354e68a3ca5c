"""VSHNN's frame substitution (FS, 3.4), the landmark feature LMED-CF (4.1) and its MLP, and the
low-rank (attention) fusion of the two branches' scores (4.2, Eq. 18-22)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fergate.data.landmarks import LEFT_EYE, LMED_PAIRS, RIGHT_EYE
from fergate.models.layers import Layer


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


def lmed_cf_width(frames: int, correlations: bool = True) -> int:
    """LMED-CF's length: 3 statistics of the 34 distances + N(N - 1) / 2 correlations (222 at
    16); LMED without the correlations (Table 9's LMED row): 102."""
    return 3 * len(LMED_PAIRS) + (frames * (frames - 1) // 2 if correlations else 0)


def lmed_cf(landmarks: jax.Array, correlations: bool = True) -> jax.Array:
    """LMED-CF (4.1, Fig. 6) of clips' landmarks (B, N, 68, 2 or 3): per frame the 34
    `LMED_PAIRS` distances over the inter-ocular distance (l_n); their max, mean and std over
    the frames (LMED, 102); and the upper triangle (no diagonal) of R computed from L L^T as
    in Eq. 1-2 (CF, N(N - 1) / 2); without `correlations`, LMED alone (Table 9's LMED row). 3D
    landmarks give 3D distances. Unscaled: the model scales it to [-1, 1] with the training
    split's range (`statistics`)."""
    lm = landmarks.astype(jnp.float32)
    pairs = np.asarray(LMED_PAIRS)
    d = jnp.linalg.norm(lm[..., pairs[:, 0], :] - lm[..., pairs[:, 1], :], axis=-1)  # (B, N, 34)
    iod = jnp.linalg.norm(lm[..., LEFT_EYE, :].mean(-2) - lm[..., RIGHT_EYE, :].mean(-2), axis=-1)
    l_ = d / jnp.maximum(iod, 1e-6)[..., None]
    stats = [l_.max(-2), l_.mean(-2), l_.std(-2)]
    if not correlations:
        return jnp.concatenate(stats, -1)
    upper = np.triu_indices(l_.shape[-2], 1)
    return jnp.concatenate([*stats, frame_correlation(l_)[..., upper[0], upper[1]]], -1)


class LandmarkMLP(Layer):
    """LMED-CF's network (5.2.4, Table A1): (Dense - BN - ReLU) blocks, 2 for lab data and 3
    in the wild, then Dense(K). Returns the last block's output l' (the IC fusion's landmark
    feature) and the scores q."""

    num_classes: int
    blocks: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, f: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        h = f.astype(self.dtype)
        for i, width in enumerate(self.blocks):
            h = nn.Dense(width, dtype=self.dtype, name=f"fc{i}")(h)
            h = nn.relu(nn.BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"bn{i}")(h))
        return h, nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(h).astype(jnp.float32)


class LowRankFusion(Layer):
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


