"""Multi-modality network for micro emotion recognition (Guo et al., FG 2017).

Two inputs (Fig. 2): a 224 x 224 RGB face aligned on the eyes and the upper lip, and the
landmark displacement, the face's 68 landmarks minus the mean landmarks of the same subject
(Eq. 1-2), flattened to 136.

- visual: the AlexNet-like branch (the authors' Caffe net): conv1 96@11x11/4 - PReLU - max
  pool 3/2 - LRN; conv2 256@5x5 groups 2 - PReLU - pool - LRN; conv3 384@3x3 - PReLU;
  conv4 384@3x3 groups 2 - PReLU; conv5 256@3x3 groups 2 - PReLU - pool; fc6 256 (no
  activation); then fc7 256 - PReLU - dropout 0.8 - fc8.
- geometry: the landmark displacement alone into one linear layer: with the squared hinge
  loss, a linear SVM (section III-A).
- fusion: concat(fc6, displacement) (392) - fc7 256 - PReLU - dropout 0.8 - fc8. The text
  (III-C) feeds the 392-d vector to "a full connected layer as a classifier"; the hidden
  fc7 is the authors' prototxt's, followed here.

The geometry input is the displacement (`geometry="displacement"`), or the landmarks
themselves (`"raw"`: no subject mean, the "landmark only" III-A compares the displacement
with), centred on the training split's mean shape and scaled by their RMS about it.

Loss: the squared one-vs-all hinge (Caffe's HingeLoss, norm L2), or cross-entropy (V-B).
The subject means come from the split being read, the test split's included: transductive at
test time, as the paper computes them (section IV-B). Pooling rounds up as Caffe's does, so a
224 face gives the 6 x 6 x 256 map of AlexNet's fc6.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fergate.data import compound, pipeline
from fergate.data import fields as fields_lib
from fergate.data.landmarks import MIRROR_68
from fergate.errors import UserError
from fergate.models import Family, Results, compute_dtype, masked_cross_entropy, masked_mean, random_batch
from fergate.models.layers import Layer

VARIANTS = ("visual", "geometry", "fusion")
LOSSES = ("hinge_l2", "cross_entropy")
#: the geometry input: the record field it is read from
GEOMETRIES = {"displacement": "displacement", "raw": "landmarks"}
#: (features, kernel, stride, padding, groups, pool and LRN after it) of conv1-conv5
CONVS = ((96, 11, 4, 0, 1, True), (256, 5, 1, 2, 2, True), (384, 3, 1, 1, 1, False), (384, 3, 1, 1, 2, False),
         (256, 3, 1, 1, 2, True))


def lrn(x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> jax.Array:
    """Caffe's local response normalisation across channels (NHWC):
    x_c / (k + alpha / size * sum_{|c' - c| <= size // 2} x_c'^2)^beta."""
    half, c = size // 2, x.shape[-1]
    sq = jnp.pad(jnp.square(x.astype(jnp.float32)), [(0, 0)] * (x.ndim - 1) + [(half, half)])
    window = sum(sq[..., i : i + c] for i in range(size))
    return (x.astype(jnp.float32) * (k + alpha / size * window) ** -beta).astype(x.dtype)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """3 x 3 max pool, stride 2, rounding the output size up as Caffe does (NHWC), as the
    maximum of 9 strided views: its gradient is masks, where XLA's select-and-scatter
    (`nn.max_pool`'s) is slow on CPU."""
    _, h, w, _ = x.shape
    oh, ow = -(-(h - 3) // 2) + 1, -(-(w - 3) // 2) + 1
    x = jnp.pad(x, ((0, 0), (0, 2 * oh + 1 - h), (0, 2 * ow + 1 - w), (0, 0)), constant_values=-jnp.inf)
    out = None
    for dy in range(3):
        for dx in range(3):
            view = x[:, dy : dy + 2 * oh - 1 : 2, dx : dx + 2 * ow - 1 : 2]
            out = view if out is None else jnp.maximum(out, view)
    return out


class PReLU(nn.Module):
    """Parametric ReLU with one slope per channel, 0.25 at first (Caffe's default)."""

    init: float = 0.25

    @nn.compact
    def __call__(self, x):
        a = self.param("alpha", nn.initializers.constant(self.init), (x.shape[-1],))
        return jnp.where(x >= 0, x, a.astype(x.dtype) * x)


class Conv(Layer):
    """A convolution in `groups` groups (kernel (kh, kw, C_in / groups, features), as a grouped
    convolution's and Caffe's blob), computed as `groups` convolutions on the channel slices:
    XLA:CPU's grouped convolution (feature_group_count) ran conv2, conv4 and conv5 4.5-5.7x
    slower, forward and backward (batch 32)."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    @nn.compact
    def __call__(self, x):
        k = self.param("kernel", nn.initializers.lecun_normal(),
                       (self.kernel, self.kernel, x.shape[-1] // self.groups, self.features))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        x, k = x.astype(self.dtype), k.astype(self.dtype)
        out = [jax.lax.conv_general_dilated(xg, kg, (self.stride,) * 2, [(self.padding,) * 2] * 2,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
               for xg, kg in zip(jnp.split(x, self.groups, -1), jnp.split(k, self.groups, -1))]
        return jnp.concatenate(out, -1) + b.astype(self.dtype)


class VisualBranch(Layer):
    """conv1-conv5 and fc6 of the authors' AlexNet-like net: a 256-d visual feature."""

    convs: tuple = CONVS
    fc6: int = 256
    lrn: tuple = (5, 1e-4, 0.75, 1.0)  #: size, alpha, beta, k

    @nn.compact
    def __call__(self, x):
        for i, (f, kernel, stride, pad, groups, pool) in enumerate(self.convs, 1):
            x = Conv(f, kernel, stride, pad, groups, dtype=self.dtype, name=f"conv{i}")(x)
            x = PReLU(name=f"prelu{i}")(x)
            if pool:
                x = max_pool_3x3_s2(x)
                if i < len(self.convs):  # conv5's pool feeds fc6 directly
                    x = lrn(x, *self.lrn)
        return nn.Dense(self.fc6, dtype=self.dtype, name="fc6")(x.reshape(x.shape[0], -1))


def scale_face(x: jax.Array, dtype) -> jax.Array:
    """uint8 RGB to [-1, 1] (the Caffe net reads raw 0-255 pixels with N(0, 0.01) weights;
    zero-centred inputs with flax's LeCun-normal weights keep PReLU's inputs at unit scale)."""
    return x.astype(dtype) / 127.5 - 1.0


class MicroEmotionNet(Layer):
    variant: str = "fusion"
    num_classes: int = 50
    convs: tuple = CONVS
    fc6: int = 256
    fc7: int = 256
    dropout: float = 0.8
    lrn: tuple = (5, 1e-4, 0.75, 1.0)
    normalize: bool = True  #: bring the geometry input to unit scale with the training split's statistics
    geometry: str = "displacement"  #: a key of GEOMETRIES

    @nn.compact
    def __call__(self, batch: dict, train: bool = False) -> dict:
        parts = []
        if self.variant != "geometry":
            parts.append(VisualBranch(self.convs, self.fc6, self.lrn, dtype=self.dtype, name="visual")(
                scale_face(batch["face"], self.dtype)))
        if self.variant != "visual":
            d = batch[GEOMETRIES[self.geometry]]
            if self.normalize and self.geometry == "raw":
                mean = self.variable("stats", "landmarks_mean", jnp.zeros, d.shape[1:], jnp.float32).value
                d = (d - mean) / self.variable("stats", "landmarks_rms", jnp.ones, (), jnp.float32).value
            elif self.normalize:
                d = d / self.variable("stats", "displacement_rms", jnp.ones, (), jnp.float32).value
            parts.append(d.reshape(d.shape[0], -1).astype(self.dtype))
        h = jnp.concatenate(parts, -1)
        if self.variant != "geometry":  # the linear SVM of III-A has no hidden layer
            h = PReLU(name="prelu7")(nn.Dense(self.fc7, dtype=self.dtype, name="fc7")(h))
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return {"logits": nn.Dense(self.num_classes, dtype=self.dtype, name="fc8")(h).astype(jnp.float32)}


def build(config) -> MicroEmotionNet:
    s = config.micro
    return MicroEmotionNet(variant=config.variant, num_classes=s.num_classes, convs=tuple(map(tuple, s.convs)),
                           fc6=s.fc6, fc7=s.fc7, dropout=s.dropout, lrn=tuple(s.lrn), normalize=s.normalize,
                           geometry=_geometry(config), dtype=compute_dtype(config))


def _geometry(config) -> str:
    """The geometry input (a workdir written before `micro.geometry` read the displacement)."""
    geometry = config.micro.get("geometry", "displacement")
    if geometry not in GEOMETRIES:
        raise UserError(f"micro.geometry={geometry!r}: one of {', '.join(GEOMETRIES)}")
    return geometry


def _visual(config) -> bool:
    return config.variant != "geometry"


def _geometric(config) -> bool:
    return config.variant != "visual"


def inputs(config) -> dict:
    s = config.input.face_size
    return {**({"face": ((s, s, 3), np.uint8)} if _visual(config) else {}),
            **({GEOMETRIES[_geometry(config)]: ((68, 2), np.float32)} if _geometric(config) else {})}


def record_fields(config) -> tuple[str, ...]:
    geometry = ("landmarks",) + ((SUBJECT_MEAN_LANDMARKS,) if _geometry(config) == "displacement" else ())
    return (("face",) if _visual(config) else ()) + (geometry if _geometric(config) else ())


#: the mean landmarks of the record's subject over the split being read (Eq. 1), derived by the pipeline
SUBJECT_MEAN_LANDMARKS = "subject_mean_landmarks"


class SubjectMean:
    """A subject's mean landmarks: over a split's shards (their stats sidecars), or in
    `fergate predict` over the faces of one photo or video (they stand for one subject)."""

    needs = ("subject", "landmarks")

    def over_files(self, files):
        means = pipeline.subject_mean_landmarks(files)
        return lambda rec: means[rec["subject"]]

    def over_records(self, records, groups):
        members: dict[str, list[np.ndarray]] = {}
        for r, g in zip(records, groups):
            members.setdefault(g, []).append(r["landmarks"])
        means = {g: np.mean(v, 0).astype(np.float32) for g, v in members.items()}
        return [means[g] for g in groups]


@dataclasses.dataclass
class LandmarkDisplacement(grain.transforms.Map):
    """"displacement" = the landmarks minus their subject's mean landmarks in this split
    (Eq. 2), in the pixels of the record's face crop (224 as prepared for this network)."""

    def map(self, rec: dict) -> dict:
        rec = dict(rec)
        rec["displacement"] = (rec.pop("landmarks") - rec.pop(SUBJECT_MEAN_LANDMARKS)).astype(np.float32)
        return rec


def preprocess(config, train: bool) -> tuple[list, list]:
    """The displacement first (before anything moves the landmarks); after the
    augmentations, the face brought to the network's input size. No rotation: the
    displacement is measured against the subject's unrotated mean face."""
    s = config.input.face_size
    displacement = _geometric(config) and _geometry(config) == "displacement"
    return [LandmarkDisplacement()] if displacement else [], \
        [pipeline.ResizeFace((s, s))] if _visual(config) else []


def example_batch(config, n: int) -> dict:
    batch = random_batch(inputs(config), n)
    if "displacement" in batch:  # a few pixels of a 224 face
        batch["displacement"] *= 3.0
    if "landmarks" in batch:  # points spread over a 224 face
        batch["landmarks"] = 112.0 + 40.0 * batch["landmarks"]
    return batch


def statistics(config, batches) -> dict:
    """The root mean square of the displacement's coordinates over the training split: one
    number, so that dividing by it brings the input to unit scale and keeps its geometry
    (unscaled, a few pixels of a 224 face next to unit-scale visual features, it sent SGD at
    the paper's rate to NaN within 50 steps). `geometry="raw"`: the landmarks' mean over the
    training split (one mean shape for every subject) and the RMS of their coordinates about it."""
    if not (_geometric(config) and config.micro.normalize):
        return {}
    field = GEOMETRIES[_geometry(config)]
    total, sums, n, size = 0.0, 0.0, 0, 0
    for b in batches:
        d = b[field][b["mask"] > 0].astype(np.float64)
        total, sums, n, size = total + float((d * d).sum()), sums + d.sum(0), n + len(d), size + d.size
    if field == "landmarks":  # the mean square about the mean: E|d|^2 - |E d|^2 over the coordinates
        mean = sums / max(n, 1)
        rms = np.sqrt(max(total - n * float((mean * mean).sum()), 0.0) / max(size, 1))
        return {"landmarks_mean": mean.astype(np.float32), "landmarks_rms": np.float32(max(rms, 1e-6))}
    rms = np.sqrt(total / max(size, 1))
    if rms < 1e-3:
        raise UserError(f"the landmark displacement is zero on {config.data.train_split}: every subject has one "
                        "image, so each is its own mean. The displacement needs several images per subject "
                        "(iCV-MEFED: Sample_<subject>_<idx> names; folder datasets: <subject>__<name> files)")
    return {"displacement_rms": np.float32(rms)}


def squared_hinge(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per example, sum over classes k of max(0, 1 - t_k f_k)^2 with t_k = +1 for the true
    class and -1 for the others: the one-vs-all L2 hinge of Caffe's HingeLoss."""
    targets = 2.0 * jax.nn.one_hot(labels, logits.shape[-1]) - 1.0
    return jnp.sum(jnp.square(optax.losses.hinge_loss(logits, targets)), -1)


def loss(config, outputs: dict, batch: dict) -> tuple[jax.Array, dict]:
    if config.micro.loss == "cross_entropy":
        ce = masked_cross_entropy(outputs["logits"], batch["label"], batch["mask"])
        return ce, {"ce": ce}
    hinge = masked_mean(squared_hinge(outputs["logits"].astype(jnp.float32), batch["label"]), batch["mask"])
    return hinge, {"hinge_l2": hinge}


def reports(results: Results, outdir: str) -> dict:
    """The challenge's misclassification rate (%, Table I) and, for the 50 compound classes,
    how often the dominant and the complementary emotion alone are right."""
    pred = results.logits.argmax(-1)
    out = {"misclassification_percent": float(100.0 * (pred != results.labels).mean())}
    if tuple(results.classes) == compound.CLASSES:
        def part(n: np.ndarray, i: int) -> np.ndarray:
            return np.array([(compound.compound_pair(int(v)) or (0, 0))[i] for v in n])

        out["dominant_accuracy"] = float((part(pred, 1) == part(results.labels, 1)).mean())
        out["complementary_accuracy"] = float((part(pred, 0) == part(results.labels, 0)).mean())
    return out


class FAMILY(Family):
    name, section, bench_classes = "micro", "micro", compound.NUM_CLASSES
    augmentation_ops = ("flip", "brightness_contrast", "hue_saturation")
    fields = (fields_lib.Field("displacement", fields_lib.OFFSETS, mirror=MIRROR_68, doc="landmarks minus the "
                               "subject's mean (Eq. 2)"),
              fields_lib.Field(SUBJECT_MEAN_LANDMARKS, fields_lib.POINTS, on="face", derive=SubjectMean()))
    build, inputs, record_fields = staticmethod(build), staticmethod(inputs), staticmethod(record_fields)
    preprocess, example_batch, statistics = staticmethod(preprocess), staticmethod(example_batch), \
        staticmethod(statistics)
    loss, reports = staticmethod(loss), staticmethod(reports)
