"""The `Program` of a config, for the trainer, the evaluator and `fergate bench` alike: the
family's module, the optimizer, shardings and the jitted init / train / predict steps; and
a trained one read back from its workdir (`from_workdir`), the one way every command that
reads a workdir builds it.

Parallelism (`fergate.train.mesh`): a mesh of `data` x `model` devices; the train state is
replicated except the leaves `config.mesh.rules` shard, and donated to the step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fergate import config as config_lib
from fergate import models, options
from fergate.data import augment
from fergate.errors import UserError
from fergate.options import SELECT_METRICS as SELECT_METRICS  # noqa: E402 (where callers read it)
from fergate.train.checkpoint import Checkpointer, restore_selected
from fergate.train.data import DataPlan, resolve
from fergate.train.mesh import config_mesh, global_batch, state_shardings
from fergate.train.optimizer import make_optimizer

#: folded into a step's key for its augmentations (dropout takes the step's key itself)
AUGMENT_STREAM = 1


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # non-trainable collections (e.g. batch_stats); {} when none


def validate(config, workdir: str | None = None) -> None:
    """Checks of the config and the workdir that need no data, run before preparing data or
    compiling so that a mistake costs nothing: every key by its spec (`fergate.options`), and
    the augmentation ops against what the family takes."""
    options.validate(config, workdir)
    models.family(config.model).check(config)


# ----------------------------------------------------------------------------- program
class Program:
    """The compiled program of a config: the family's module, the optimizer, shardings,
    and the jitted `init(rng, batch)`, `train_step(state, batch) -> (state, metrics)` and
    `predict(state, batch) -> outputs` (logits, introspection, label, mask, index). The
    train step first applies the config's augmentation ops to the batch where they run on
    the device (`augment`)."""

    def __init__(self, config):
        self.config = config
        self.family = models.family(config.model)
        self.mesh, rules = config_mesh(config)
        self.replicated = jax.NamedSharding(self.mesh, jax.P())
        self.batch_sharding = jax.NamedSharding(self.mesh, jax.P("data"))
        self.module = self.family.build(config)
        self.ops = self.family.device_ops(config)  #: the augmentations the train step applies
        self.tx, self.schedule = make_optimizer(config)
        n = self.mesh.shape["data"]  # the batch is split over the data axis
        for name, b in (("input.batch_size", config.input.batch_size), ("eval.batch_size", config.eval.batch_size)):
            if b % n or b % jax.process_count():
                raise UserError(f"config {name}={b} must be a multiple of the {n} devices of the data axis")
        k = config.train.get("accumulate", 1)
        if k < 1 or config.input.batch_size % (k * n):
            raise UserError(f"config train.accumulate={k}: the global batch input.batch_size={config.input.batch_size} "
                            f"must split into {k} micro-batches of a multiple of the {n} devices of the data axis")
        local = self.family.example_batch(config, config.input.batch_size // jax.process_count())
        self.example = global_batch(local, self.batch_sharding)
        #: a training batch as the host sends it: fields at their size before the step's ops
        self.train_example = global_batch(augment.host_batch(local, self.ops), self.batch_sharding) if self.ops \
            else self.example
        self.abstract_state = jax.eval_shape(self._init, jax.random.key(0), self.example)
        #: the width of the model's logits
        self.num_classes = jax.eval_shape(self._predict, self.abstract_state, self.example)["logits"].shape[-1]
        self.state_sharding = state_shardings(self.mesh, self.abstract_state, rules)
        self.init = jax.jit(self._init, out_shardings=self.state_sharding)
        self.train_step = jax.jit(self._train_step, in_shardings=(self.state_sharding, self.batch_sharding),
                                  out_shardings=(self.state_sharding, self.replicated), donate_argnums=0)
        self.predict = jax.jit(self._predict, in_shardings=(self.state_sharding, self.batch_sharding),
                               out_shardings=self.replicated)

    def _init(self, rng, batch) -> TrainState:
        variables = self.module.init(rng, batch, train=False)
        params = variables.pop("params")
        return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params), dict(variables))

    def _apply(self, params, model_state, batch, train: bool, rng=None):
        variables = {"params": params, **model_state}
        mutable = list(model_state) if (train and model_state) else False
        res = self.module.apply(variables, batch, train=train, rngs={"dropout": rng} if rng is not None else None,
                                mutable=mutable)
        return res if mutable else (res, model_state)

    def _grads(self, params, model_state, batch, rng):
        """(loss, metrics with accuracy), grads and the new model state of one (micro-)batch."""

        frozen = set(self.config.optim.frozen)

        def loss_fn(params):
            if frozen:  # constants to autodiff: a frozen subtree's backward pass is never computed
                params = {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in params.items()}
            out, new_state = self._apply(params, model_state, batch, True, rng)
            loss, metrics = self.family.loss(self.config, out, batch)
            return loss, (out["logits"], new_state, metrics)

        (loss, (logits, model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        correct = (jnp.argmax(logits, -1) == batch["label"]) * batch["mask"]
        return {"loss": loss, **metrics, "accuracy": models.masked_mean(correct, batch["mask"])}, grads, model_state

    def augment(self, batch: dict, step) -> dict:
        """The training batch of `step` augmented (`augment.on_device`) from the step's key:
        the same draws whatever the devices, and again in a resumed run."""
        if not self.ops:
            return batch
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.config.seed), step), AUGMENT_STREAM)
        return augment.on_device(self.ops, batch, key)

    def _train_step(self, state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.key(self.config.seed), state.step)
        batch = self.augment(batch, state.step)
        k = self.config.train.get("accumulate", 1)
        if k == 1:
            metrics, grads, model_state = self._grads(state.params, state.model_state, batch, rng)
        else:  # k micro-batches in turn, their gradients averaged: a global batch larger than memory
            # micro-batch j = rows j, k + j, 2k + j, ...: each device keeps its own rows (no reshuffle)
            micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)

            def body(carry, mb):
                total, model_state, j = carry
                m, g, model_state = self._grads(state.params, model_state, mb, jax.random.fold_in(rng, j))
                return (jax.tree.map(jnp.add, total, g), model_state, j + 1), m

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (total, model_state, _), per = jax.lax.scan(body, (zeros, state.model_state, 0), micro)
            grads = jax.tree.map(lambda g: g / k, total)
            metrics = jax.tree.map(jnp.mean, per)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "lr": self.schedule(state.step), "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state, model_state), metrics

    def _predict(self, state: TrainState, batch):
        out, _ = self._apply(state.params, state.model_state, batch, False)
        return {"logits": out["logits"], "introspect": out.get("introspect", {}),
                **{k: out[k] for k in ("features", "representations") if k in out},
                **{k: batch[k] for k in ("label", "mask", "index") if k in batch}}

    def new_state(self) -> TrainState:
        return self.init(jax.random.key(self.config.seed), self.example)

    def with_statistics(self, state: TrainState, stats: dict) -> TrainState:
        """`state` with the family's measured statistics in the "stats" collection."""
        if not stats:
            return state
        declared = state.model_state.get("stats", {})
        for k, v in stats.items():
            if k not in declared or declared[k].shape != np.shape(v):
                raise ValueError(f"statistics {k!r} {np.shape(v)} is not a 'stats' variable of the model "
                                 f"({ {n: x.shape for n, x in declared.items()} })")
        model_state = {**state.model_state, "stats": {**declared, **stats}}
        return jax.device_put(state.replace(model_state=model_state), self.state_sharding)

    def abstract_sharded_state(self):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.abstract_state, self.state_sharding)

    def n_params(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.abstract_state.params)))


