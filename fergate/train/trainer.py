"""The one trainer for every model family. Sections read top to bottom:

    distributed -> mesh -> input -> model -> init + shard -> step -> checkpoint -> loop -> eval

A model family contributes `build(config)` (a Flax module returning {"logits", optional
"losses", optional "introspect"}) and `inputs(config)`; nothing else is model-specific.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fergate import config as config_lib
from fergate import models
from fergate.data import pipeline
from fergate.errors import UserError
from fergate.train.checkpoint import Checkpointer

#: Config keys that may change between a run and its resumption (they leave the state alone).
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.ckpt_every", "train.eval_every", "train.keep",
                     "data.workers", "eval.batch_size", "eval.top_k")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # non-trainable collections (e.g. batch_stats); {} when none


class TrainingDiverged(UserError):
    pass


# ----------------------------------------------------------------------------- setup
def setup_distributed(coordinator: str | None = None, num_processes: int | None = None,
                      process_id: int | None = None, auto: bool = False) -> None:
    """jax.distributed for multi-host runs: explicit peers (`coordinator`, e.g. processes on
    one CPU machine, with gloo collectives), or `auto` detection (TPU pods, SLURM)."""
    if coordinator or num_processes:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by the CPU backend only
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    elif auto:
        jax.distributed.initialize()


def make_mesh() -> jax.sharding.Mesh:
    """A mesh whose `data` axis spans every device of every process."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def data_dir(config) -> str:
    """config.data.dir, or the built-in dataset `config.data.dataset` prepared in the cache."""
    if config.data.dir:
        return config.data.dir
    from fergate.data.sample import prepared_dir

    log = print if jax.process_index() == 0 else (lambda *_: None)
    dataset = config.data.get("dataset", "sample")
    options = {"size": config.data.sample_size} if dataset == "sample" else {}
    return prepared_dir(dataset, log=log, **options)


def resolve(config, manifest: dict | None) -> None:
    """Lets the model family fill config fields that depend on the data (e.g. the number of
    training subjects), before anything is built; None: no data (a benchmark)."""
    fam = models.family(config.model)
    if hasattr(fam, "resolve"):
        with config.unlocked():
            fam.resolve(config, manifest)


def label_map(config, manifest: dict) -> dict | None:
    """Training on `subject` labels: subject name -> index over the training subjects."""
    if config.data.get("label_field", "label") != "subject":
        return None
    return {s: i for i, s in enumerate(manifest["splits"][config.data.train_split]["subjects"])}


def input_transforms(config) -> tuple[tuple[str, ...], list, list]:
    """(fields, random transforms, deterministic transforms) of a config's model."""
    spec = models.family(config.model).inputs(config)
    fields = tuple(spec)
    rand = []
    if config.data.get("flip", False):
        rand.append(pipeline.RandomFlip())
    if config.data.get("brightness_contrast", False):
        rand.append(pipeline.BrightnessContrast())
    det = []
    if "face" in spec:
        shape = spec["face"][0]
        det.append(pipeline.ResizeFace(tuple(shape[:2]), grey=shape[-1] == 1))
    return fields, rand, det


