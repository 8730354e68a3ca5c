"""Record fields: what each one is, and how the generic transforms move it.

A field has a `Kind` (an image, a clip of frames, landmark patches, points in an image's
pixels, a length in pixels, per-landmark offsets, a plain array, a string), and points and
lengths name the image field whose pixels they are measured in (`on`). A flip, a rotation,
a resize or a crop of a record asks each of its fields' kind what happens to it, so that
`fergate.data.augment` and the resizing transforms name no field. A family that reads a new
field (optical flow, a displacement, a derived mean) registers it once, in its own module,
with `register`; a kind with its own rules (optical flow: mirrored, x negated) is a `Kind`
subclass.

A field may be `derived` instead of read: the pipeline computes it from other fields over a
set of records (the micro net's subject-mean landmarks), in training from a split's
shards and in `fergate predict` from the faces of one photo or video.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import cv2
import numpy as np

from fergate.data.landmarks import MIRROR_68, iod


def on_device(x: Any) -> bool:
    """Whether `x` is a jax value (an op applied in a jitted step) rather than a numpy one."""
    return not isinstance(x, (np.ndarray, np.generic, int, float, bool))


def warp(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """H x W x C, or T x H x W x C frame by frame, through the 2 x 3 matrix m (borders
    replicated): OpenCV's on the host, `fergate.data.device.warp` in a jitted step."""
    if on_device(img) or on_device(m):
        from fergate.data import device

        return device.warp(img, m)
    if img.ndim == 4:
        return np.stack([warp(f, m) for f in img])
    out = cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(img.shape)


def rotation(shape: tuple[int, int], degrees: Any) -> np.ndarray:
    """The 2 x 3 matrix rotating an (h, w) image by `degrees` about its centre (OpenCV's
    `getRotationMatrix2D`, written out so that a traced angle gives a jax matrix)."""
    xp = np
    if on_device(degrees):
        import jax.numpy as xp
    h, w = shape
    cx, cy = (w - 1) / 2, (h - 1) / 2
    a = xp.deg2rad(degrees)
    c, s = xp.cos(a), xp.sin(a)
    return xp.stack([xp.stack([c, s, (1 - c) * cx - s * cy]), xp.stack([-s, c, s * cx + (1 - c) * cy])])


def resize_image(img: np.ndarray, size: tuple[int, int], grey: bool) -> np.ndarray:
    """H x W x C -> size (height, width) x C' (area interpolation; C' = 1 with `grey`)."""
    if img.shape[:2] != tuple(size):
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA).reshape(size[0], size[1], -1)
    if grey and img.shape[-1] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
    return img


class Kind:
    """What a kind of field does under each geometric change; the default: nothing (an
    identity embedding, a label, features). Each method gets the field's value and the
    `Field` (for its `on` and `mirror`); `rec` is the record before the change. `flip` and
    `rotate` take numpy values on the host and jax values (one example of a batch, traced)
    in the jitted step alike: they use the array methods both share."""

    photometric = False  #: uint8 pixels that brightness / contrast / colour changes apply to
    spatial = False  #: an image whose (height, width) axes are `spatial_axes`: points may be `on` it
    spatial_axes = (0, 1)

    def flip(self, x: np.ndarray, field: Field, rec: dict) -> np.ndarray:
        return x

    def rotate(self, x: np.ndarray, field: Field, rec: dict, degrees: float) -> np.ndarray:
        return x

    def resize(self, x: np.ndarray, field: Field, rec: dict, scale: tuple[float, float]) -> np.ndarray:
        return x

    def crop(self, x: np.ndarray, field: Field, rec: dict, offset: tuple[int, int]) -> np.ndarray:
        return x


class Image(Kind):
    """H x W x C uint8 pixels."""

    photometric = spatial = True

    def flip(self, x, field, rec):
        return x[:, ::-1]

    def rotate(self, x, field, rec, degrees):
        return warp(x, rotation(x.shape[:2], degrees))


class Clip(Image):
    """T x H x W x C uint8 frames, each moved alike."""

    spatial_axes = (1, 2)

    def flip(self, x, field, rec):
        return x[:, :, ::-1]

    def rotate(self, x, field, rec, degrees):
        return warp(x, rotation(x.shape[1:3], degrees))