# ----------------------------------------------------------------------------- a trained program
@dataclasses.dataclass(frozen=True)
class Trained:
    """A model trained in a workdir, read back: its program, the state of one checkpoint, and
    the data plan it was resolved against (None: read without data)."""

    program: Program
    state: TrainState
    step: int
    selection: dict | None  #: W/best.json when `state` is the checkpoint `train.select` kept
    data: DataPlan | None

    @property
    def config(self):
        return self.program.config


def from_workdir(workdir: str, step: int | None = None, *, data: bool | str = True,
                 selected: bool = True, config=None) -> Trained:
    """The model of `workdir`: its config resolved the way the trainer resolved it, against
    its training data (`DataPlan.build`; `data`: another prepared directory; False: without
    data, for what reads none: an export, `fergate attend`), its `Program`, and the state of
    checkpoint `step`, else of the checkpoint `train.select` kept, else (or not `selected`)
    the newest (`config`: the workdir's, already read and changed: `fergate eval --data`). A
    config.json without keys this fergate reads is a one-line error naming them."""
    config = config or config_lib.load_workdir(workdir)
    try:
        if data is False:
            plan = None
            resolve(config, None)
        else:
            plan = DataPlan.build(config, workdir, None if data is True else data)
        prog = Program(config)
    except (AttributeError, KeyError) as e:
        older = lacking_keys(config, e)
        if not older:
            raise
        raise UserError(f"{workdir}/config.json has no {', '.join(older)}: the workdir was written by an older "
                        "fergate (train it again with this one)") from None
    abstract = prog.abstract_sharded_state()
    selection = None
    if step is None and selected:
        state, step, selection = restore_selected(workdir, abstract)
    else:
        restored = Checkpointer(workdir).restore(abstract, step=step)
        if restored is None:
            raise UserError(f"no checkpoint in {workdir}")
        state, step = restored
    return Trained(prog, state, step, selection, plan)


def lacking_keys(config, error: BaseException) -> list[str]:
    """The keys of this fergate's config file of `config.model` (`configs/<model>.py` at its
    defaults: every `section.key`) that `config` lacks, when `error`, raised reading it,
    names one of them; else none (the error is not about an older config)."""
    path = Path(models.__file__).resolve().parents[2] / "configs" / f"{config.model}.py"
    key = error
    while isinstance(key, BaseException) and key.args:
        key = key.args[0]
    key = str(key).strip("'\"")
    try:
        current = config_lib.load(str(path)) if path.exists() else None
    except UserError:
        current = None
    if current is None:  # a family without a config file here: nothing to compare with
        return []
    missing = sorted(set(_section_keys(current.to_dict())) - set(_section_keys(config.to_dict())))
    return missing if any(k.rpartition(".")[2] == key for k in missing) else []


def _section_keys(d: dict) -> list[str]:
    """"section.key" of every key of a config's sections, and its top-level keys."""
    return [k for k, v in d.items() if not isinstance(v, dict)] + \
        [f"{k}.{key}" for k, v in d.items() if isinstance(v, dict) for key in v]