def example_batch(config, batch_size: int) -> dict[str, np.ndarray]:
    """Zeros of the model's input shapes (for init, tracing and `fergate bench`)."""
    spec = models.family(config.model).inputs(config)
    batch = {k: np.zeros((batch_size, *shape), dtype) for k, (shape, dtype) in spec.items()}
    batch["label"] = np.zeros((batch_size,), np.int32)
    batch["mask"] = np.ones((batch_size,), np.float32)
    return batch


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam(W) with polynomial decay (power `decay_power`) after an optional linear warm-up."""
    o, steps = config.optim, config.train.steps
    decay = optax.polynomial_schedule(o.lr, o.end_lr, o.decay_power, max(1, steps - o.warmup_steps))
    schedule = decay if not o.warmup_steps else optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, o.warmup_steps), decay], [o.warmup_steps])
    if o.name == "adam":
        opt = optax.adamw(schedule, o.b1, o.b2, o.eps, weight_decay=o.weight_decay) if o.weight_decay \
            else optax.adam(schedule, o.b1, o.b2, o.eps)
    elif o.name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(o.weight_decay), optax.sgd(schedule, momentum=o.b1))
    else:
        raise UserError(f"unknown optimizer {o.name!r} (config optim.name): adam or sgd")
    if o.grad_clip:
        opt = optax.chain(optax.clip_by_global_norm(o.grad_clip), opt)
    frozen = tuple(o.get("frozen", ()))
    if frozen:  # pretrained parts kept fixed: no update, no optimizer state
        def labels(params):
            return {k: jax.tree.map(lambda _, k=k: "frozen" if k in frozen else "train", v)
                    for k, v in params.items()}

        opt = optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)
    return opt, schedule


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_fns(config, model, tx, schedule):
    """init(rng, batch) -> TrainState and train_step(state, batch) -> (state, metrics)."""

    def init(rng, batch):
        variables = model.init(rng, batch, train=False)
        params = variables.pop("params")
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), dict(variables))

    def apply(state_or_params, model_state, batch, train, rng=None):
        variables = {"params": state_or_params, **model_state}
        mutable = list(model_state) if (train and model_state) else False
        res = model.apply(variables, batch, train=train, rngs={"dropout": rng} if rng is not None else None,
                          mutable=mutable)
        return res if mutable else (res, model_state)

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.key(config.seed), state.step)

        def loss_fn(params):
            out, new_model_state = apply(params, state.model_state, batch, True, rng)
            ce = cross_entropy(out["logits"], batch["label"], batch["mask"])
            extra = out.get("losses", {})
            return ce + sum(extra.values()), (out, new_model_state, ce, extra)

        (loss, (out, new_model_state, ce, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = (jnp.argmax(out["logits"], -1) == batch["label"]) * batch["mask"]
        metrics = {"loss": loss, "ce": ce, "accuracy": correct.sum() / jnp.maximum(batch["mask"].sum(), 1),
                   "lr": schedule(state.step), "grad_norm": optax.tree.norm(grads), **extra}
        return TrainState(state.step + 1, params, opt_state, new_model_state), metrics

    def predict(state: TrainState, batch):
        """Logits and introspection tensors, plus what evaluation needs: labels, mask and
        per-class sums of the face and landmarks (for plots on the mean face)."""
        out, _ = apply(state.params, state.model_state, batch, False)
        res = {"logits": out["logits"], "introspect": out.get("introspect", {}),
               "label": batch["label"], "mask": batch["mask"]}
        onehot = jax.nn.one_hot(batch["label"], out["logits"].shape[-1]) * batch["mask"][:, None]
        for k in ("face", "landmarks"):
            if k in batch:
                res[f"{k}_sum"] = jnp.einsum("bk,b...->k...", onehot, batch[k].astype(jnp.float32))
        return res

    return init, train_step, predict


def global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Per-process batches -> one global batch sharded over the data axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def class_names(config, manifest: dict) -> list[str]:
    """Names of the trained labels: the dataset's classes, the training subjects, or those
    a model family set in `data.classes` (e.g. exogenous bins)."""
    if config.data.get("classes"):
        return list(config.data.classes)
    if config.data.get("label_field", "label") == "subject":
        return list(manifest["splits"][config.data.train_split]["subjects"])
    return list(manifest["classes"])


def init_from_pretrained(m: Model, state: TrainState, workdir: str, log=print) -> TrainState:
    """Copies the parameter subtrees `config.init.params` found in the newest checkpoints of
    `config.init.params_from`: workdirs, or "pretrain" = one W/pretrain/NAME per stage of
    `config.pretrain.configs` {NAME: config spec}, each trained first (for
    `config.pretrain.steps` when set) unless it has finished."""
    init = m.config.get("init", {})
    sources = list(init.get("params_from", ()))
    if "pretrain" in sources:
        i = sources.index("pretrain")
        sources[i : i + 1] = [_pretrain(m.config, os.path.join(workdir, "pretrain", name), spec, log)
                              for name, spec in sorted(m.config.pretrain.configs.items())]
    if not any(sources):
        return state
    params, model_state = dict(state.params), {k: dict(v) for k, v in state.model_state.items()}
    loaded: dict[str, str] = {}  # parameter subtree -> the workdir it came from
    for source in filter(None, sources):
        src = Model(config_lib.load_workdir(source))
        restored = Checkpointer(source).restore(src.abstract_sharded_state())
        if restored is None:
            raise UserError(f"config init.params_from: no checkpoint in {source}")
        src_params, src_model_state = restored[0].params, restored[0].model_state
        for name in (n for n in init.params if n in src_params and n in params):
            if jax.tree.map(np.shape, src_params[name]) != jax.tree.map(np.shape, params[name]):
                raise UserError(f"config init.params: {name} in {source} has other shapes than this model's "
                                "(trained with other settings?)")
            params[name] = src_params[name]
            loaded[name] = source
            for col, tree in src_model_state.items():
                if name in tree and name in model_state.get(col, {}):
                    model_state[col][name] = tree[name]
    missing = [n for n in init.params if n in params and n not in loaded]
    if missing:
        raise UserError(f"config init.params: {', '.join(missing)} not found in {', '.join(filter(None, sources))}")
    frozen = ", ".join(m.config.optim.get("frozen", ())) or "none"
    log(f"[train] loaded {', '.join(f'{n} ({w})' for n, w in loaded.items())} (frozen: {frozen})")
    # the optimizer state of a fresh run does not depend on parameter values: it stays
    return jax.device_put(state.replace(params=params, model_state=model_state), m.state_sharding)


def _pretrain(config, workdir: str, spec: str, log) -> str:
    """Stage 1 of a two-stage run: trains `spec` into `workdir` unless it has finished. It
    takes this config's values of `config.pretrain.inherit` (the data, the shared network's
    shape), and `config.pretrain.steps` when set."""
    if not os.path.exists(os.path.join(workdir, "eval.json")):
        log(f"[train] stage 1: {spec} -> {workdir}")
        pre = config_lib.load(spec)
        with pre.unlocked():
            for key in config.pretrain.get("inherit", ()):
                *path, field = key.split(".")
                dst, src = pre, config
                for k in path:
                    dst, src = dst[k], src[k]
                dst[field] = src[field]
            if config.pretrain.get("steps"):
                pre.train.steps = config.pretrain.steps
        train(pre, workdir, log)
    return workdir


def check_workdir_config(workdir: str, config) -> None:
    """A workdir belongs to one config: refuse to resume another's state."""
    path = os.path.join(workdir, "config.json")
    text = config_lib.to_json(config)
    if os.path.exists(path):
        with open(path) as f:
            old, new = _flat(json.load(f)), _flat(json.loads(text))
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES]
        if diff:
            raise UserError(f"workdir {workdir} was written by another config (differs in {', '.join(diff[:6])}); "
                            "use a new --workdir")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v)
    return out