class Patches(Kind):
    """N x P x P uint8 crops around the landmarks: a flip re-orders them by the mirror
    permutation and mirrors each, a rotation turns each about its own centre."""

    photometric = True

    def flip(self, x, field, rec):
        return x[field.mirror][:, :, ::-1]

    def rotate(self, x, field, rec, degrees):
        return warp(x[..., None], rotation(x.shape[1:3], degrees))[..., 0]


class Points(Kind):
    """(..., N, 2) points (x, y) in the pixels of the image field `on`: they follow its
    flip (x -> W - 1 - x, re-indexed by `mirror`: the mirror image of the left eye is the
    right eye), rotation, resize and crop."""

    def _image(self, field: Field, rec: dict) -> np.ndarray:
        if field.on not in rec:
            raise ValueError(f"moving {field.name!r} needs {field.on!r} (its pixels): read that field too")
        return rec[field.on]

    def flip(self, x, field, rec):
        img = self._image(field, rec)
        w = img.shape[FIELDS[field.on].kind.spatial_axes[1]]
        out = x[..., field.mirror, :] if field.mirror is not None else x
        return out * np.float32([-1, 1]) + np.float32([w - 1, 0])  # x -> w - 1 - x, exactly

    def rotate(self, x, field, rec, degrees):
        img = self._image(field, rec)
        h, w = (img.shape[a] for a in FIELDS[field.on].kind.spatial_axes)
        m = rotation((h, w), degrees).astype(np.float32)
        return x @ m[:, :2].T + m[:, 2]

    def resize(self, x, field, rec, scale):
        return (x * np.float32(scale)).astype(np.float32)

    def crop(self, x, field, rec, offset):
        if any(on_device(o) for o in offset):
            import jax.numpy as jnp

            return x - jnp.stack(offset).astype(jnp.float32)
        return (x - np.float32(offset)).astype(np.float32)


class Length(Kind):
    """A distance in the pixels of `on` (the inter-ocular distance): scaled with an
    isotropic resize, measured again on the points `of` after an anisotropic one."""

    def resize(self, x, field, rec, scale):
        if scale[0] == scale[1]:
            return np.float32(x * scale[0])
        return iod(FIELDS[field.of].kind.resize(rec[field.of], FIELDS[field.of], rec, scale))


class Offsets(Points):
    """(N, 2) displacements of points (centred or relative coordinates): a flip re-indexes
    them by `mirror` and negates x, a rotation turns them (no translation), a resize scales
    them, a crop leaves them."""

    def flip(self, x, field, rec):
        return (x[..., field.mirror, :] if field.mirror is not None else x) * np.float32([-1, 1])

    def rotate(self, x, field, rec, degrees):
        m = rotation((1, 1), degrees).astype(np.float32)
        return x @ m[:, :2].T

    def crop(self, x, field, rec, offset):
        return x


class String(Kind):
    """Text (labels' names, subjects, sources): read for bookkeeping, never batched."""


