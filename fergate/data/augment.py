"""Augmentation ops, composed from the config: `config.data.augment` is a string of ops
separated by "|", each `name` or `name(arg, ...)` (big_vision's preprocessing strings),
e.g. "flip|rotate(10)|brightness_contrast(20, 0.2)|hue_saturation".

Every op acts on whatever fields a record holds, each as its kind says
(`fergate.data.fields`): a flip mirrors images, clips and patches and re-indexes points,
a rotation moves points with their image, photometric ops touch uint8 pixels. So one op
serves every family, and a family only says which ops it can take
(`Family.augmentations`); an op it cannot take is a one-line error at config time.

An op draws its random parameters (`draw(rng)`) apart from applying them (`apply(rec,
params)`). Training runs them in its jitted step (`on_device`): per example of the batch,
`draw` gets a `KeyRng` of a key folded from the step's (so a resumed run draws the same
augmentations) and `apply` the example's fields as jax arrays, vectorised over the batch;
the host pipeline then only reads, decodes and batches. An op marked `device = True` is
written with what numpy and jax arrays share (array methods, `fields`' kinds, `fields.select`
for a drawn choice); an augmentation string with an op that is not runs all its ops on the
host as grain transforms, in their order, as before. A new op is a `register`ed `Op`
subclass (one on pixels alone: a `Photometric` one, which writes `pixels`), in any module a
config imports (a family's, or one of the user's).
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any, ClassVar

import cv2
import grain
import numpy as np

from fergate.data import fields as F
from fergate.errors import UserError

OPS: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    """Makes an `Op` subclass available to `config.data.augment` by its `name`."""
    OPS[cls.name] = cls
    return cls


@dataclasses.dataclass
class Op(grain.transforms.RandomMap):
    """One augmentation: random in training (seeded per example), never in evaluation."""

    name: ClassVar[str]
    #: `draw` and `apply` run on jax values too (the jitted step): see the module docstring
    device: ClassVar[bool] = False

    def draw(self, rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def apply(self, rec: dict, params: Any) -> dict:
        raise NotImplementedError

    def random_map(self, rec: dict, rng: np.random.Generator) -> dict:
        return self.apply(rec, self.draw(rng))

    def host_shapes(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
        """Each field's per-example shape before the op from its shape after it: what the
        host sends a step that applies the op. Default: the op keeps every shape."""
        return shapes


@register
@dataclasses.dataclass
class Flip(Op):
    """Mirror left-right with probability `p`: every field as its kind mirrors it."""

    name: ClassVar[str] = "flip"
    device: ClassVar[bool] = True
    p: float = 0.5

    def draw(self, rng):
        return rng.random() < self.p

    def apply(self, rec, flipped):
        return F.select(flipped, F.flip(rec), rec)


@register
@dataclasses.dataclass
class Rotate(Op):
    """In-plane rotation by an angle uniform in [-`degrees`, `degrees`] about each image's
    centre (clips frame by frame, patches each about its own), points following their
    image; borders replicated."""

    name: ClassVar[str] = "rotate"
    device: ClassVar[bool] = True
    degrees: float = 10.0

    def draw(self, rng):
        return rng.uniform(-self.degrees, self.degrees)

    def apply(self, rec, angle):
        return F.rotate(rec, angle)


@dataclasses.dataclass
class Crop(Op):
    """A `size` (height, width) window at a random position of each image field of `images`
    in records of `within` (height, width), the points on it shifted: a family's training
    crop (the attention CNN's, section 4.1). Not a `data.augment` op, since it changes the
    input's shape: a family's `preprocess` ends its maps with it, and it runs where the
    config's ops run (in the step, the host then sends the whole `within` face)."""

    name: ClassVar[str] = "crop"
    device: ClassVar[bool] = True
    size: tuple[int, int]
    within: tuple[int, int]
    images: tuple[str, ...] = ("face",)

    def __post_init__(self):
        if self.size[0] > self.within[0] or self.size[1] > self.within[1]:
            raise UserError(f"cannot crop {tuple(self.size)} from records of {tuple(self.within)} (height, width)")

    def draw(self, rng):
        return rng.integers(0, self.within[0] - self.size[0] + 1), rng.integers(0, self.within[1] - self.size[1] + 1)

    def apply(self, rec, offset):
        for f in self.images:
            if f in rec:
                if tuple(rec[f].shape[:2]) != tuple(self.within):
                    raise ValueError(f"crop: {f!r} is {tuple(rec[f].shape[:2])}, the crop expects {tuple(self.within)}")
                rec = F.crop(rec, f, (*offset, *self.size))
        return rec

    def host_shapes(self, shapes):
        return {k: (*self.within, *s[2:]) if k in self.images else s for k, s in shapes.items()}


def host_shapes(ops: list[Op], shapes: dict[str, tuple]) -> dict[str, tuple]:
    """The per-example shapes of a batch before `ops`, from their shapes after them."""
    for op in reversed(ops):
        shapes = op.host_shapes(shapes)
    return shapes


def host_batch(batch: dict, ops: list[Op]) -> dict:
    """An example `batch` (leading batch axis) with each field at its shape before `ops`
    (its values repeated to fill): what the host sends a step that applies them."""
    shapes = host_shapes(ops, {k: v.shape[1:] for k, v in batch.items()})
    return {k: v if v.shape[1:] == tuple(shapes[k]) else np.resize(v, (len(v), *shapes[k])) for k, v in batch.items()}


@dataclasses.dataclass
class Photometric(Op):
    """An op on the uint8 pixels of each photometric field of a record (`pixels`), with the
    same drawn parameters for every field of the example."""

    def pixels(self, x: np.ndarray, params: Any) -> np.ndarray:
        raise NotImplementedError

    def apply(self, rec, params):
        return {**rec, **{k: self.pixels(rec[k], params) for k in rec if F.get(k).kind.photometric}}


@register
@dataclasses.dataclass
class BrightnessContrast(Photometric):
    """x -> (x - mean) * c + mean + b on the uint8 pixels of each photometric field, c in
    [1 - `contrast`, 1 + `contrast`], b in [-`brightness`, `brightness`] grey levels; one
    draw per example."""

    name: ClassVar[str] = "brightness_contrast"
    device: ClassVar[bool] = True
    brightness: float = 20.0
    contrast: float = 0.2

    def draw(self, rng):
        c = rng.uniform(1 - self.contrast, 1 + self.contrast)
        return c, rng.uniform(-self.brightness, self.brightness)

    def pixels(self, img, params):
        c, b = params
        x = img.astype(np.float32)
        return ((x - x.mean()) * c + x.mean() + b).clip(0, 255).astype(np.uint8)


@register
@dataclasses.dataclass
class HueSaturation(Photometric):
    """RGB fields: hue shifted by up to +-`hue` degrees, saturation scaled by a factor in
    [1 - `saturation`, 1 + `saturation`]; grey ones are left alone."""

    name: ClassVar[str] = "hue_saturation"
    device: ClassVar[bool] = True
    hue: float = 10.0
    saturation: float = 0.2

    def draw(self, rng):
        dh = rng.uniform(-self.hue, self.hue) / 2  # OpenCV's 8-bit hue runs 0..179
        return dh, rng.uniform(1 - self.saturation, 1 + self.saturation)

    def pixels(self, img, params):
        if img.shape[-1] != 3:
            return img
        dh, ds = params
        if F.on_device(img):
            from fergate.data import device

            return device.hue_saturation(img, dh, ds)
        hsv = cv2.cvtColor(img.reshape(-1, img.shape[-2], 3), cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + dh) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] * ds, 0, 255)
        return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).reshape(img.shape)


