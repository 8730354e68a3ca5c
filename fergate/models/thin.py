"""THIN: throwable information networks (paper 003, SPEC.md 5.4).

An endogenous representation h_endo = F_phi(I) feeds L weak predictors (one vmapped
`Experts` module); their logits are mixed by a neural tree gate (Eq. 3-5) read from
h_endo (tree_gated), from a frozen exogenous representation h_exo (exo_tree_gated,
thin), or from the one-hot exogenous label (oracle); THIN adds the dispelling loss
L_sim = |cos(c_sigma(h_exo), c_sigma(h_endo'))| (Eq. 7) with c_sigma the frozen exogenous
classifier. Variant `exo` is the first stage: gamma_tau + c_sigma trained on the
exogenous label, whose parameters the other variants load and freeze.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fergate.models.layers import Experts, LoopExperts, MLPClassifier, TreeGate, max_pool2

VARIANTS = ("baseline", "ensemble", "tree_gated", "exo_tree_gated", "oracle", "thin", "exo")


class ConvEncoder(nn.Module):
    """len(convs) x (Conv3x3 - BN - ReLU - MaxPool2), flattened (the paper's baseline trunk,
    BN before each activation; VGG-style for faces with wider `convs`)."""

    convs: Sequence[int]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        for i, f in enumerate(self.convs):
            x = nn.Conv(f, (3, 3), padding="SAME", dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"bn{i}")(x)
            x = nn.relu(max_pool2(x))
        return x.reshape(x.shape[0], -1)


class THIN(nn.Module):
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
    dtype: jnp.dtype = jnp.float32

    def exogenous(self, batch, train: bool) -> list[jax.Array]:
        """h_exo per exogenous variable: the frozen gamma_tau(I), or a stored representation
        such as the identity embedding."""
        if self.exo_input != "image":
            return [batch[self.exo_input].astype(jnp.float32)]
        x = batch[self.image_field].astype(self.dtype) / 255.0
        return [ConvEncoder(self.exo_convs, self.dtype, name=f"exo_encoder_{n}")(x, train and self.variant == "exo")
                for n in self.exo_names]

    def exo_classifier(self, i: int) -> nn.Module:
        """c_sigma of variable i: MLP on an exogenous-width representation -> its bins."""
        return MLPClassifier(tuple(self.exo_hidden), self.exo_classes[i], self.dtype,
                             name=f"exo_classifier_{self.exo_names[i]}")

    @nn.compact
    def __call__(self, batch: dict, train: bool = False) -> dict:
        if self.variant == "exo":  # stage 1: gamma_tau and c_sigma on one exogenous label
            if len(self.exo_names) != 1:
                raise ValueError("stage 1 (variant exo) trains one exogenous variable at a time")
            return {"logits": self.exo_classifier(0)(self.exogenous(batch, train)[0])}
        x = batch[self.image_field].astype(self.dtype) / 255.0
        h_endo = ConvEncoder(self.endo_convs, self.dtype, name="endo")(x, train)
        out = {"introspect": {}, "losses": {}}
        if self.variant == "baseline":
            out["logits"] = MLPClassifier(tuple(self.baseline_hidden), self.num_classes, self.dtype,
                                          name="classifier")(h_endo)
            return out
        experts = Experts if self.experts_impl == "vmap" else LoopExperts
        z = experts(self.members, tuple(self.expert_hidden), self.num_classes, self.dtype, name="experts")(h_endo)
        if self.variant in ("exo_tree_gated", "thin"):  # gamma_tau is frozen
            h_exo = [jax.lax.stop_gradient(h) for h in self.exogenous(batch, False)]
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
        if self.variant == "thin" or (self.variant == "exo_tree_gated" and self.exo_input == "image"):
            # |cos| per exogenous variable is reported for exo_tree_gated too (Fig. 8: without
            # dispelling); only THIN trains on it. c_sigma is frozen by the optimizer, not by
            # stop_gradient: L_sim must reach F_phi.
            cos = []
            for i, (name, h) in enumerate(zip(self.exo_names, h_exo)):
                h_endo_exo = nn.Dense(h.shape[-1], dtype=self.dtype, name=f"proj_{name}")(h_endo) \
                    if h_endo.shape[-1] != h.shape[-1] else h_endo
                c_sigma = self.exo_classifier(i)
                z_exo, z_endo = c_sigma(h), c_sigma(h_endo_exo)
                cos.append(jnp.abs(jnp.sum(z_exo * z_endo, -1)) / (
                    jnp.linalg.norm(z_exo, axis=-1) * jnp.linalg.norm(z_endo, axis=-1) + 1e-8))
            out["introspect"]["abs_cos"] = cos = jnp.stack(cos, -1)
            if self.variant == "thin":
                out["losses"]["dispel"] = self.dispel_weight * jnp.mean(cos)
        return out


def build(config) -> THIN:
    t = config.thin
    return THIN(config.variant, t.num_classes, tuple(t.exo_names), tuple(t.exo_fields), tuple(t.exo_classes),
                t.image_field, t.exo_input, tuple(t.endo_convs), tuple(t.exo_convs), tuple(t.baseline_hidden),
                tuple(t.exo_hidden), t.members, tuple(t.expert_hidden), t.depth, t.dispel_weight, t.experts,
                jnp.dtype(config.train.dtype))


#: training subjects assumed when there is no data to count them (`fergate bench`)
BENCH_SUBJECTS = 100


def resolve(config, manifest: dict | None) -> None:
    """FER: the exogenous classifier c_sigma predicts the training subjects; stage 1 on a
    synthetic task reports its exogenous bins by number."""
    t = config.thin
    subjects = len(manifest["splits"][config.data.train_split]["subjects"]) if manifest else BENCH_SUBJECTS
    t.exo_classes = tuple(k or subjects for k in t.exo_classes)
    if config.variant == "exo" and config.data.label_field not in ("label", "subject"):
        config.data.classes = [f"{config.data.label_field}={i}" for i in range(t.exo_classes[0])]


def inputs(config) -> dict:
    t = config.thin
    s = config.input.image_size
    spec = {t.image_field: ((s, s, t.channels), np.uint8)}
    if config.variant == "oracle":
        spec.update({f: ((), np.int32) for f in t.exo_fields})
    if t.exo_input != "image" and config.variant in ("exo", "exo_tree_gated", "thin"):
        spec[t.exo_input] = ((t.exo_width,), np.float32)
    return spec
