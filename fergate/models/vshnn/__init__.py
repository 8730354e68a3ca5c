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
import functools
import os
from collections.abc import Sequence

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np

from fergate import plots
from fergate.data import pipeline
from fergate.errors import UserError
from fergate.models import Backbone, Family, Results, compute_dtype, masked_cross_entropy, num_classes_from_data
from fergate.models.backbones import C3D, RESNETS_3D, DenseNet, ResNet3D, normalize
from fergate.models.layers import ConvEncoder, Layer
from fergate.models.vshnn.fusion import (  # noqa: F401 (the family's parts, as vshnn.X)
    LandmarkMLP,
    LowRankFusion,
    frame_correlation,
    frame_substitution,
    lmed_cf,
    lmed_cf_width,
)
from fergate.models.vshnn.sarnn import CELL_GATES, SARNN, gru_step, lstm_step  # noqa: F401

#: Table 2's rows: the 3D CNN alone (C3D, ResNet3D-18, ResNeXt3D-101), the frame CNN with a
#: plain RNN (CNN-LSTM / CNN-GRU), and VSHNN = C3D + CNN-SALSTM / CNN-SAGRU with connection A,
#: B or C; `frames` is stage 1; `lmedcf` the landmark model alone (Table 9's LMED-CF MLP).
VARIANTS = ("frames", "c3d", *RESNETS_3D, "cnn_lstm", "cnn_gru",
            *(f"c3d_sa{cell}_{t}" for cell in ("lstm", "gru") for t in "abc"), "lmedcf")
#: `vshnn.fusion` of the video model with LMED-CF (section 4.2): "" none, intermediate
#: concatenation, weighted summation, low-rank fusion, low-rank attention fusion
FUSIONS = ("", "ic", "ws", "lrmf", "lrmaf")
#: the late fusions: of the two branches' score vectors
LATE_FUSIONS = ("ws", "lrmf", "lrmaf")
#: `vshnn.fusion_fit` of a late fusion: "held_out" (the paper's: the fusion layer alone, fitted
#: on the out-of-fold scores of the two branches trained beforehand, each on its own, as the
#: earlier stage "branches"), "branches" (that stage: both branches, each by its own
#: cross-entropy, their scores as its `features`), "joint" (one model: branches and fusion
#: trained together on the training clips)
FUSION_FITS = ("held_out", "branches", "joint")
#: `vshnn.lmed`: the landmark feature, LMED-CF (4.1) or LMED alone (Table 9's LMED row)
LMEDS = ("cf", "distances")
#: the record field `fergate features` writes: (T, F) appearance features per clip
FEATURES_FIELD = "clip_features"
#: the record field of the "branches" stage's scores, [p, q] (2K), a held-out late fusion reads
SCORES_FIELD = "branch_scores"
#: the input a head-only model reads v from (`fergate bench` of the SARNN against PyTorch)
SCENE_FIELD = "scene"


def parse_variant(variant: str) -> tuple[bool, str | None, str | None]:
    """(uses the 3D CNN, RNN cell or None, connection or None) of a variant name."""
    if variant in ("frames", "c3d", "lmedcf", *RESNETS_3D):
        return variant not in ("frames", "lmedcf"), None, None
    if variant.startswith("cnn_"):
        return False, variant.removeprefix("cnn_"), None
    cell, connection = variant.removeprefix("c3d_sa").split("_")
    return True, cell, connection


# ----------------------------------------------------------------------------- frame CNN
class FrameCNN(Layer):
    """Frames (N, H, W, C) uint8 -> (appearance features (N, F), logits (N, K)): a trunk
    ("small": Conv3x3 - BN - ReLU - MaxPool stages; "densenet121"), then FC - ReLU layers
    `fc` (the paper: 4096, 4096), the last one's output being the appearance feature.
    `norm`: the input normalisation (`backbones.NORMS`; ImageNet's for torchvision's weights)."""

    num_classes: int
    trunk: str = "small"
    convs: Sequence[int] = (16, 32, 64, 128)
    fc: Sequence[int] = (256, 256)
    dropout: float = 0.5
    norm: str = "unit"

    @nn.compact
    def __call__(self, frames, train: bool):
        x = normalize(frames, self.norm, self.dtype)
        if self.trunk == "densenet121":
            h = DenseNet(dtype=self.dtype, name="densenet")(x, train)
        elif self.trunk == "small":
            h = ConvEncoder(tuple(self.convs), dtype=self.dtype, name="trunk")(x, train)
        else:
            raise ValueError(f"unknown frame CNN trunk {self.trunk!r}: small or densenet121")
        for i, f in enumerate(self.fc):
            h = nn.Dropout(self.dropout, deterministic=not train)(h) if i else h
            h = nn.relu(nn.Dense(f, dtype=self.dtype, name=f"fc{i}")(h))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(
            nn.Dropout(self.dropout, deterministic=not train)(h))
        return h.astype(jnp.float32), logits.astype(jnp.float32)


