"""Why an attention-CNN run does or does not leave ln K: per step of a from-scratch run, the
statistics of the trunk's output A_0 and of the pooled feature z, the attention map's entropy,
the gradient norm and the relative update of each layer, and the loss (not a test: a
measurement for the README and for whoever changes the model's initialisation or optimizer).

    python tools/attention_diagnose.py --config configs/attention.py:variant=attention,from_baseline=False \
        --steps 200 --out diag.jsonl [--config.optim.warmup_steps=50 ...]

It trains as `fergate train` does (the config's data, pipeline, optimizer and step) on the
config's data (the built-in sample set is prepared on first use) and prints one line per
`--every` steps; `--out` keeps every step as JSON lines. Columns:

- loss: the training batch's cross-entropy before the step (ln K: chance);
- a0_mean, a0_zero: the mean of A_0 and the fraction of its units at 0 (dead ReLUs);
- z_mean, z_zero, z_spread: the pooled feature's mean over the batch and its channels, the
  fraction of channels that are 0 for every example, and the mean over channels of its
  spread across examples relative to its mean (0: every face pooled to the same vector);
- entropy: the attention map's entropy over its locations, in units of ln(H W) (1: uniform);
- in_face: the map's mass inside the landmarks' convex hull over the hull's share of the crop
  (eval.json's `attention_in_face.ratio` on the training batch; 1: no better than uniform);
- h1_std, a1_sat: the spread of the scorer's hidden pre-activation A_0 W_1 + b_1 and the
  fraction of A_1 = tanh(.) beyond 0.95 in magnitude (a saturated tanh passes no gradient);
- a2_loc: the spread of A_2 over one face's locations (mean over faces), a2_range its max
  minus min: beta times it is the log of the most and least weighted locations' ratio;
- grad/<layer>: the gradient's norm; upd/<layer>: the step's update norm over the weights'.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fergate import config as C  # noqa: E402
from fergate.models.attention import mass_in_hull, scale_input  # noqa: E402
from fergate.train.data import DataPlan  # noqa: E402
from fergate.train.mesh import global_batch  # noqa: E402
from fergate.train.program import Program  # noqa: E402


def layers(tree: dict) -> dict[str, jax.Array]:
    """{'features/conv0_0': norm, ...}: the norm of each layer's parameters (kernel and bias)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        keys = [str(getattr(p, "key", p)) for p in path[:-1]]
        name = "/".join(keys)
        out[name] = out.get(name, 0.0) + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return {k: jnp.sqrt(v) for k, v in out.items()}


def pooled(module, batch):
    """A_0, the weights B (None for the baseline) and the pooled z of a batch, as in training
    (batch statistics) without dropout (the module's own trunk and scorer; Eq. 1-4). Applied
    with capture_intermediates, the scorer's W1 and W2 outputs are kept too."""
    a0 = module.features(scale_input(batch["face"], module.dtype)).astype(jnp.float32)
    n, h, w, _ = a0.shape
    if module.variant == "baseline":
        return a0, None, a0.reshape(n, -1)
    return a0, *module.pool(a0, True)


