"""A fully-convolutional model's attention over whole images of any size (`fergate attend`;
the attention paper's group photos): faces brought to the size the model was trained on, the
map back on the image's pixels, its peak, and the paper's soft face boxes (4.4), which weigh
the map to suppress the background's false positives.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import numpy as np

from fergate import face as F
from fergate.images import SkipItem


def soft_box_mask(shape: tuple[int, int], boxes: list, softness: float = 0.25) -> np.ndarray:
    """(H, W) weights: 1 inside any (left, top, right, bottom) box, falling off outside as a
    Gaussian of the distance to the nearest box, sigma = `softness` x the box's side: the
    attention paper's soft face boxes (4.4), which keep a face's surroundings in view."""
    ys, xs = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    mask = np.zeros(shape, np.float32)
    for left, top, right, bottom in boxes:
        dx = np.maximum(np.maximum(left - xs, xs - right), 0)
        dy = np.maximum(np.maximum(top - ys, ys - bottom), 0)
        sigma = softness * max((right - left + bottom - top) / 2, 1)
        mask = np.maximum(mask, np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)))
    return mask


def soft_box_weighted(heat: np.ndarray, boxes: list) -> np.ndarray:
    """A map weighed by the soft face boxes and renormalised to sum 1 (4.4): a background peak
    loses to a face's unless it is far above it."""
    out = heat * soft_box_mask(heat.shape, boxes)
    return out / max(float(out.sum()), 1e-12)


@dataclasses.dataclass(frozen=True)
class Attender:
    """A trained model's attention map, and how the faces it was trained on were cropped (what a
    whole image is brought to before the model reads it)."""

    attention_map: Callable[[np.ndarray], np.ndarray]  #: grey image (H, W) -> per-cell weights summing to 1
    width: int  #: the training crops' width
    iod: float  #: the faces' iod in the training crops
    diffusion: bool  #: the training faces were illumination-normalised (isotropic diffusion)
    name: str  #: "model/variant", for the figures' titles
    step: int  #: the checkpoint's step

    @classmethod
    def of(cls, cfg, attention_map: Callable[[np.ndarray], np.ndarray], step: int) -> Attender:
        """With the face options the training data was prepared with (its manifest's, else the
        config's `data.prep_options` of a built-in set)."""
        prep = dict(cfg.data.prep_options)
        if cfg.data.dir:  # the options the training data was prepared with
            with open(os.path.join(cfg.data.dir, "manifest.json")) as f:
                prep = json.load(f).get("options", {}).get("face", prep)
        size = F.parse_size(prep.get("face_size", 96))
        width = size if isinstance(size, int) else size[0]
        # faces' iod in the training crops
        iod = float(np.linalg.norm(F.TEMPLATE[1] - F.TEMPLATE[0])) * width * float(prep.get("face_scale", 1.0))
        return cls(attention_map, width, iod, prep.get("illumination") == "diffusion", f"{cfg.model}/{cfg.variant}",
                   step)

    def __call__(self, img: np.ndarray, source: str, out: str, faces: bool = False,
                 scale: float | None = None) -> tuple[dict, np.ndarray]:
        """(row, map) of an RGB image: the row holds the scale it was read at, the map's peak
        (x, y) and whether it lies in a face box, each face's box and share of the map, with
        `faces` the peak of the map weighed by the soft face boxes, and the figure written
        into `out`; the map is per image pixel, summing to 1 (weighed, with `faces`).
        `faces` detects the faces and, without a `scale`, scales the image so that their
        median iod is the training crops'."""
        import cv2

        from fergate import plots

        boxes = []
        if faces:  # the faces predict and prep would take: false positives (a badge, a pattern) rejected
            try:
                detected = F.faces(img, upsample=1)
            except SkipItem:
                detected = []
            boxes = [(c.rect.left(), c.rect.top(), c.rect.right(), c.rect.bottom()) for c in detected]
            if detected and scale is None:  # faces at the size the model was trained on
                scale = self.iod / float(np.median([F.iod(c.landmarks) for c in detected]))
        scale = scale or 1.0
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        small = cv2.resize(grey, (max(16, round(grey.shape[1] * scale)), max(16, round(grey.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
        if self.diffusion:
            small = F.isotropic_diffusion(small, F.DIFFUSION_SIGMA * self.width)
        b = self.attention_map(small)
        heat = cv2.resize(b.astype(np.float32), (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_LINEAR)
        heat /= heat.sum()
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        found = [{"box": list(map(int, bx)), "mass": float(heat[bx[1]:bx[3], bx[0]:bx[2]].sum())} for bx in boxes]

        def in_face(px, py):
            return any(left <= px < right and top <= py < bottom for left, top, right, bottom in boxes)

        row = {"image": source, "scale": scale, "peak": [int(x), int(y)], "peak_in_face": in_face(x, y),
               "faces": found}
        if faces and boxes:  # 4.4: soft face boxes suppress the background's false positives
            heat = soft_box_weighted(heat, boxes)
            my, mx = np.unravel_index(int(np.argmax(heat)), heat.shape)
            row.update(masked_peak=[int(mx), int(my)], masked_peak_in_face=in_face(mx, my))
        stem = os.path.splitext(os.path.basename(source))[0]
        shown = " x soft face boxes" if faces and boxes else ""
        row["png"] = plots.overlay(img, heat, boxes, f"{self.name}: attention{shown}, step {self.step}, {stem}",
                                   os.path.join(out, f"{stem}_attention.png"), "attention weight per pixel")
        return row, heat
