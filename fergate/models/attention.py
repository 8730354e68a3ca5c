"""CNN with visual attention for FER (Sun, Zhao, Jin; Neurocomputing 2018).

A ten-convolution trunk (Table 2) turns a 112 x 144 grey face into A_0, 7 x 9 locations of
128 features. The heads:

- baseline: dropout - flatten (8064) - Dense(K) (Table 2; 360,720 weights without biases);
- attention: per location A_1 = tanh(A_0 W_1 + b_1) (66 units, Eq. 2), A_2 = tanh(A_1 W_2 +
  b_2) (Eq. 3), B = softmax over locations of beta A_2 (Eq. 4), z = sum B A_0 (Eq. 1),
  dropout - Dense(K) (Table 3: the mapping adds 128 x 66 + 66 x 1 weights);
- symmetric: Eq. 5 read as a weight map that is its own mirror image: the scores are
  averaged with their left-right mirror, beta/2 (A_2 + mirror A_2), then normalised by the
  softmax. (Eq. 5 as printed divides by the sum over the unmirrored scores, which does not
  make the weights sum to 1 (the aggregation would change scale with the face); we keep
  the numerator and normalise.)
- gap: B fixed at 1 / (W H), global average pooling [the paper's Table 5 comparison].

The scorer reads one location at a time, so trunk + scorer run on images of any size
(`attend`: the fully-convolutional mode over group photos). The evaluation report draws,
per class, the mean face times the mean attention map upsampled to the input (Figs. 5-6),
and measures how much attention falls inside the landmarks' hull against its area.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fergate import plots
from fergate.data import augment, pipeline
from fergate.models import Family, Results, compute_dtype, random_batch
from fergate.models.layers import Layer, max_pool2

VARIANTS = ("baseline", "attention", "symmetric", "gap")
#: The trunk of Table 2: blocks of 3 x 3 convolutions (ReLU), a 2 x 2 max-pool after each.
TRUNK = ((16, 16, 16), (32, 32, 32), (64, 64), (128, 128))


class Trunk(Layer):
    """Ten 3 x 3 convolutions with ReLU, He-initialised: with flax's default (LeCun) scale
    the activations shrink by sqrt(2) a layer, and after ten the loss sat at ln 7."""

    blocks: Sequence[Sequence[int]] = TRUNK

    @nn.compact
    def __call__(self, x):
        for b, block in enumerate(self.blocks):
            for i, f in enumerate(block):
                conv = nn.Conv(f, (3, 3), padding="SAME", dtype=self.dtype, kernel_init=nn.initializers.he_normal(),
                               name=f"conv{b}_{i}")
                x = nn.relu(conv(x))
            x = max_pool2(x)
        return x


class Scorer(Layer):
    """g: the importance of each location from its own feature vector (Eq. 2-3)."""

    hidden: int = 66

    @nn.compact
    def __call__(self, a0):
        a1 = jnp.tanh(nn.Dense(self.hidden, dtype=self.dtype, name="W1")(a0))
        return jnp.tanh(nn.Dense(1, dtype=self.dtype, name="W2")(a1))[..., 0].astype(jnp.float32)


def scale_input(x: jax.Array, dtype) -> jax.Array:
    """uint8 grey levels to [-1, 1]: zero-centred inputs keep the first ReLUs alive at Adam's
    1e-3 (from [0, 1] the trunk's loss stayed at ln 7)."""
    return x.astype(dtype) / 127.5 - 1.0


def attention_weights(a2: jax.Array, beta: float, symmetric: bool) -> jax.Array:
    """B (N, H, W) from the scores A_2 (N, H, W): softmax of beta A_2 over all locations
    (Eq. 4); `symmetric` first averages the scores with their left-right mirror (Eq. 5)."""
    if symmetric:
        a2 = (a2 + a2[:, :, ::-1]) / 2
    n, h, w = a2.shape
    return jax.nn.softmax(beta * a2.reshape(n, h * w), -1).reshape(n, h, w)


class AttentionCNN(Layer):
    variant: str = "attention"
    num_classes: int = 7
    trunk: Sequence[Sequence[int]] = TRUNK
    hidden: int = 66  #: C_1, the scorer's hidden units
    beta: float = 1.0  #: softmax temperature of Eq. 4 (the paper: 1)
    dropout: float = 0.5
    #: the pooled heads' z standardised over the batch before the classifier, no parameters
    #: (workdirs written before the option have none: off, as they were trained)
    standardise: bool = False
    #: the scorer reads A_0 standardised per channel over the batch and locations, no parameters
    #: (Eq. 2's W_1, b_1 reparameterised; workdirs written before the option: off, as trained)
    standardise_scores: bool = False
    #: the standardisations' running statistics (evaluation): mean <- m mean + (1 - m) batch's.
    #: A_0's scale is free under them and drifts (0.45 -> 20-50 in 400 steps from scratch): at
    #: flax's 0.99 the statistics lagged 1.6-2x behind and the held-out predictions fell on 2
    #: classes (mean class accuracy 0.17; 0.40 with the statistics re-estimated, same weights)
    stats_momentum: float = 0.99

    def setup(self):
        self.features = Trunk(self.trunk, dtype=self.dtype)
        if self.variant in ("attention", "symmetric"):
            self.scorer = Scorer(self.hidden, dtype=self.dtype)
        # the pooled heads' is zero-initialised: a random one makes shrinking the pooled features
        # the quickest way down the loss, and Adam drives the trunk to ln 7 in a few steps
        init = nn.initializers.zeros if self.variant != "baseline" else nn.initializers.lecun_normal()
        self.classifier = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=init)
        self.drop = nn.Dropout(self.dropout)
        if self.standardise and self.variant != "baseline":
            # z per channel over the batch to zero mean, unit variance, with no parameters (running
            # statistics in evaluation). From scratch the pooled z of a random trunk is nearly the
            # same vector for every face (spread 0.28 of its mean): the gradients carry no class, Adam
            # moves the trunk at full rate anyway, A_0 shrank 40x in 20 steps and its ReLUs died
            # (tools/attention_diagnose.py). Standardised, the classifier sees the faces' differences.
            self.zstd = nn.BatchNorm(use_bias=False, use_scale=False, momentum=self.stats_momentum, dtype=self.dtype)
        if self.standardise_scores and self.variant in ("attention", "symmetric"):
            # With z standardised the loss no longer depends on A_0's scale but through the scorer,
            # and Adam grows it freely (on faces in context 0.45 -> 15 in 100 steps): A_0 W_1 then
            # saturates the tanh (98% of A_1 beyond 0.95), A_2 is the same at every location and the
            # map stays uniform (tools/attention_diagnose.py). (A_0 - mu) / sigma W_1 + b_1 is Eq. 2
            # with W_1, b_1 rescaled per channel: the same functions, at a scale the tanh can use.
            self.a0std = nn.BatchNorm(use_bias=False, use_scale=False, momentum=self.stats_momentum, dtype=self.dtype)

    def pool(self, a0: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """(B, z) of a pooled head: the weights over A_0's locations (uniform for GAP, else
        Eq. 2-5) and their weighted sum z (Eq. 1)."""
        n, h, w, _ = a0.shape
        if self.variant == "gap":
            b = jnp.full((n, h, w), 1.0 / (h * w), jnp.float32)
        else:
            b = attention_weights(self.scores(a0, train), self.beta, self.variant == "symmetric")
        return b, jnp.einsum("nhw,nhwc->nc", b.astype(a0.dtype), a0)  # Eq. 1

    def __call__(self, batch: dict, train: bool = False) -> dict:
        a0 = self.features(scale_input(batch["face"], self.dtype))  # (N, 9, 7, 128)
        n, h, w, _ = a0.shape
        if self.variant == "baseline":
            return {"logits": self.classifier(self.drop(a0, deterministic=not train).reshape(n, -1))
                    .astype(jnp.float32)}
        b, z = self.pool(a0, train)
        if self.standardise:
            z = self.zstd(z, use_running_average=not train)
        logits = self.classifier(self.drop(z, deterministic=not train)).astype(jnp.float32)
        return {"logits": logits, "introspect": {"attention": b}}

    def attention_map(self, images: jax.Array) -> jax.Array:
        """B over every location of whole images (N, H, W, 1) of any size: the
        fully-convolutional mode (a group photo's faces compete for the weight)."""
        a0 = self.features(scale_input(images, self.dtype))
        if self.variant == "gap":
            return jnp.full(a0.shape[:3], 1.0 / np.prod(a0.shape[1:3]), jnp.float32)
        if self.variant == "baseline":
            raise ValueError("the baseline head has no attention map")
        return attention_weights(self.scores(a0, False), self.beta, self.variant == "symmetric")

    def scores(self, a0: jax.Array, train: bool = False) -> jax.Array:
        """A_2 (N, H, W) of Eq. 2-3 at every location of A_0 (N, H, W, C)."""
        if self.standardise_scores:
            a0 = self.a0std(a0, use_running_average=not train)
        return self.scorer(a0)


def build(config) -> AttentionCNN:
    return AttentionCNN(variant=config.variant, dtype=compute_dtype(config), **config.attention)


def inputs(config) -> dict:
    h, w = config.input.crop
    return {"face": ((h, w, 1), np.uint8), "landmarks": ((68, 2), np.float32)}


def preprocess(config, train: bool) -> tuple[list, list]:
    """Records of another size or colour are first made `input.record_size` grey faces;
    training takes random `input.crop` crops (then the augmentations: a mirror, 4.1),
    evaluation the centre crop (the landmarks follow, for the reports)."""
    size, crop = tuple(config.input.record_size), tuple(config.input.crop)
    return [pipeline.ResizeFace(size, grey=True), augment.Crop(crop, size) if train else pipeline.CenterCrop(crop)], []


def example_batch(config, n: int) -> dict:
    batch = random_batch(inputs(config), n)
    h, w = config.input.crop
    batch["landmarks"] = np.random.default_rng(1).uniform(0, min(h, w), batch["landmarks"].shape).astype(np.float32)
    return batch


def attend(config, module: nn.Module, variables: dict, image: np.ndarray) -> np.ndarray:
    """The attention map (h, w) of a whole grey image (H, W) or (H, W, 1) of any size, one
    weight per trunk location (a 16 x 16 pixel cell); the weights sum to 1."""
    x = jnp.asarray(image.reshape(1, *image.shape[:2], 1))
    return np.asarray(module.apply(variables, x, method=AttentionCNN.attention_map))[0]


def upsample(b: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map of per-cell weights (h, w) as per-pixel weights on an (H, W) image: each cell's
    weight spread over its pixels (bilinear), so that the total stays 1."""
    up = cv2.resize(b.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return up / max(float(up.sum()), 1e-12)


def mass_in_hull(b: np.ndarray, landmarks: np.ndarray, shape: tuple[int, int]) -> tuple[float, float]:
    """(the map's mass inside the landmarks' convex hull, the hull's share of the image) of one
    map (h, w) over an image of `shape` (height, width)."""
    hull = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.round(landmarks).astype(np.int32)), 1)
    return float((upsample(b, hull.shape) * hull).sum()), float(hull.mean())


#: records read per class for the mean face, and examples for the attention-in-face measure
MEAN_FACE_EXAMPLES = 200


def reports(results: Results, outdir: str) -> dict:
    """Figs. 5-6: per class, the mean face times the mean attention map projected back to
    the input; and the share of the attention inside the landmarks' convex hull against
    the hull's share of the image (1:1 would be no better than uniform weights)."""
    if "attention" not in results.introspect:
        return {}
    faces, mass, area = {}, [], []
    for i, idx in results.class_examples(MEAN_FACE_EXAMPLES).items():
        rec = results.read(idx, ("face", "landmarks"))
        faces[results.classes[i]] = rec["face"].astype(np.float32).mean(0)[..., 0]
        pos = np.flatnonzero(results.labels == i)[: len(idx)]
        for b, lm in zip(results.introspect["attention"][pos], rec["landmarks"]):
            m, a = mass_in_hull(b, lm, rec["face"].shape[1:3])
            mass.append(m)
            area.append(a)
    means = results.class_means("attention")
    shown = {c: faces[c] / 255.0 * upsample(means[c], faces[c].shape) * faces[c].size for c in faces}
    plots.maps_on_images(shown, f"{results.config.model}/{results.config.variant}: mean face x mean attention "
                         "map per class (Figs. 5-6)", os.path.join(outdir, "attention_maps.png"),
                         "face brightness x attention (1 = uniform attention)")
    return {"attention_in_face": {"mass": float(np.mean(mass)), "area": float(np.mean(area)),
                                  "ratio": float(np.mean(mass) / np.mean(area)), "examples": len(mass)}}


class FAMILY(Family):
    name, section, augmentation_ops = "attention", "attention", ("flip", "brightness_contrast")
    build, inputs, preprocess = staticmethod(build), staticmethod(inputs), staticmethod(preprocess)
    example_batch, attend, reports = staticmethod(example_batch), staticmethod(attend), staticmethod(reports)
