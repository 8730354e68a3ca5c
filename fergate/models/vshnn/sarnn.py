"""VSHNN's scene-aware RNN (paper 004, 3.4-3.6): SALSTM / SAGRU cells with the scene feature v
entering by connection A (every gate), B (the initial state) or C (the input), scanned over
the frames."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fergate.models.layers import Layer

#: gates per cell, in the order of the fused kernels' columns (PyTorch's)
CELL_GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


def lstm_step(carry: tuple[jax.Array, jax.Array], pre: jax.Array,
              w_h: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """One LSTM step (Eq. 3-8) from the input terms `pre` = W_x x_n (+ W_v v) + b, all four
    gates side by side: i, f, o = sigmoid, g = tanh; c = f c + i g; h = o tanh(c)."""
    h, c = carry
    i, f, g, o = jnp.split(pre + h @ w_h, 4, -1)
    c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    h = nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


def gru_step(h: jax.Array, pre: jax.Array, w_h: jax.Array, b_hn: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One GRU step (Cho et al. 2014, PyTorch's form): r, z = sigmoid(x-terms + W_h h);
    n = tanh(x-term + r (W_hn h + b_hn)); h = (1 - z) n + z h. A GRU has no cell state."""
    xr, xz, xn = jnp.split(pre, 3, -1)
    hr, hz, hn = jnp.split(h @ w_h, 3, -1)
    r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * (hn + b_hn))
    h = (1.0 - z) * n + z * h
    return h, h


class SARNN(Layer):
    """Scene-aware RNN over appearance features x (B, N, F) with the scene feature v (B, D)
    (None: a plain RNN, Table 2's CNN-LSTM / CNN-GRU). The input terms of every step
    (W_x x_n, and W_v v for type A) are one matmul before the loop; the loop is a scan of
    the recurrent matmul and the gates. Returns the logits and the last hidden state."""

    num_classes: int
    cell: str = "lstm"
    connection: str | None = "a"
    hidden: int = 2048
    head: int = 1024
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, v, train: bool):
        gates = len(CELL_GATES[self.cell]) * self.hidden
        b = x.shape[0]
        x = x.astype(self.dtype)
        if self.connection == "c":  # Eq. 11-14: the input is [x_n, v]
            x = jnp.concatenate([x, jnp.broadcast_to(v[:, None].astype(self.dtype), (*x.shape[:2], v.shape[-1]))],
                                -1)
        pre = nn.Dense(gates, dtype=self.dtype, name="input")(x)  # (B, N, G H)
        if self.connection == "a":  # Eq. 3-6: W_v v in every gate, the same at every step
            pre = pre + nn.Dense(gates, use_bias=False, dtype=self.dtype, name="scene")(v.astype(self.dtype))[:, None]
        h0 = jnp.zeros((b, self.hidden), self.dtype)
        if self.connection == "b":  # Eq. 10: h_0 = v, projected when the widths differ
            h0 = v.astype(self.dtype) if v.shape[-1] == self.hidden else \
                nn.Dense(self.hidden, dtype=self.dtype, name="scene_to_h0")(v.astype(self.dtype))
        w_h = self.param("recurrent_kernel", nn.initializers.orthogonal(), (self.hidden, gates)).astype(self.dtype)
        if self.cell == "lstm":  # carry (h, c), c_0 = 0
            _, hs = jax.lax.scan(lambda carry, p: lstm_step(carry, p, w_h), (h0, jnp.zeros_like(h0)),
                                 pre.swapaxes(0, 1))
        else:  # carry h
            b_hn = self.param("recurrent_bias_n", nn.initializers.zeros, (self.hidden,)).astype(self.dtype)
            _, hs = jax.lax.scan(lambda h, p: gru_step(h, p, w_h, b_hn), h0, pre.swapaxes(0, 1))
        h = hs[-1]
        y = nn.Dropout(self.dropout, deterministic=not train)(h)
        y = nn.relu(nn.Dense(self.head, dtype=self.dtype, name="head0")(y))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head1")(y).astype(jnp.float32), h