class Model:
    """Everything built from a config: the mesh, the module, the jitted functions, shardings."""

    def __init__(self, config):
        self.config = config
        self.mesh = make_mesh()
        self.replicated = jax.NamedSharding(self.mesh, jax.P())
        self.batch_sharding = jax.NamedSharding(self.mesh, jax.P("data"))
        self.module = models.family(config.model).build(config)
        self.tx, self.schedule = make_optimizer(config)
        init, train_step, predict = make_fns(config, self.module, self.tx, self.schedule)
        n = jax.device_count()
        for name, b in (("input.batch_size", config.input.batch_size), ("eval.batch_size", config.eval.batch_size)):
            if b % n or b % jax.process_count():
                raise UserError(f"config {name}={b} must be a multiple of the {n} devices")
        example = global_batch(example_batch(config, config.input.batch_size // jax.process_count()),
                               self.batch_sharding)
        self.abstract_state = jax.eval_shape(init, jax.random.key(0), example)
        self.state_sharding = jax.tree.map(lambda _: self.replicated, self.abstract_state)
        self.init = jax.jit(init, out_shardings=self.state_sharding)
        self.example = example
        self.train_step = jax.jit(train_step, in_shardings=(self.state_sharding, self.batch_sharding),
                                  out_shardings=(self.state_sharding, self.replicated), donate_argnums=0)
        self.predict = jax.jit(predict, in_shardings=(self.state_sharding, self.batch_sharding),
                               out_shardings=self.replicated)

    def new_state(self) -> TrainState:
        return self.init(jax.random.key(self.config.seed), self.example)

    def abstract_sharded_state(self):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.abstract_state, self.state_sharding)

    def n_params(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.abstract_state.params)))


