"""MoDuL: deep modal and dual landmark-wise gated network (Bernheim et al., FG 2020).

    F^MoDuL = G_mod(0) F_dist(D * G_dist) || G_mod(1) F_patch(P (.) G_patch) -> Dense(K)

The eight variants of Table I switch the two branches, the landmark gates (`_rw`) and
the modal gate on and off. The evaluation report draws the mean modal gate per class
(Table VIII) and the mean landmark gates per class on the mean face (Fig. 3).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fergate import plots
from fergate.data import pipeline
from fergate.data.landmarks import INTRAFACE_49, pairwise_distances
from fergate.models import Family, Results, compute_dtype, random_batch
from fergate.models.layers import MLP, ConvPool, FaceGates, Layer

VARIANTS = {  # Table I, name: (distance branch, patch branch, landmark gates, modal gate)
    "distances": (True, False, False, False), "patches": (False, True, False, False),
    "joint": (True, True, False, False), "joint_modal": (True, True, False, True),
    "distances_rw": (True, False, True, False), "patches_rw": (False, True, True, False),
    "joint_rw": (True, True, True, False), "modul": (True, True, True, True),
}


def landmark_subset(n: int) -> np.ndarray:
    if n == 68:
        return np.arange(68)
    if n == 49:
        return INTRAFACE_49
    raise ValueError(f"N_l must be 68 or 49, got {n}")


def distance_matrix(lm: jnp.ndarray, iod: jnp.ndarray) -> jnp.ndarray:
    """D_ij = ||f_i - f_j||_2 / iod (Eq. 1); the diagonal's gradient is kept finite."""
    diff = lm[:, :, None, :] - lm[:, None, :, :]
    sq = jnp.sum(diff * diff, -1)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0) / iod[:, None, None]


class MoDuL(Layer):
    """`all_pairs`: the joint models read all N(N-1) ordered distances, as Table IV's
    parameter counts imply (the text's N(N-1)/2 upper triangle: False); the distance
    network alone reads the upper triangle, the region-weighted ones all pairs (Eq. 4).
    `standardize`: each distance input minus its mean, over its spread, both measured on
    the training split (`statistics`, kept in the "stats" collection): raw distances are
    all positive and of unequal scale, which at the paper's learning rates kills F_dist's
    ReLUs in Adam's first steps. The gate multiplies the raw distance (D_ij g_j, Eq. 4)
    before standardisation, so a gate of 0 reads as a distance of 0."""

    variant: str = "modul"
    landmarks: int = 68
    num_classes: int = 7
    dist_hidden: Sequence[int] = (1024, 512)
    patch_convs: Sequence[int] = (64, 128, 192)
    patch_hidden: Sequence[int] = (1024, 512)
    gate_convs: Sequence[int] = (32, 64, 64)
    gate_hidden: int = 0
    all_pairs: bool = True
    standardize: bool = True

    @nn.compact
    def __call__(self, batch: dict, train: bool = False) -> dict:
        use_dist, use_patch, rw, modal = VARIANTS[self.variant]
        idx = landmark_subset(self.landmarks)
        n = len(idx)
        specs = [(name, n, "landmark") for name, on in (("G_dist", rw and use_dist), ("G_patch", rw and use_patch))
                 if on] + ([("G_mod", 2, "modal")] if modal else [])
        gates = FaceGates(specs, self.gate_convs, self.gate_hidden, dtype=self.dtype, name="gates")(
            batch["face"].astype(self.dtype) / 255.0) if specs else {}
        feats, out = [], {"introspect": {}}
        if use_dist:
            d = distance_matrix(batch["landmarks"][:, idx].astype(jnp.float32), batch["iod"].astype(jnp.float32))
            if rw:  # region-weighted: D_ij * g_j (Eq. 4)
                g = out["introspect"]["dist_gate"] = gates["G_dist"]
                d = d * g[:, None, :]
            if rw or (use_patch and self.all_pairs):  # all i != j, N(N-1) inputs
                i, j = np.nonzero(~np.eye(n, dtype=bool))
            else:  # upper triangle, N(N-1)/2 inputs
                i, j = np.triu_indices(n, 1)
            x = d[:, i, j]
            if self.standardize:
                mean = self.variable("stats", "dist_mean", jnp.zeros, (68, 68), jnp.float32).value
                std = self.variable("stats", "dist_std", jnp.ones, (68, 68), jnp.float32).value
                x = (x - mean[idx[i], idx[j]]) / std[idx[i], idx[j]]
            feats.append(MLP(self.dist_hidden, dtype=self.dtype, name="F_dist")(x.astype(self.dtype)))
        if use_patch:
            p = batch["patches"][:, idx].astype(self.dtype) / 255.0  # (B, N, P, P)
            if rw:  # each landmark's channel scaled by its gate (Eq. 5)
                g = out["introspect"]["patch_gate"] = gates["G_patch"]
                p = p * g[:, :, None, None].astype(self.dtype)
            h = ConvPool(self.patch_convs, dtype=self.dtype, name="F_patch_conv")(p.transpose(0, 2, 3, 1))
            feats.append(MLP(self.patch_hidden, dtype=self.dtype, name="F_patch")(h))
        if modal:  # softmax modal gate scales the two 512-d features (Eq. 9-10)
            m = out["introspect"]["modal_gate"] = gates["G_mod"]
            feats = [feats[0] * m[:, :1].astype(self.dtype), feats[1] * m[:, 1:].astype(self.dtype)]
        h = jnp.concatenate(feats, -1)
        out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(h).astype(jnp.float32)
        return out


