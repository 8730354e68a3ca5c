"""The one training loop, for every model family. `train` reads top to bottom:

    data -> program -> state (resume, or init + earlier stages) -> compile
      -> loop: step, log, profile, checkpoint, periodic eval -> final evaluation and reports

Everything model-specific comes through the family contract (`fergate.models`); everything
built from the config through `fergate.train.program`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import numpy as np

from fergate import config as config_lib
from fergate.data import pipeline
from fergate.errors import UserError
from fergate.train import evaluate, perf
from fergate.train.checkpoint import Checkpointer
from fergate.train.program import (
    Program,
    TrainState,
    class_names,
    data_dir,
    global_batch,
    input_pipeline,
    resolve,
)

log = logging.getLogger(__name__)

#: Config keys that may change between a run and its resumption (they leave the state alone).
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.ckpt_every", "train.eval_every", "train.keep",
                     "train.profile_steps", "data.workers", "eval.batch_size", "eval.top_k")


class TrainingDiverged(UserError):
    pass


def train(config, workdir: str) -> dict:
    """Trains (resuming from the newest checkpoint in `workdir`), then evaluates; returns
    the evaluation report (eval.json)."""
    c = config.train
    # data: the family fills what depends on it before anything is built
    ddir = data_dir(config)
    manifest = pipeline.read_manifest(ddir)
    resolve(config, manifest)
    check_workdir_config(workdir, config)
    classes = class_names(config, manifest)
    prog = Program(config)
    it = iter(input_pipeline(config, ddir, config.data.train_split, train=True, manifest=manifest))

    # state: the newest checkpoint that restores, else a fresh one with earlier stages loaded
    ckpt = Checkpointer(workdir, keep=c.keep)
    restored = ckpt.restore(prog.abstract_sharded_state(), it)
    if restored is None:
        state, start = load_earlier_stages(prog, prog.new_state(), workdir), 0
        log.info(f"[train] {config.model}/{config.variant}: {prog.n_params():,} parameters, {jax.device_count()} "
                 f"devices ({jax.default_backend()}), global batch {config.input.batch_size}, data {ddir}")
    else:
        state, start = restored
        log.info(f"[train] resumed from step {start} ({ckpt.directory})")

    # compile once; FLOPs for MFU from the compiled step
    compiled = prog.train_step.lower(state, prog.example).compile()
    flops, peak = perf.compiled_flops(compiled), perf.peak(c.dtype)
    writer = MetricsWriter(workdir)
    profile = Profile(c.profile_steps, workdir)

    # loop
    pending, t_last, step_last, t0 = [], None, start, time.time()
    step = start
    try:
        for step in range(start + 1, c.steps + 1):
            batch = global_batch(next(it), prog.batch_sharding)
            with profile.step(step):
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
                               mfu=peak.mfu(sps * flops) if flops else None)
                    t_last, step_last = now, step
                writer.write(step, row)
                eta = (c.steps - step) / row["steps_per_sec"] if "steps_per_sec" in row else 0
                log.info(f"[train] step {step}/{c.steps} loss {row['loss']:.4f} acc {row['accuracy']:.3f} "
                         f"lr {row['lr']:.2e} | {row.get('steps_per_sec', 0):.1f} steps/s "
                         f"{row.get('examples_per_sec', 0):.0f} ex/s | ETA {_hms(eta)}")
            if do_ckpt:
                ckpt.save(step, state, it)
            if c.eval_every and step % c.eval_every == 0 and step != c.steps:
                m = evaluate.evaluate(prog, state, ddir, config.data.eval_split, classes).metrics
                writer.write(step, {f"eval_{k}": m[k] for k in ("accuracy", "mean_class_accuracy")})
                log.info(f"[eval] step {step}: accuracy {m['accuracy']:.3f}, mean class {m['mean_class_accuracy']:.3f}")
    finally:
        profile.close()
        ckpt.close()
    log.info(f"[train] done: {step} steps in {_hms(time.time() - t0)}")

    # final evaluation, reports by process 0
    results = evaluate.evaluate(prog, state, ddir, config.data.eval_split, classes)
    results.metrics.update(step=step, split=config.data.eval_split)
    report = evaluate.write_reports(results, workdir) if jax.process_index() == 0 else results.metrics
    log.info(f"[eval] {config.data.eval_split}: accuracy {report['accuracy']:.3f}, "
             f"mean class accuracy {report['mean_class_accuracy']:.3f} -> {os.path.join(workdir, 'eval.json')}")
    return report


# ----------------------------------------------------------------------------- earlier stages
def load_earlier_stages(prog: Program, state: TrainState, workdir: str) -> TrainState:
    """Copies the parameter subtrees `config.init.params` found in the newest checkpoints of
    `config.init.params_from`: workdirs, or "pretrain" = the family's `stages(config)`, each
    trained into W/pretrain/NAME first unless it has finished."""
    config = prog.config
    sources = list(config.init.params_from)
    if "pretrain" in sources:
        i = sources.index("pretrain")
        sources[i : i + 1] = [_train_stage(stage, os.path.join(workdir, "pretrain", name))
                              for name, stage in prog.family.stages(config).items()]
    sources = [s for s in sources if s]
    if not sources:
        return state
    params, model_state = dict(state.params), {k: dict(v) for k, v in state.model_state.items()}
    loaded: dict[str, str] = {}  # parameter subtree -> the workdir it came from
    for source in sources:
        src = Program(config_lib.load_workdir(source))
        restored = Checkpointer(source).restore(src.abstract_sharded_state())
        if restored is None:
            raise UserError(f"config init.params_from: no checkpoint in {source}")
        src_params, src_model_state = restored[0].params, restored[0].model_state
        for name in (n for n in config.init.params if n in src_params and n in params):
            if jax.tree.map(np.shape, src_params[name]) != jax.tree.map(np.shape, params[name]):
                raise UserError(f"config init.params: {name} in {source} has other shapes than this model's "
                                "(trained with other settings?)")
            params[name] = src_params[name]
            loaded[name] = source
            for col, tree in src_model_state.items():
                if name in tree and name in model_state.get(col, {}):
                    model_state[col][name] = tree[name]
    missing = [n for n in config.init.params if n in params and n not in loaded]
    if missing:
        raise UserError(f"config init.params: {', '.join(missing)} not found in {', '.join(sources)}")
    log.info(f"[train] loaded {', '.join(f'{n} ({w})' for n, w in loaded.items())} "
             f"(frozen: {', '.join(config.optim.frozen) or 'none'})")
    # the optimizer state of a fresh run does not depend on parameter values: it stays
    return jax.device_put(state.replace(params=params, model_state=model_state), prog.state_sharding)


def _train_stage(config, workdir: str) -> str:
    """An earlier stage, trained into `workdir` unless it has finished there."""
    if not os.path.exists(os.path.join(workdir, "eval.json")):
        log.info(f"[train] earlier stage {config.model}/{config.variant} -> {workdir}")
        train(config, workdir)
    return workdir


# ----------------------------------------------------------------------------- workdir
def check_workdir_config(workdir: str, config) -> None:
    """A workdir belongs to one config: refuse to resume another's state."""
    path = os.path.join(workdir, "config.json")
    text = config_lib.to_json(config)
    if os.path.exists(path):
        with open(path) as f:
            old, new = config_lib.flatten(json.load(f)), config_lib.flatten(json.loads(text))
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES]
        if diff:
            raise UserError(f"workdir {workdir} was written by another config (differs in {', '.join(diff[:6])}); "
                            "use a new --workdir")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


