"""THIN: throwable information networks (Arnaud, Dapogny, Bailly).

An endogenous representation h_endo = F_phi(I) feeds L weak predictors (one vmapped
`Experts` module); their logits are mixed by a neural tree gate (Eq. 3-5) read from
h_endo (tree_gated), from a frozen exogenous representation h_exo (exo_tree_gated,
thin), or from the one-hot exogenous label (oracle); THIN adds the dispelling loss
L_sim = |cos(c_sigma(h_exo), c_sigma(h_endo'))| (Eq. 7) with c_sigma the frozen exogenous
classifier. Variant `exo` is the first stage: gamma_tau + c_sigma trained on the
exogenous label, whose parameters the other variants load and freeze (the family's earlier
stage, `config.pretrain`). The evaluation report draws the inputs each expert weighs most
(Fig. 10) and the distribution of |cos| (Fig. 8; `compare`: across runs).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fergate import plots
from fergate.data import pipeline
from fergate.errors import UserError
from fergate.models import Backbone, Family, Results, compute_dtype, num_classes_from_data
from fergate.models.backbones import VGG16
from fergate.models.layers import ConvEncoder, Experts, Layer, LoopExperts, MLPClassifier, TreeGate

VARIANTS = ("baseline", "ensemble", "tree_gated", "exo_tree_gated", "oracle", "thin", "exo")


class THIN(Layer):
    """`exo_names` lists the exogenous variables (one, or several whose representations are
    concatenated for the gate: Table 3's rotation + scale); variable n has its own
    gamma_tau `exo_encoder_n` and c_sigma `exo_classifier_n`, predicting `exo_fields[i]`
    over `exo_classes[i]` bins. Stage 1 (`exo`) trains one variable's pair."""

    variant: str = "thin"
    num_classes: int = 10
    exo_names: Sequence[str] = ("rotation",)
    exo_fields: Sequence[str] = ("rotation_bin",)  #: also the oracle's gate input (one-hot)
    exo_classes: Sequence[int] = (18,)
    image_field: str = "image"
    exo_input: str = "image"  #: "image": gamma_tau is a CNN on the image; else a record field (identity)
    endo_convs: Sequence[int] = (16, 16)
    exo_convs: Sequence[int] = (16, 16)
    baseline_hidden: Sequence[int] = (256,)
    exo_hidden: Sequence[int] = (256,)
    members: int = 8
    expert_hidden: Sequence[int] = (32,)
    depth: int = 3
    dispel_weight: float = 0.005
    experts_impl: str = "vmap"  #: "loop" only to measure what vmap saves
    #: the representation networks: "conv" (`ConvEncoder` of endo_convs / exo_convs) or "vgg16"
    #: (4.3: VGG-16's 13 convolutions, the published weights' `endo_norm` / `exo_norm` input)
    backbone: str = "conv"
    endo_norm: str = "imagenet"  #: vgg16: torchvision's ImageNet weights ("imagenet") or VGG-Face's ("vggface")
    exo_norm: str = "vggface"  #: vgg16: the identity network is VGG-Face (4.3)

    def encode(self, image: jax.Array, convs: Sequence[int], norm: str, name: str, train: bool) -> jax.Array:
        """A representation network on the uint8 image: VGG-16 (normalising as its weights
        expect) or a ConvEncoder on [0, 1] pixels."""
        if self.backbone == "vgg16":
            return VGG16(norm=norm, dtype=self.dtype, name=name)(image)
        if self.backbone != "conv":
            raise ValueError(f"unknown THIN backbone {self.backbone!r}: conv or vgg16")
        return ConvEncoder(tuple(convs), dtype=self.dtype, name=name)(image.astype(self.dtype) / 255.0, train)

    def exogenous(self, batch, train: bool) -> list[jax.Array]:
        """h_exo per exogenous variable: the frozen gamma_tau(I), or a stored representation
        such as the identity embedding."""
        if self.exo_input != "image":
            return [batch[self.exo_input].astype(jnp.float32)]
        return [self.encode(batch[self.image_field], self.exo_convs, self.exo_norm, f"exo_encoder_{n}",
                            train and self.variant == "exo") for n in self.exo_names]

    def exo_classifier(self, i: int) -> nn.Module:
        """c_sigma of variable i: MLP on an exogenous-width representation -> its bins."""
        return MLPClassifier(tuple(self.exo_hidden), self.exo_classes[i], dtype=self.dtype,
                             name=f"exo_classifier_{self.exo_names[i]}")

    @nn.compact
    def __call__(self, batch: dict, train: bool = False) -> dict:
        if self.variant == "exo":  # stage 1: gamma_tau and c_sigma on one exogenous label
            if len(self.exo_names) != 1:
                raise ValueError("stage 1 (variant exo) trains one exogenous variable at a time")
            h = self.exogenous(batch, train)[0]
            return {"logits": self.exo_classifier(0)(h), "representations": {self.exo_names[0]: h}}
        h_endo = self.encode(batch[self.image_field], self.endo_convs, self.endo_norm, "endo", train)
        # the spaces Fig. 9 / 11 compare on same / different-person pairs (`fergate eval --pairs`)
        out = {"introspect": {}, "losses": {}, "representations": {"expression": h_endo}}
        if self.variant == "baseline":
            out["logits"] = MLPClassifier(tuple(self.baseline_hidden), self.num_classes, dtype=self.dtype,
                                          name="classifier")(h_endo)
            return out
        experts = Experts if self.experts_impl == "vmap" else LoopExperts
        z = experts(tuple(self.expert_hidden), self.num_classes, members=self.members, dtype=self.dtype,
                    name="experts")(h_endo)
        if self.variant in ("exo_tree_gated", "thin"):  # gamma_tau is frozen
            h_exo = [jax.lax.stop_gradient(h) for h in self.exogenous(batch, False)]
            out["representations"].update(zip(self.exo_names, h_exo))
        if self.variant == "ensemble":
            g = jnp.full(z.shape[:2], 1.0 / self.members)
        else:
            if self.variant == "tree_gated":
                h_g = h_endo
            elif self.variant == "oracle":
                h_g = jnp.concatenate([jax.nn.one_hot(batch[f], k) for f, k in zip(self.exo_fields, self.exo_classes)],
                                      -1)
            else:
                h_g = jnp.concatenate(h_exo, -1)
            g = TreeGate(self.depth, name="gate")(h_g)
            out["introspect"]["gate"] = g
        out["logits"] = jnp.einsum("blk,bl->bk", z.astype(jnp.float32), g)  # mixed in logit space
        if self.variant in ("exo_tree_gated", "thin"):
            # |cos| per exogenous variable, for exo_tree_gated too (Fig. 8's lambda = 0 curve);
            # only THIN trains on it. c_sigma's parameters are frozen (optim.frozen: constants to
            # autodiff), its output is not cut off: L_sim must reach F_phi through it.
            cos = []
            for i, h in enumerate(h_exo):
                c_sigma = self.exo_classifier(i)
                z_exo, z_endo = c_sigma(h), c_sigma(fixed_projection(h_endo, h.shape[-1]))
                cos.append(jnp.abs(jnp.sum(z_exo * z_endo, -1)) / (
                    jnp.linalg.norm(z_exo, axis=-1) * jnp.linalg.norm(z_endo, axis=-1) + 1e-8))
            out["introspect"]["abs_cos"] = cos = jnp.stack(cos, -1)
            out["metrics"] = {"abs_cos": jnp.mean(cos)}
            if self.variant == "thin":
                out["losses"]["dispel"] = self.dispel_weight * jnp.mean(cos)
        return out


def fixed_projection(h: jax.Array, width: int) -> jax.Array:
    """h (B, F) in c_sigma's input width: itself when F = width (the identity network has the
    expression network's architecture, section 3.3), else a fixed random Gaussian projection
    (the 128-d dlib embedding option). Fixed, not learned: a projection trained only by the
    dispelling loss would lower it without removing identity from h."""
    if h.shape[-1] == width:
        return h
    p = np.random.default_rng(0).standard_normal((h.shape[-1], width)) / np.sqrt(h.shape[-1])
    return h @ jnp.asarray(p, h.dtype)


def build(config) -> THIN:
    return THIN(variant=config.variant, dtype=compute_dtype(config), **config.thin)


def backbones(config) -> dict[str, Backbone]:
    """With VGG-16 representation networks (`configs/thin.py:task=fer,paper=True`, 4.3): the
    expression network's convolutions from VGG-16 on ImageNet or on VGG-Face (Table 4), and
    the identity network whole from VGG-Face: gamma_tau its convolutions, c_sigma its fc6 -
    fc8 (frozen, never trained: required)."""
    t = config.thin
    if t.get("backbone", "conv") != "vgg16":
        return {}
    out = {"expression": Backbone(("vggface" if t.endo_norm == "vggface" else "vgg16",), {"convs": "endo"})}
    if config.variant in ("exo_tree_gated", "thin") and t.exo_input == "image":
        n = t.exo_names[0]
        out["identity"] = Backbone(("vggface",), {"convs": f"exo_encoder_{n}", "mlp": f"exo_classifier_{n}/mlp",
                                                  "out": f"exo_classifier_{n}/out"}, required=True)
    return out


#: training subjects and classes assumed when there is no data to count them (`fergate bench`)
BENCH_SUBJECTS, BENCH_CLASSES = 100, 7


def resolve(config, manifest: dict | None) -> None:
    """FER: the exogenous classifier c_sigma predicts the training subjects; stage 1 on a
    synthetic task reports its exogenous bins by number. The classes come from the data
    (stage 1: the exogenous label's)."""
    t = config.thin
    subjects = len(pipeline.split_entry(manifest, pipeline.training_split(manifest, config.data))["subjects"]) \
        if manifest else BENCH_SUBJECTS
    t.exo_classes = tuple(k or subjects for k in t.exo_classes)
    if config.variant == "exo":
        if config.data.label_field not in ("label", "subject"):
            config.data.classes = tuple(f"{config.data.label_field}={i}" for i in range(t.exo_classes[0]))
        return  # stage 1 predicts the exogenous label with c_sigma
    num_classes_from_data(config, "thin", BENCH_CLASSES)


def inputs(config) -> dict:
    t, s = config.thin, config.input.image_size
    spec = {t.image_field: ((s, s, config.input.channels), np.uint8)}
    if config.variant == "oracle":
        spec.update({f: ((), np.int32) for f in t.exo_fields})
    if t.exo_input != "image" and config.variant in ("exo", "exo_tree_gated", "thin"):
        spec[t.exo_input] = ((config.input.identity_width,), np.float32)
    return spec


def preprocess(config, train: bool) -> tuple[list, list]:
    """After the augmentations, the image resized to the input (faces; dSprites' 64 x 64 to
    the ~200k-parameter size)."""
    s = config.input.image_size
    return [], [pipeline.ResizeFace((s, s), grey=config.input.channels == 1, field=config.thin.image_field)]


#: inputs shown per expert in Fig. 10
TOP_INPUTS = 8


def reports(results: Results, outdir: str) -> dict:
    """Fig. 10: for each expert, the test inputs its gate weight is highest on; Fig. 8: the
    distribution of |cos| between c_sigma of the exogenous and endogenous representations
    (in eval.json as `abs_cos_histogram`, drawn in abs_cos.png)."""
    out = {}
    if "gate" in results.introspect:
        gate = results.introspect["gate"]  # (N, L)
        means = results.class_means("gate")
        plots.class_table(means, [str(i) for i in range(gate.shape[1])],
                          "THIN tree gate: mean weight of each expert per class", os.path.join(outdir, "gate.png"),
                          "mean gate weight (each row sums to 1)", vmax=max(float(v.max()) for v in means.values()),
                          xlabel="expert")
        top = np.argsort(-gate, axis=0, kind="stable")[:TOP_INPUTS].T  # (L, k) example positions
        field = results.config.thin.image_field
        images = results.read(results.index[top.ravel()], (field,))[field]
        plots.image_grid(images.reshape(*top.shape, *images.shape[1:]), [f"expert {i}" for i in range(len(top))],
                         "THIN: test inputs with the highest gate weight, per expert (Fig. 10)",
                         os.path.join(outdir, "top_inputs_per_expert.png"), "highest weight first, left to right")
    if "abs_cos" in results.introspect:
        cos = results.introspect["abs_cos"]
        counts, edges = np.histogram(cos.ravel(), bins=20, range=(0.0, 1.0))
        out["abs_cos_histogram"] = {"counts": counts.tolist(), "edges": edges.tolist(), "mean": float(cos.mean())}
        _plot_abs_cos({f"{results.config.variant} (this run)": out["abs_cos_histogram"]},
                      os.path.join(outdir, "abs_cos.png"))
    return out


def compare(runs: dict[str, dict], outdir: str) -> list[str]:
    """Fig. 8 across runs {workdir: eval.json}: |cos| with and without the dispelling loss."""
    missing = [w for w, r in runs.items() if "abs_cos_histogram" not in r]
    if missing:
        raise UserError(f"no |cos| introspection in {', '.join(missing)} (THIN exo_tree_gated / thin runs have it)")
    names = {w: f"{r.get('variant', '')} {os.path.basename(os.path.normpath(w))}".strip() for w, r in runs.items()}
    return [_plot_abs_cos({names[w]: r["abs_cos_histogram"] for w, r in runs.items()},
                          os.path.join(outdir, "abs_cos_compare.png"))]


def _plot_abs_cos(histograms: dict[str, dict], path: str) -> str:
    return plots.distributions(histograms, "|cos| between c_sigma(h_exo) and c_sigma(h_endo)",
                               "THIN: similarity of exogenous and endogenous class scores (Fig. 8)", path)


class FAMILY(Family):
    name, section, augmentation_ops = "thin", "thin", ("flip", "rotate", "brightness_contrast", "hue_saturation")
    build, resolve, inputs = staticmethod(build), staticmethod(resolve), staticmethod(inputs)
    preprocess, reports, compare = staticmethod(preprocess), staticmethod(reports), staticmethod(compare)
    backbones = staticmethod(backbones)
