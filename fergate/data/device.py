"""The pixel work of the augmentation ops in a jitted step: jax counterparts of the OpenCV
calls the host ops make (`cv2.warpAffine` with bilinear interpolation and replicated
borders, 8-bit RGB <-> HSV), and the numpy `Generator` draws an op's `draw` makes, from a
jax key (`KeyRng`). Only what differs between numpy and jax lives here: each op and each
field kind says once what it does (`fergate.data.augment`, `fergate.data.fields`), on the
host and on the device alike.

Values match OpenCV's to a grey level or so (OpenCV warps with coordinates quantised to
1/32 pixel and fixed-point weights, and rounds its HSV arithmetic in its own way; these
compute in float32 and round once); tests/test_augment.py holds the two side by side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


class KeyRng:
    """The draws of `numpy.random.Generator` an op's `draw(rng)` makes (`random`, `uniform`,
    `integers`), from a jax key: a fresh subkey per draw, so that `draw` is one function for
    the host's per-example generator and the step's per-example key."""

    def __init__(self, key: jax.Array):
        self.key = key

    def _next(self) -> jax.Array:
        self.key, k = jax.random.split(self.key)
        return k

    def random(self) -> jax.Array:
        return jax.random.uniform(self._next())

    def uniform(self, low: float = 0.0, high: float = 1.0) -> jax.Array:
        return jax.random.uniform(self._next(), minval=low, maxval=high)

    def integers(self, low: int, high: int | None = None) -> jax.Array:
        low, high = (0, low) if high is None else (low, high)
        return jax.random.randint(self._next(), (), low, high)


def warp(img: jax.Array, m: jax.Array) -> jax.Array:
    """uint8 H x W x C (or T x H x W x C, frame by frame) through the forward 2 x 3 affine
    matrix `m`, as `cv2.warpAffine(..., INTER_LINEAR, BORDER_REPLICATE)`: each output pixel
    samples the input at m^-1 (x, y) bilinearly, the coordinates clamped to the image
    (which is what replicating the border gives a bilinear sample), rounded to uint8."""
    if img.ndim == 4:
        return jax.vmap(lambda f: warp(f, m))(img)
    h, w = img.shape[:2]
    m = jnp.asarray(m, jnp.float32)
    a, t = m[:, :2], m[:, 2]
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    inv = jnp.stack([jnp.stack([a[1, 1], -a[0, 1]]), jnp.stack([-a[1, 0], a[0, 0]])]) / det
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    src = (jnp.stack([xs, ys], -1) - t) @ inv.T
    x, y = jnp.clip(src[..., 0], 0, w - 1), jnp.clip(src[..., 1], 0, h - 1)
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
    f = img.astype(jnp.float32)
    top = f[y0, x0] * (1 - fx) + f[y0, x1] * fx
    bottom = f[y1, x0] * (1 - fx) + f[y1, x1] * fx
    return jnp.clip(jnp.round(top * (1 - fy) + bottom * fy), 0, 255).astype(jnp.uint8)


def rgb_to_hsv(img: jax.Array) -> jax.Array:
    """uint8 RGB -> OpenCV's 8-bit HSV (H in 0..179, S and V in 0..255), as float32 holding
    whole numbers: V = max, S = 255 (V - min) / V, H = 30 / (V - min) x the sector's
    difference (plus 60 / 120 for the green / blue sectors), each rounded."""
    f = img.astype(jnp.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    v = jnp.max(f, -1)
    diff = v - jnp.min(f, -1)
    s = jnp.where(v > 0, jnp.round(255 * diff / jnp.maximum(v, 1)), 0)
    num = jnp.where(v == r, g - b, jnp.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = jnp.where(diff > 0, jnp.round(30 * num / jnp.maximum(diff, 1)), 0)
    return jnp.stack([jnp.where(h < 0, h + 180, h), s, v], -1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """OpenCV's 8-bit HSV (whole numbers) -> uint8 RGB: the sector of H / 30 picks which of
    v, v (1 - s), v (1 - s f), v (1 - s (1 - f)) each channel takes."""
    h, s, v = hsv[..., 0] / 30.0, hsv[..., 1] / 255.0, hsv[..., 2]
    h = jnp.where(h >= 6, h - 6, h)
    sector = jnp.floor(h)
    frac = h - sector
    tab = jnp.stack([v, v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))], -1)
    # (r, g, b) entries of `tab` for sectors 0..5 (OpenCV's sector_data, in RGB order)
    order = jnp.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])
    rgb = jnp.take_along_axis(tab, order[sector.astype(jnp.int32)], -1)
    return jnp.clip(jnp.round(rgb), 0, 255).astype(jnp.uint8)


def hue_saturation(img: jax.Array, dh: jax.Array, ds: jax.Array) -> jax.Array:
    """`HueSaturation.pixels` of an RGB image (any leading axes): the hue turned by `dh`
    (OpenCV's 0..179 units), the saturation scaled by `ds`, both truncated to whole levels
    as the host's float -> uint8 conversion truncates them."""
    hsv = rgb_to_hsv(img)
    h = jnp.floor(jnp.mod(hsv[..., 0] + dh, 180))
    s = jnp.floor(jnp.clip(hsv[..., 1] * ds, 0, 255))
    return hsv_to_rgb(jnp.stack([h, s, hsv[..., 2]], -1))