def make_probe(prog: Program):
    """probe(state, batch) -> the statistics of one step (the columns above) and the next state."""

    def probe(state, raw):
        batch = prog.augment(raw, state.step)  # as the step augments it (the same draws)
        (a0, b, z), inter = prog.module.apply({"params": state.params, **state.model_state}, batch, method=pooled,
                                              capture_intermediates=True, mutable=["intermediates", "batch_stats"])
        rng = jax.random.fold_in(jax.random.key(prog.config.seed), state.step)
        metrics, grads, _ = prog._grads(state.params, state.model_state, batch, rng)
        zm = jnp.mean(z, 0)
        stats = {"loss": metrics["loss"], "accuracy": metrics["accuracy"],
                 "a0_mean": jnp.mean(a0), "a0_zero": jnp.mean(a0 <= 0),
                 "z_mean": jnp.mean(z), "z_zero": jnp.mean(jnp.all(z <= 0, 0)),
                 "z_spread": jnp.mean(jnp.std(z, 0) / (jnp.abs(zm) + 1e-12) * (zm > 0)) / jnp.maximum(jnp.mean(zm > 0),
                                                                                                      1e-12)}
        if b is not None:
            hw = b.shape[1] * b.shape[2]
            stats["entropy"] = jnp.mean(-jnp.sum(b * jnp.log(b + 1e-30), (1, 2))) / math.log(hw)
            stats["b_max"] = jnp.mean(jnp.max(b, (1, 2)))
        if "scorer" in inter.get("intermediates", {}):
            h1 = inter["intermediates"]["scorer"]["W1"]["__call__"][0].astype(jnp.float32)
            a2 = jnp.tanh(inter["intermediates"]["scorer"]["W2"]["__call__"][0][..., 0].astype(jnp.float32))
            stats["h1_std"] = jnp.std(h1)
            stats["a1_sat"] = jnp.mean(jnp.abs(jnp.tanh(h1)) > 0.95)
            stats["a2_loc"] = jnp.mean(jnp.std(a2, (1, 2)))
            stats["a2_range"] = jnp.mean(jnp.max(a2, (1, 2)) - jnp.min(a2, (1, 2)))
            stats["a2_mean"] = jnp.mean(a2)
        stats.update({f"grad/{k}": v for k, v in layers(grads).items()})
        new, _ = prog._train_step(state, raw)
        before = layers(state.params)
        moved = layers(jax.tree.map(lambda x, y: x - y, new.params, state.params))
        stats.update({f"upd/{k}": moved[k] / (before[k] + 1e-12) for k in moved})
        return new, stats, b, batch.get("landmarks")

    return jax.jit(probe)


def in_face(b, landmarks) -> float:
    """The maps' mean mass inside the landmarks' hull over the hull's mean share of the crop
    (the evaluation report's measure, `attention.reports`, on one batch)."""
    mass, area = zip(*(mass_in_hull(m, lm, (b.shape[1] * 16, b.shape[2] * 16)) for m, lm in zip(b, landmarks)))
    return float(np.mean(mass) / max(np.mean(area), 1e-12))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="configs/attention.py:variant=attention,from_baseline=False",
                    help="the config file and its arguments (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=200, help="steps to run (default: %(default)s)")
    ap.add_argument("--every", type=int, default=10, help="print every this many steps (default: %(default)s)")
    ap.add_argument("--out", default="", help="JSON lines of every step's statistics (default: none)")
    ap.add_argument("--random_classifier", action="store_true",
                    help="start the pooled heads' classifier from LeCun-normal weights instead of the model's zeros "
                         "(to measure whether the zero start still matters; default: the model's)")
    args, rest = ap.parse_known_args(argv)
    bad = [r for r in rest if not r.startswith("--config.")]
    if bad:
        ap.error(f"unknown arguments {' '.join(bad)} (config overrides are --config.a.b=value)")
    config = C.load(args.config, rest)
    data = DataPlan.build(config)
    prog = Program(config)
    state = prog.new_state()
    if args.random_classifier:
        k = state.params["classifier"]["kernel"]
        init = jax.nn.initializers.lecun_normal()(jax.random.key(config.seed), k.shape, k.dtype)
        state = state.replace(params={**state.params, "classifier": {**state.params["classifier"], "kernel": init}})
    it = iter(data.input_pipeline(data.portions.train, train=True))
    probe = make_probe(prog)
    print(f"{config.model}/{config.variant}: {prog.n_params():,} parameters, ln K = {math.log(prog.num_classes):.3f}")
    out = open(args.out, "w") if args.out else None
    shown = ("loss", "a0_mean", "a0_zero", "z_spread", "entropy", "in_face", "h1_std", "a1_sat", "a2_loc",
             "grad/features/conv0_0", "grad/features/conv3_1", "grad/scorer/W1", "grad/scorer/W2", "grad/classifier",
             "upd/features/conv3_1", "upd/scorer/W1", "upd/classifier")
    for step in range(args.steps):
        batch = global_batch(next(it), prog.batch_sharding)
        state, stats, b, landmarks = probe(state, batch)
        row = {"step": step, **{k: float(v) for k, v in jax.device_get(stats).items()}}
        if b is not None and landmarks is not None:
            row["in_face"] = in_face(np.asarray(b), np.asarray(landmarks))
        if out:
            out.write(json.dumps(row) + "\n")
        if step % args.every == 0 or step == args.steps - 1:
            print(" ".join(f"{k.replace('grad/', 'g:').replace('upd/', 'u:').replace('features/', '')}={row[k]:.3g}"
                           for k in ("step", *shown) if k in row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
