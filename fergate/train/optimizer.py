"""The optimizer a config names: Adam(W) or SGD, its learning-rate schedule, clipping, and
the frozen and rate-scaled parameter subtrees."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from fergate.errors import UserError


def decay_horizon(config) -> int:
    """The step at which the learning rate reaches `optim.end_lr`: `optim.decay_steps`, or
    `train.steps` when 0."""
    return config.optim.decay_steps or config.train.steps


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam(W) or SGD with momentum (weight decay on the kernels), polynomial decay (power
    `decay_power`) over `decay_horizon`, or with `step_every` > 0 the rate times
    `step_factor` every `step_every` steps (floored at `end_lr`), after an optional linear
    warm-up, optional global-norm clipping (`grad_clip`) and elementwise clipping
    (`clip_value`); the `optim.frozen` parameter subtrees (pretrained
    parts) get no update and no optimizer state; `optim.lr_scale` entries "subtree=factor"
    scale a subtree's rate (a pretrained trunk fine-tuned slower than a new head)."""
    o, steps = config.optim, decay_horizon(config)
    if o.get("step_every", 0) > 0:  # Caffe's "step" policy; workdirs written before it have none
        decay = optax.exponential_decay(o.lr, o.step_every, o.step_factor, staircase=True, end_value=o.end_lr or None)
    else:
        decay = optax.polynomial_schedule(o.lr, o.end_lr, o.decay_power, max(1, steps - o.warmup_steps))
    warm_decay = decay if not o.warmup_steps else optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, o.warmup_steps), decay], [o.warmup_steps])

    def schedule(count):
        # past the horizon optax computes (1 - t/T)^p with t/T a hair above 1 on XLA:CPU (a
        # reciprocal multiply): a negative base, so NaN for a fractional power. end_lr it is.
        if o.get("step_every", 0) > 0:
            return warm_decay(count)
        return jnp.where(count >= steps, jnp.float32(o.end_lr), warm_decay(count))

    if o.name == "adam":
        opt = optax.adamw(schedule, o.b1, o.b2, o.eps, weight_decay=o.weight_decay) if o.weight_decay \
            else optax.adam(schedule, o.b1, o.b2, o.eps)
    elif o.name == "sgd":
        # weight decay on the weights (kernels) only, as Caffe's nets set decay_mult 0 on biases
        kernels = functools.partial(jax.tree_util.tree_map_with_path,
                                    lambda p, _: "kernel" in str(getattr(p[-1], "key", "")))
        opt = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=kernels), optax.sgd(schedule, momentum=o.b1))
    else:
        raise UserError(f"unknown optimizer {o.name!r} (config optim.name): adam or sgd")
    if o.grad_clip:
        opt = optax.chain(optax.clip_by_global_norm(o.grad_clip), opt)
    if o.get("clip_value", 0.0):  # workdirs written before the option have none
        opt = optax.chain(optax.clip(o.clip_value), opt)
    scales = {}
    for entry in o.get("lr_scale", ()):  # workdirs written before the option have none
        name, _, factor = entry.partition("=")
        try:
            scales[name] = float(factor)
        except ValueError:
            raise UserError(f"config optim.lr_scale: {entry!r} is not subtree=factor (e.g. features=0.1)") from None
    if o.frozen or scales:
        def label(k: str) -> str:
            return "frozen" if k in o.frozen else f"scale={scales[k]}" if k in scales else "train"

        def labels(params):
            unknown = sorted(set(scales) - set(params))
            if unknown:
                raise UserError(f"config optim.lr_scale: no parameter subtree {', '.join(unknown)} "
                                f"(this model has {', '.join(params)})")
            return {k: jax.tree.map(lambda _, k=k: label(k), v) for k, v in params.items()}

        groups = {"train": opt, "frozen": optax.set_to_zero(),
                  **{f"scale={f}": optax.chain(opt, optax.scale(f)) for f in scales.values()}}
        opt = optax.multi_transform(groups, labels)
    return opt, schedule