def build(config) -> MoDuL:
    return MoDuL(variant=config.variant, dtype=compute_dtype(config), **config.modul)


def statistics(config, batches) -> dict:
    """The mean and spread of every distance D_ij over the training split (68 x 68: any
    landmark subset reads its part), for `standardize`."""
    if not (config.modul.standardize and VARIANTS[config.variant][0]):
        return {}
    total, total_sq, n = 0.0, 0.0, 0
    for b in batches:
        keep = b["mask"] > 0
        d = pairwise_distances(b["landmarks"][keep].astype(np.float64), b["iod"][keep].astype(np.float64))
        total, total_sq, n = total + d.sum(0), total_sq + (d * d).sum(0), n + int(keep.sum())
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
    return {"dist_mean": mean.astype(np.float32), "dist_std": np.where(std > 1e-6, std, 1.0).astype(np.float32)}


def inputs(config) -> dict:
    s, p = config.input.face_size, config.input.patch_size
    return {"landmarks": ((68, 2), np.float32), "iod": ((), np.float32), "patches": ((68, p, p), np.uint8),
            "face": ((s, s, 1), np.uint8)}


def preprocess(config, train: bool) -> tuple[list, list]:
    """After the augmentations, the grey face the gates read."""
    s = config.input.face_size
    return [], [pipeline.ResizeFace((s, s), grey=True)]


def example_batch(config, n: int) -> dict:
    """Random faces and patches, landmarks anywhere on the face, a typical iod."""
    batch = random_batch(inputs(config), n)
    s = config.input.face_size
    batch["landmarks"] = np.random.default_rng(1).uniform(0, s, batch["landmarks"].shape).astype(np.float32)
    batch["iod"] = np.full((n,), 0.4 * s, np.float32)
    return batch


#: records read per class to draw the mean face
MEAN_FACE_EXAMPLES = 200


def reports(results: Results, outdir: str) -> dict:
    """Table VIII (the mean modal gate per class) and Fig. 3 (the mean landmark gates per
    class on that class's mean face)."""
    intro = results.introspect
    if "modal_gate" in intro:
        plots.class_table(results.class_means("modal_gate"), ["distance branch", "patch branch"],
                          "MoDuL modal gate: mean weight of each branch per class (Table VIII)",
                          os.path.join(outdir, "modal_gate.png"), "mean gate value (each row sums to 1)")
    gates = {"dist_gate": "distance", "patch_gate": "patch"}
    if any(g in intro for g in gates):
        faces, points = {}, {}
        for i, idx in results.class_examples(MEAN_FACE_EXAMPLES).items():
            rec = results.read(idx, ("face", "landmarks"))
            faces[results.classes[i]] = rec["face"].mean(0)
            points[results.classes[i]] = rec["landmarks"].mean(0)
        for name, branch in gates.items():
            if name in intro:
                means = results.class_means(name)
                idx = landmark_subset(len(next(iter(means.values()))))
                plots.values_on_faces(means, faces, {c: p[idx] for c, p in points.items()},
                                      f"MoDuL {branch}-branch landmark gate: mean per class on the mean face (Fig. 3)",
                                      os.path.join(outdir, f"{name}.png"),
                                      "mean gate: 0 ignores the landmark, 1 keeps it, 2 doubles it", vmin=0.0, vmax=2.0)
    return {}


class FAMILY(Family):
    name, section, augmentation_ops = "modul", "modul", ("flip", "rotate", "brightness_contrast", "hue_saturation")
    build, statistics, inputs = staticmethod(build), staticmethod(statistics), staticmethod(inputs)
    preprocess, example_batch, reports = staticmethod(preprocess), staticmethod(example_batch), staticmethod(reports)
