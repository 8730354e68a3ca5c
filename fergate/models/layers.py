"""Layers shared by the model families: MLP and conv stacks, and the gates of the papers."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """Dense - ReLU stack (ReLU after every layer: the paper's FCN features are >= 0)."""

    features: Sequence[int]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            x = nn.relu(nn.Dense(f, dtype=self.dtype, name=f"dense{i}")(x))
        return x


class ConvPool(nn.Module):
    """len(features) x (Conv3x3 'same' - ReLU - MaxPool2), NHWC, then flatten."""

    features: Sequence[int]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            x = nn.relu(nn.Conv(f, (3, 3), padding="SAME", dtype=self.dtype, name=f"conv{i}")(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        return x.reshape(x.shape[0], -1)


class FaceGate(nn.Module):
    """A gate computed from the whole face: ConvPool trunk - Dense - ReLU - Dense(outputs).

    `kind="landmark"`: 2 * sigmoid, values in [0, 2] with mean 1 at initialisation, so a
    gated input keeps its expected scale (MoDuL Eq. 2-3). `kind="modal"`: softmax over the
    outputs (MoDuL Eq. 8).
    """

    outputs: int
    kind: str = "landmark"
    convs: Sequence[int] = (32, 64, 64)
    hidden: int = 64
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, face):
        h = ConvPool(self.convs, self.dtype, name="trunk")(face)
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(h))
        logits = nn.Dense(self.outputs, dtype=jnp.float32, name="out")(h).astype(jnp.float32)
        if self.kind == "landmark":
            return 2.0 * nn.sigmoid(logits)
        if self.kind == "modal":
            return nn.softmax(logits, axis=-1)
        raise ValueError(f"unknown gate kind {self.kind!r}")