class Derive(Protocol):
    """How a derived field is computed over a set of records."""

    needs: tuple[str, ...]

    def over_files(self, files: Sequence[str]) -> Callable[[dict], np.ndarray]:
        """The value of a record of these shards (one split's), from its `needs` fields."""

    def over_records(self, records: Sequence[dict], groups: Sequence[str]) -> list[np.ndarray]:
        """Each record's value, `groups` naming the records that belong together (one
        photo's or video's faces stand for a subject in `fergate predict`)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Field:
    """A record field: its `kind`, the image field `on` whose pixels it is measured in
    (points, lengths), the points it is measured `of` (a length), the permutation a mirror
    applies (`mirror`), and `derive` for a field computed rather than read."""

    name: str
    kind: Kind
    on: str | None = None
    of: str | None = None
    mirror: Any = None
    derive: Derive | None = None
    temporal: bool = False  #: one value per frame of a clip (a model reading it is a clip model)
    doc: str = ""


FIELDS: dict[str, Field] = {}
IMAGE, CLIP, PATCHES, POINTS, LENGTH, OFFSETS, STRING, ARRAY = \
    Image(), Clip(), Patches(), Points(), Length(), Offsets(), String(), Kind()


def register(field: Field) -> Field:
    """Declares a field (once; the same declaration again is a no-op, another one an error)."""
    old = FIELDS.get(field.name)
    if old is not None and (type(old.kind), old.on, old.of) != (type(field.kind), field.on, field.of):
        raise ValueError(f"record field {field.name!r} is already declared as {old}")
    FIELDS[field.name] = field
    return field


def get(name: str) -> Field:
    """The declared field `name`; an undeclared one is a plain array (moved by nothing)."""
    return FIELDS.get(name) or Field(name, ARRAY)


def of_kind(*kinds: type[Kind]) -> tuple[str, ...]:
    """The declared fields whose kind is one of `kinds`."""
    return tuple(n for n, f in FIELDS.items() if isinstance(f.kind, kinds))


def derived(names: Sequence[str]) -> tuple[str, ...]:
    """Those of `names` that are derived rather than read."""
    return tuple(n for n in names if get(n).derive is not None)


def flip(rec: dict) -> dict:
    """A record mirrored left-right: every field as its kind mirrors it."""
    out = {}
    for k, v in rec.items():
        f = get(k)
        y = f.kind.flip(v, f, rec)
        out[k] = np.ascontiguousarray(y) if isinstance(y, np.ndarray) and y is not v else y
    return out


def select(cond: Any, a: dict, b: dict) -> dict:
    """Record `a` where `cond` holds, else `b`: a Python choice on the host, an elementwise
    one of every field for a traced `cond` (both sides are computed in a jitted step)."""
    if not on_device(cond):
        return a if cond else b
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def rotate(rec: dict, degrees: float) -> dict:
    """A record turned by `degrees` about each image's centre (points follow their image)."""
    return {k: get(k).kind.rotate(v, get(k), rec, degrees) for k, v in rec.items()}


def resize(rec: dict, field: str, size: tuple[int, int], grey: bool = False) -> dict:
    """Image (or clip) `field` resized to `size` (height, width), optionally made grey; the
    points and lengths measured on it follow."""
    f, x = get(field), rec[field]
    axes = f.kind.spatial_axes
    h, w = x.shape[axes[0]], x.shape[axes[1]]
    if (h, w) == tuple(size) and not (grey and x.shape[-1] == 3):
        return rec
    out = dict(rec)
    out[field] = np.stack([resize_image(fr, size, grey) for fr in x]) if isinstance(f.kind, Clip) \
        else resize_image(x, size, grey)
    scale = (size[1] / w, size[0] / h)
    if scale != (1.0, 1.0):
        for k, v in rec.items():
            g = get(k)
            if g.on == field and k != field:
                out[k] = g.kind.resize(v, g, rec, scale)
    return out


def crop(rec: dict, field: str, box: tuple[int, int, int, int]) -> dict:
    """Image `field` cut to `box` (y, x, height, width); the points on it shifted. A traced
    (y, x) (a crop drawn in the jitted step) cuts with `dynamic_slice`."""
    y, x, h, w = box
    out, img = dict(rec), rec[field]
    if on_device(y) or on_device(x):
        import jax

        out[field] = jax.lax.dynamic_slice(img, (y, x, *(0,) * (img.ndim - 2)), (h, w, *img.shape[2:]))
    else:
        out[field] = np.ascontiguousarray(img[y : y + h, x : x + w])
    for k, v in rec.items():
        g = get(k)
        if g.on == field and k != field:
            out[k] = g.kind.crop(v, g, rec, (x, y))
    return out


for _f in (
    Field("label", ARRAY, doc="class index"),
    Field("label_name", STRING), Field("subject", STRING), Field("source", STRING),
    Field("face", IMAGE), Field("image", IMAGE), Field("clip", CLIP, temporal=True),
    Field("landmarks", POINTS, on="face", mirror=MIRROR_68),
    Field("clip_landmarks", POINTS, on="clip", mirror=MIRROR_68, temporal=True),
    Field("iod", LENGTH, on="face", of="landmarks"),
    Field("patches", PATCHES, mirror=MIRROR_68),
    Field("identity", ARRAY), Field("clip_features", ARRAY, temporal=True),
):
    register(_f)