# ----------------------------------------------------------------------------- loop
def train(config, workdir: str, log=print) -> dict:
    """Trains (resuming from the newest checkpoint in `workdir`), then evaluates."""
    from fergate.train import bench, evaluate

    lead = jax.process_index() == 0
    log = log if lead else (lambda *_: None)
    ddir = data_dir(config)
    manifest = pipeline.read_manifest(ddir)
    resolve(config, manifest)
    check_workdir_config(workdir, config)
    classes = class_names(config, manifest)
    m = Model(config)
    c = config.train
    fields, rand, det = input_transforms(config)
    local_bs = config.input.batch_size // jax.process_count()
    ds = pipeline.make_dataset(ddir, config.data.train_split, fields, local_bs, seed=config.seed,
                               balance=config.data.balance, random_transforms=rand, transforms=det,
                               process_index=jax.process_index(), process_count=jax.process_count(),
                               workers=config.data.workers, label_field=config.data.get("label_field", "label"),
                               label_map=label_map(config, manifest))
    it = iter(ds)
    ckpt = Checkpointer(workdir, keep=c.keep)
    restored = ckpt.restore(m.abstract_sharded_state(), it, log=log)
    if restored is None:
        state, start = init_from_pretrained(m, m.new_state(), workdir, log), 0
        log(f"[train] {config.model}/{config.variant}: {m.n_params():,} parameters, {jax.device_count()} devices "
            f"({jax.default_backend()}), global batch {config.input.batch_size}, data {ddir}")
    else:
        state, start = restored
        log(f"[train] resumed from step {start} ({ckpt.directory})")
    compiled = m.train_step.lower(state, m.example).compile()
    flops = bench.compiled_flops(compiled)
    peak = bench.peak_flops()
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    pending, t_last, step_last, t0 = [], None, start, time.time()
    step = start
    try:
        for step in range(start + 1, c.steps + 1):
            batch = global_batch(next(it), m.batch_sharding)
            state, metrics = compiled(state, batch)
            pending.append(metrics)
            if t_last is None:  # time from the end of the first step: compile and warm-up excluded
                jax.block_until_ready(metrics)
                t_last, step_last = time.time(), step
            do_ckpt = step % c.ckpt_every == 0 or step == c.steps
            if step % c.log_every == 0 or do_ckpt:
                row = {k: float(np.mean([jax.device_get(p[k]) for p in pending])) for k in pending[0]}
                pending = []
                if not all(math.isfinite(v) for v in row.values()):
                    last = ckpt.steps()
                    raise TrainingDiverged(
                        f"loss became {row['loss']} by step {step}; stopped, last good checkpoint: "
                        f"{f'step {last[0]} in {ckpt.directory}' if last else 'none'} (lower optim.lr?)")
                now = time.time()
                if step > step_last:
                    sps = (step - step_last) / (now - t_last)
                    row.update(steps_per_sec=sps, examples_per_sec=sps * config.input.batch_size,
                               mfu=sps * flops / peak if flops and peak else None)
                    t_last, step_last = now, step
                row["step"] = step
                if lead:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                eta = (c.steps - step) / row["steps_per_sec"] if "steps_per_sec" in row else 0
                log(f"[train] step {step}/{c.steps} loss {row['loss']:.4f} acc {row['accuracy']:.3f} "
                    f"lr {row['lr']:.2e} | {row.get('steps_per_sec', 0):.1f} steps/s "
                    f"{row.get('examples_per_sec', 0):.0f} ex/s | ETA {_hms(eta)}")
            if do_ckpt:
                ckpt.save(step, state, it)
            if c.eval_every and step % c.eval_every == 0 and step != c.steps:
                res = evaluate.evaluate(m, state, ddir, config.data.eval_split, classes)
                if lead:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps({"step": step, **{f"eval_{k}": res[k] for k in
                                                              ("accuracy", "mean_class_accuracy")}}) + "\n")
                log(f"[eval] step {step}: accuracy {res['accuracy']:.3f}, mean class {res['mean_class_accuracy']:.3f}")
    finally:
        ckpt.close()
    log(f"[train] done: {step} steps in {_hms(time.time() - t0)}")
    result = evaluate.evaluate(m, state, ddir, config.data.eval_split, classes)
    if lead:
        evaluate.write_reports(result, workdir)
    log(f"[eval] {config.data.eval_split}: accuracy {result['accuracy']:.3f}, "
        f"mean class accuracy {result['mean_class_accuracy']:.3f} -> {os.path.join(workdir, 'eval.json')}")
    return result


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"