def split(spec: str, what: str = "config data.augment") -> tuple[tuple[str, tuple], ...]:
    """The (name, arguments) of each op of an augmentation string, its syntax checked (not
    its names: a module the config names may register more ops): what the config's loading
    checks, before any family module is imported."""
    out = []
    for part in filter(None, (p.strip() for p in (spec or "").split("|"))):
        name, paren, rest = part.partition("(")
        name, args = name.strip(), ()
        if not name.isidentifier():
            raise UserError(f"{what}: {part!r} in {spec!r} is not NAME or NAME(ARG, ...)")
        if paren:
            if not rest.endswith(")"):
                raise UserError(f"{what}: {part!r} is not NAME(ARG, ...)")
            try:
                args = ast.literal_eval(f"({rest[:-1]},)") if rest[:-1].strip() else ()
            except (ValueError, SyntaxError):
                raise UserError(f"{what}: cannot read the arguments of {part!r}") from None
            if any(not isinstance(a, (int, float)) or isinstance(a, bool) for a in args):
                raise UserError(f"{what}: {part!r}: the arguments are numbers")
        out.append((name, tuple(args)))
    return tuple(out)


def parse(spec: str, what: str = "config data.augment") -> list[Op]:
    """The ops of an augmentation string, built; an unknown op or a bad argument is a
    one-line error naming it."""
    ops = []
    for name, args in split(spec, what):
        if name not in OPS:
            raise UserError(f"{what}: unknown augmentation {name!r} in {spec!r}; known: {', '.join(sorted(OPS))}")
        try:
            ops.append(OPS[name](*args))
        except TypeError:
            params = ", ".join(f.name for f in dataclasses.fields(OPS[name]))
            raise UserError(f"{what}: {name}{args}: {name} takes ({params})") from None
    return ops


def for_family(config, family) -> list[Op]:
    """`config.data.augment`'s ops, each one the family takes (`family.augmentations(config)`);
    another is a one-line error naming it and what the family takes."""
    ops = parse(config.data.augment)
    takes = tuple(family.augmentations(config))
    for op in ops:
        if op.name not in takes:
            can = f"it takes {', '.join(takes)}" if takes else "it takes none"
            raise UserError(f"config data.augment: {op.name} does not apply to {family.name}/{config.variant} ({can})")
    return ops


def runs_on_device(ops: list[Op]) -> bool:
    """Whether `ops` run in the jitted step: there are some, and every one can (`Op.device`)."""
    return bool(ops) and all(op.device for op in ops)


def on_device(ops: list[Op], batch: dict, key) -> dict:
    """`ops` applied in order to every example of `batch` (fields with a leading batch axis,
    jax arrays in a jitted step), each example's parameters drawn from its own key: example
    i, op j draws from fold_in(split(key, n)[i], j). The batch's `label`, `mask` and `index`
    are plain arrays that no op moves."""
    import jax

    from fergate.data.device import KeyRng

    n = next(iter(batch.values())).shape[0]

    def one(rec, k):
        for j, op in enumerate(ops):
            rec = op.apply(rec, op.draw(KeyRng(jax.random.fold_in(k, j))))
        return rec

    return jax.vmap(one)(batch, jax.random.split(key, n))


#: the legacy augmentation keys of `config.data` (workdirs written before `data.augment`)
LEGACY_KEYS = ("flip", "rotate", "brightness_contrast", "hue_saturation")


def from_legacy(data: dict) -> str:
    """The `data.augment` string meaning what a config's legacy keys meant (in the order
    the transforms applied them)."""
    ops = ["flip"] if data.get("flip") else []
    if data.get("rotate"):
        ops.append(f"rotate({data['rotate']})")
    ops += [k for k in ("brightness_contrast", "hue_saturation") if data.get(k)]
    return "|".join(ops)