class MetricsWriter:
    """`W/metrics.jsonl`: one JSON object per logged step, written by process 0."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.lead = jax.process_index() == 0

    def write(self, step: int, row: dict) -> None:
        if self.lead:
            with open(self.path, "a") as f:
                f.write(json.dumps({**row, "step": step}) + "\n")


class Profile:
    """A jax.profiler trace of steps A..B (`train.profile_steps=A,B`) into W/profile/, with
    a Perfetto trace (open it at ui.perfetto.dev) beside TensorBoard's xplane files."""

    def __init__(self, steps: tuple, workdir: str):
        if steps and (len(steps) != 2 or not 1 <= steps[0] <= steps[1]):
            raise UserError(f"config train.profile_steps={tuple(steps)}: expected A,B with 1 <= A <= B")
        self.first, self.last = steps or (0, -1)
        self.dir, self.active = os.path.join(workdir, "profile"), False

    def step(self, step: int):
        if step == self.first:
            jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
            self.active = True
        if not self.active:
            return _NULL
        return _Traced(self, step)

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            log.info(f"[train] profile of steps {self.first}-{self.last} -> {self.dir}")


class _Traced:
    def __init__(self, profile: Profile, step: int):
        self.profile, self.step = profile, step
        self.annotation = jax.profiler.StepTraceAnnotation("train", step_num=step)

    def __enter__(self):
        self.annotation.__enter__()

    def __exit__(self, *exc):
        self.annotation.__exit__(*exc)
        if self.step == self.profile.last:
            jax.effects_barrier()
            self.profile.close()


class _Null:
    def __enter__(self):
        pass

    def __exit__(self, *exc):
        pass


_NULL = _Null()


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"