# ----------------------------------------------------------------------------- 3D CNN
class AuxClassifier(Layer):
    """The 3D CNN's auxiliary classifier on v: FC - BN - dropout - ReLU - FC (Fig. 3)."""

    hidden: int
    num_classes: int
    dropout: float = 0.5

    @nn.compact
    def __call__(self, v, train: bool):
        h = nn.Dense(self.hidden, dtype=self.dtype, name="fc0")(v)
        h = nn.BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn")(h)
        h = nn.relu(nn.Dropout(self.dropout, deterministic=not train)(h))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc1")(h).astype(jnp.float32)


# ----------------------------------------------------------------------------- the family's module
class VSHNN(Layer):
    variant: str = "c3d_sagru_b"
    num_classes: int = 7
    frame_trunk: str = "small"
    frame_convs: Sequence[int] = (16, 32, 64, 128)
    frame_fc: Sequence[int] = (256, 256)
    c3d_stages: Sequence[Sequence[int]] = ((16,), (32,), (64,), (128,))
    c3d_pools: Sequence[Sequence[int]] = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    c3d_downsample: int = 1  #: the clip average-pooled this many times in space before the 3D CNN
    c3d_norm: str = "unit"  #: the 3D CNN's input normalisation (the C3D port's weights: raw; 3D-ResNets': kinetics)
    c3d_frozen: bool = False  #: the 3D CNN's convolutions frozen (config freeze_convs): its BatchNorm in inference mode
    frame_norm: str = "unit"  #: the frame CNN's input normalisation (torchvision's DenseNet-121: imagenet)
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
    fusion_fit: str = "joint"  #: a late fusion's protocol (`FUSION_FITS`)
    lmed: str = "cf"  #: the landmark feature: "cf" (LMED-CF) or "distances" (LMED, no correlations)

    def landmarks(self, clip_landmarks: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """The landmark branch: LMED-CF mapped to [-1, 1] by the training split's range (the
        "stats" collection; sown as intermediates "lmed_cf"), through its MLP: (l', q)."""
        f = lmed_cf(clip_landmarks, self.lmed == "cf")
        lo = self.variable("stats", "lmed_min", jnp.zeros, f.shape[-1:], jnp.float32).value
        hi = self.variable("stats", "lmed_max", jnp.ones, f.shape[-1:], jnp.float32).value
        f = 2.0 * (f - lo) / jnp.maximum(hi - lo, 1e-6) - 1.0
        self.sow("intermediates", "lmed_cf", f)
        return LandmarkMLP(self.num_classes, tuple(self.lmed_blocks), dtype=self.dtype, name="lmed_mlp")(f, train)

    @nn.compact
    def __call__(self, batch: dict, train: bool = False) -> dict:
        if self.variant == "frames":  # stage 1: every frame classified on its own
            clip = batch["clip"]
            b, t = clip.shape[:2]
            feats, logits = FrameCNN(self.num_classes, self.frame_trunk, tuple(self.frame_convs),
                                     tuple(self.frame_fc), self.dropout, self.frame_norm, dtype=self.dtype,
                                     name="frame_cnn")(clip.reshape(b * t, *clip.shape[2:]), train)
            frame_logits = logits.reshape(b, t, -1)
            return {"logits": frame_logits.mean(1), "frame_logits": frame_logits,
                    "features": feats.reshape(b, t, -1)}
        if self.variant == "lmedcf":
            return {"logits": self.landmarks(batch["clip_landmarks"], train)[1]}
        out: dict = {"introspect": {}}
        if self.fusion in LATE_FUSIONS and self.fusion_fit == "held_out":  # the fusion layer alone: [p, q] read
            p, q = jnp.split(batch[SCORES_FIELD].astype(jnp.float32), 2, -1)
            return self.fuse(p, q, out)
        uses_c3d, cell, connection = parse_variant(self.variant)
        l_feat = q = v = None
        if self.fusion:
            l_feat, q = self.landmarks(batch["clip_landmarks"], train)
        if uses_c3d:
            if self.head_only:
                v = batch[SCENE_FIELD].astype(self.dtype)
            else:
                if self.variant in RESNETS_3D:  # Table 2's ResNet3D / ResNeXt3D: the pooled trunk
                    h = ResNet3D(**RESNETS_3D[self.variant], norm=self.c3d_norm, dtype=self.dtype,
                                 name="c3d_convs")(batch["clip"], train and not self.c3d_frozen)
                else:
                    h = C3D(tuple(map(tuple, self.c3d_stages)), tuple(map(tuple, self.c3d_pools)),
                            self.c3d_downsample, self.c3d_norm, dtype=self.dtype, name="c3d_convs")(batch["clip"])
                v = nn.relu(nn.Dense(self.scene, dtype=self.dtype, name="scene")(h))
                out["aux_logits"] = AuxClassifier(self.aux_hidden, self.num_classes, self.dropout, dtype=self.dtype,
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
                         dtype=self.dtype, name="sarnn")(x, v, train)
        if self.fusion in ("", "ic"):
            out["logits"] = p
            return self.fuse(None, None, out)
        # late fusions of the two score vectors; each branch also learns from its own loss
        out["branch_logits"] = {"video": p, "landmark": q}
        if self.fusion_fit == "branches":  # the scores a held-out fusion is fitted on
            out["features"] = jnp.concatenate([p, q], -1).astype(jnp.float32)
        return self.fuse(p, q, out)

    def fuse(self, p: jax.Array | None, q: jax.Array | None, out: dict) -> dict:
        """`out` with the logits of the late fusion of scores p (video) and q (landmarks):
        WS (Eq. 17), LRMF or LRMAF (Eq. 18-21); p, q None: `out` as it is."""
        if p is not None:
            if self.fusion == "ws" or self.fusion_fit == "branches":  # Eq. 17 on the softmax scores; its log is
                # what the loss and argmax read
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
    return VSHNN(variant=config.variant, dtype=compute_dtype(config), c3d_frozen=config.vshnn.freeze_convs,
                 **{k: v for k, v in config.vshnn.items() if k != "freeze_convs"})


def backbones(config) -> dict[str, Backbone]:
    """Published weights (`--config.init.weights`): the frame CNN's DenseNet-121 trunk
    (torchvision's, 3.2) and the 3D CNN's convolutions (3.3: C3D on Sports-1M, ResNet3D-18 /
    ResNeXt3D-101 on Kinetics; the FC layers are the paper's own, trained). With
    `freeze_convs` the 3D CNN is never trained: its weights are required."""
    v, out = config.vshnn, {}
    uses_3d, _, _ = parse_variant(config.variant)
    uses_3d = uses_3d and not stacked(config)
    if config.variant == "frames" and v.frame_trunk == "densenet121":
        out["frame_cnn"] = Backbone(("densenet121",), {"densenet": "frame_cnn/densenet"})
    if uses_3d and not v.head_only:
        arch = config.variant if config.variant in RESNETS_3D else "c3d"
        out["cnn3d"] = Backbone((arch,), {"resnet" if arch in RESNETS_3D else "convs": "c3d_convs"},
                                required=bool(v.freeze_convs))
    return out


def train_frames(config) -> int:
    """Frames of each clip in a stage-1 training example (workdirs written before the option
    trained on whole clips)."""
    return config.input.get("train_frames", config.input.frames)


def stacked(config) -> bool:
    """Whether the model is a late fusion layer alone, fitted on its branches' held-out scores
    (`vshnn.fusion_fit` = "held_out")."""
    return config.vshnn.get("fusion", "") in LATE_FUSIONS and config.vshnn.get("fusion_fit", "joint") == "held_out"


def uses_landmarks(config) -> bool:
    """Whether the model reads the clips' landmarks (LMED-CF alone or fused in the graph)."""
    return config.variant == "lmedcf" or (bool(config.vshnn.get("fusion", "")) and not stacked(config))


def _lmed(config):
    """The landmark feature function of the config (`vshnn.lmed`)."""
    return functools.partial(lmed_cf, correlations=config.vshnn.get("lmed", "cf") == "cf")


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
    fit = v.get("fusion_fit", "joint")
    if fit not in FUSION_FITS:
        raise UserError(f"config vshnn.fusion_fit={fit!r}: expected one of {', '.join(FUSION_FITS)}")
    if fit != "joint" and fusion not in LATE_FUSIONS:
        raise UserError(f"config vshnn.fusion_fit={fit}: fits a late fusion (vshnn.fusion={'|'.join(LATE_FUSIONS)}), "
                        f"not fusion={fusion!r}")
    if v.get("lmed", "cf") not in LMEDS:
        raise UserError(f"config vshnn.lmed={v.lmed!r}: expected one of {', '.join(LMEDS)}")
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
    if stacked(config):  # the fusion layer alone: the two branches' scores [p, q]
        return {SCORES_FIELD: ((2 * v.num_classes,), np.float32)}
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
    f = jax.jit(_lmed(config))
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
    ce = masked_cross_entropy(outputs["logits"], batch["label"], batch["mask"])
    metrics = {"ce": ce}
    # the "branches" stage of a held-out fusion: each branch by its own loss alone, as two networks
    total = 0.0 if config.vshnn.get("fusion_fit", "joint") == "branches" else ce
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
    build, resolve, inputs, backbones = staticmethod(build), staticmethod(resolve), staticmethod(inputs), \
        staticmethod(backbones)
    predict_inputs, statistics, augmentations = staticmethod(predict_inputs), staticmethod(statistics), \
        staticmethod(augmentations)
    preprocess, loss, reports = staticmethod(preprocess), staticmethod(loss), staticmethod(reports)
