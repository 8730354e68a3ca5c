"""The one training loop, for every model family. `train` reads top to bottom:

    data -> program -> state (resume, or init + earlier stages) -> compile
      -> loop: step, log, profile, checkpoint, periodic eval -> final evaluation and reports

Everything model-specific comes through the family contract (`fergate.models`); everything
built from the config through `fergate.train.program` and the data plan (`fergate.train.data`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from fergate import config as config_lib
from fergate import export, lock, models, options
from fergate.errors import Interrupted, UserError
from fergate.files import read_json, space_errors, write_atomic
from fergate.signals import StopSignals
from fergate.train import checkpoint, evaluate, features, perf
from fergate.train.checkpoint import Checkpointer, Selection, restore_selected
from fergate.train.data import DataPlan, data_dir, features_dir, source_dir
from fergate.train.mesh import config_mesh
from fergate.train.metrics import MetricsWriter
from fergate.train.optimizer import decay_horizon
from fergate.train.prefetch import DevicePrefetch
from fergate.train.program import Program, TrainState, from_workdir, validate
from fergate.weights import init as weights_init

log = logging.getLogger(__name__)

#: Config keys that may change between a run and its resumption (they leave the state alone).
RESUMABLE_CHANGES = options.RESUMABLE_CHANGES


class TrainingDiverged(UserError):
    pass


def train(config, workdir: str) -> dict:
    """Trains (resuming from the newest checkpoint in `workdir`), then evaluates; returns
    the evaluation report (eval.json). SIGINT / SIGTERM save a checkpoint at the current
    step and raise `Interrupted`; running again resumes there. The run holds the workdir's
    lock (a second writer is refused, `fergate.lock`); a write that fails for space is one
    line saying what was kept, the partial checkpoint removed (`checkpoint.disk_full`)."""
    validate(config, workdir)
    with lock.hold(workdir, "fergate train"), space_errors(lambda e: checkpoint.disk_full(e, workdir)):
        return _train(config, workdir)


def _train(config, workdir: str) -> dict:
    c = config.train
    # data: the family fills what depends on it before anything is built (a copy with an earlier
    # stage's features has its source's classes and splits: checked before that stage runs)
    data = DataPlan.build(config)
    check_workdir_config(workdir, config)
    check_workdir_data(workdir, data)
    config_mesh(config)  # a mesh this process cannot build is refused before earlier stages run
    log.info(plan(config, workdir))
    source = data  # the data the config names (`data` may become its copy with an earlier stage's features)
    if config.data.get("features_from"):
        data = data.with_features(write_stage_features(config, workdir))
    classes = list(data.classes)
    prog = Program(config)
    write_workdir_config(workdir, config, source)  # once the config has built a program
    parts = data.portions  # what it trains, validates and evaluates on
    for m in data.mix:  # checked here, not when resolving: evaluation needs none of them
        log.info(f"[data] mixing {m.data_dir} ({m.split}) into training at weight {m.weight:g} "
                 f"against {config.data.weight:g}")
    it = iter(data.input_pipeline(parts.train, train=True, mix=True))
    if parts.train.records is not None and config.data.fold >= 0:
        log.info(f"[train] cross-validation fold {config.data.fold} of {config.data.folds}: "
                 f"{len(parts.train.records)} records train, {len(parts.eval.records)} held out")
    if parts.held:
        log.info(f"[train] validation: {len(parts.val.records)} records of {len(parts.held)} training subjects held "
                 f"out of training ({', '.join(parts.held[:5])}{', ...' if len(parts.held) > 5 else ''})")

    # state: the newest checkpoint that restores, else a fresh one with earlier stages loaded
    ckpt = Checkpointer(workdir, keep=c.keep, writes=True)
    restored = ckpt.restore(prog.abstract_sharded_state(), it)
    if restored is None:
        log.info(f"[train] no checkpoint in {ckpt.directory}: starting fresh")
        state, start = load_earlier_stages(prog, prog.new_state(), workdir), 0
        state = weights_init.load_into(prog, state, workdir)  # published backbones (init.weights)
        t = time.time()
        stats = prog.family.statistics(config, data.input_pipeline(parts.train, train=False, all_processes=True))
        if stats:
            state = prog.with_statistics(state, stats)
            log.info(f"[train] measured {', '.join(stats)} on {parts.train.name} "
                     f"({time.time() - t:.1f}s)")
        log.info(f"[train] {config.model}/{config.variant}: {prog.n_params():,} parameters, {jax.device_count()} "
                 f"devices ({jax.default_backend()}), global batch {config.input.batch_size}, data {data.dir}")
    else:
        state, start = restored
        log.info(f"[train] resumed from step {start} ({ckpt.directory})")
    feed = DevicePrefetch(it, prog.batch_sharding)  # batches on the devices a step ahead; saves what steps read
    if prog.num_classes != len(classes):
        raise UserError(f"the model has {prog.num_classes} outputs but the data {len(classes)} classes "
                        f"({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")

    # compile once; FLOPs for MFU from the whole step (XLA cost analysis before partitioning)
    lowered = prog.train_step.lower(state, prog.train_example)
    compiled = lowered.compile()
    flops = perf.step_flops(lowered)
    peak = perf.peak(models.compute_dtype(config).name) if flops else None
    if peak is not None:
        log.info(f"[perf] MFU against {peak.flops / 1e9:,.1f} GFLOP/s, {peak.source}")
    writer = MetricsWriter(workdir, start)
    profile = Profile(c.profile_steps, workdir)
    eval_every = c.eval_every if c.eval_every >= 0 else max(1, c.steps // 10)
    # periodic evaluation: on the validation split when there is one (it may select the
    # checkpoint), else on the held-out split (to watch)
    watch, tag = (parts.val, "val") if parts.val else (parts.eval, "eval")
    selection = Selection(workdir, c.select, f"{watch.split} ({tag})") if c.select else None

    def evaluate_now(step: int) -> None:
        m = evaluate.evaluate(prog, state, data, watch).metrics
        writer.write(step, {f"{tag}_{k}": m[k] for k in ("accuracy", "mean_class_accuracy")})
        better = selection is not None and selection.offer(step, state, m)
        log.info(f"[eval] step {step}: {tag} accuracy {m['accuracy']:.3f}, mean class {m['mean_class_accuracy']:.3f}"
                 f"{' (best so far: kept)' if better else ''}")

    # loop
    pending, t_last, step_last, t0 = [], None, start, time.time()
    eta_from = None  # (time, step) of the first line with a rate: the ETA is the pace since then
    step = start
    try:
        with Preemption() as preemption:
            for step in range(start + 1, c.steps + 1):
                batch = next(feed)
                if step == start + 1:
                    check_batch(batch, prog.train_example)
                with profile.step(step):
                    state, metrics = compiled(state, batch)
                profile.after(step, metrics)
                pending.append(metrics)
                if t_last is None:  # time from the end of the first step: compile and warm-up excluded
                    jax.block_until_ready(metrics)
                    t_last, step_last = time.time(), step
                stop = preemption.reached(step)
                do_ckpt = step % c.ckpt_every == 0 or step == c.steps or stop
                if step % c.log_every == 0 or do_ckpt:
                    row = {k: float(np.mean([jax.device_get(p[k]) for p in pending])) for k in pending[0]}
                    pending = []
                    bad = {k: v for k, v in row.items() if not math.isfinite(v)}
                    if bad:
                        last = ckpt.steps()
                        raise TrainingDiverged(
                            f"{', '.join(f'{k} became {v}' for k, v in bad.items())} by step {step}; stopped, last "
                            f"good checkpoint: {f'step {last[0]} in {ckpt.directory}' if last else 'none'} "
                            "(lower optim.lr?)")
                    now = time.time()
                    if step > step_last:
                        sps = (step - step_last) / (now - t_last)
                        row.update(steps_per_sec=sps, examples_per_sec=sps * config.input.batch_size,
                                   mfu=peak.mfu(sps * flops) if flops else None)
                        t_last, step_last = now, step
                    writer.write(step, row)
                    eta = None
                    if "steps_per_sec" in row:
                        if eta_from is not None and step < c.steps:
                            eta = (c.steps - step) * (now - eta_from[0]) / (step - eta_from[1])
                        eta_from = eta_from or (now, step)
                    log.info(f"[train] step {step}/{c.steps} loss {row['loss']:.4f} acc {row['accuracy']:.3f} "
                             f"lr {row['lr']:.2e}{_pace(row, eta)}")
                if do_ckpt:
                    ckpt.save(step, state, feed)
                if stop:
                    ckpt.close()
                    raise Interrupted(f"{preemption.name} at step {step}: checkpoint saved in {ckpt.directory}; "
                                      "run the same command again to resume", preemption.signum)
                if eval_every and (step % eval_every == 0 or (step == c.steps and selection)) and \
                        (step != c.steps or parts.val):  # the held-out split's last evaluation is the final one
                    t_eval = time.time()
                    evaluate_now(step)
                    t_last += time.time() - t_eval  # steps/s (and MFU) measure the training steps alone
    finally:
        profile.close()
        ckpt.close()
        if selection is not None:
            selection.close()
    log.info(f"[train] done: {step - start} steps run here (step {step} of {c.steps}) in {_hms(time.time() - t0)}")

    # final evaluation of the selected checkpoint (or the last), reports by process 0
    evaluated = step
    if selection is not None and selection.best:
        state, evaluated, chosen = restore_selected(workdir, prog.abstract_sharded_state())
        log.info(f"[eval] the selected checkpoint: step {evaluated} ({chosen['split']} {chosen['metric']} "
                 f"{chosen['value']:.3f})")
    results = evaluate.evaluate(prog, state, data, parts.eval)
    results.metrics.update(step=evaluated, split=parts.eval.name, **evaluate.data_identity(data))
    if config.data.fold >= 0:
        results.metrics.update(fold=config.data.fold, folds=config.data.folds)
    if selection is not None:
        results.metrics["selected"] = selection.best
    # the step whose parameters were evaluated (the selected checkpoint's), marked as the final evaluation
    writer.write(evaluated, {f"eval_{k}": results.metrics[k] for k in ("accuracy", "mean_class_accuracy")},
                 final=True)
    writer.close()
    report = evaluate.write_reports(results, workdir) if jax.process_index() == 0 else results.metrics
    log.info(f"[eval] {parts.eval.name} at step {evaluated}: accuracy {report['accuracy']:.3f}, "
             f"mean class accuracy {report['mean_class_accuracy']:.3f} -> {os.path.join(workdir, 'eval.json')}")
    return report


def check_batch(batch: dict, example: dict) -> None:
    """The pipeline's batches have the fields, shapes and dtypes the step was compiled for
    (the family's `inputs` and `example_batch`): a mismatch is named, not an XLA error."""
    for k in sorted(set(batch) | set(example)):
        got, want = batch.get(k), example.get(k)
        if got is None or want is None or got.shape != want.shape or got.dtype != want.dtype:
            def show(x):
                return "missing" if x is None else f"{x.dtype}{list(x.shape)}"

            raise UserError(f"input field {k!r}: the pipeline gives {show(got)}, the model was built for "
                            f"{show(want)} (the family's inputs / transforms / example_batch disagree)")


class Preemption(StopSignals):
    """SIGINT and SIGTERM (Ctrl-C; what SLURM and cloud preemption send) during the loop: the
    step in flight finishes, a checkpoint is saved, the run stops (exit 130 / 143). With
    several processes, JAX's preemption service makes every process stop at the same step
    (SIGINT is turned into SIGTERM for it), so that the save, a collective, cannot hang."""

    def __init__(self):
        super().__init__()
        self.multi = jax.process_count() > 1

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "stopped"

    def signals(self) -> tuple[int, ...]:
        # several processes: JAX's preemption service has SIGTERM; SIGINT is turned into it
        return (signal.SIGINT,) if self.multi else super().signals()

    def handle(self, signum, frame) -> None:
        super().handle(signum, frame)
        if self.multi and signum == signal.SIGINT:
            signal.raise_signal(signal.SIGTERM)

    def reached(self, step: int) -> bool:
        """Whether to stop after `step`."""
        if self.multi:
            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = self.signum or signal.SIGTERM
                return True
            return False
        return self.signum is not None


# ----------------------------------------------------------------------------- earlier stages
def earlier_stages(config) -> dict:
    """The earlier stages a run of `config` trains first, in order (each unless it has finished
    in W/pretrain/NAME): the one `data.features_from` names, then, with "pretrain" in
    `init.params_from`, every stage of the family's `stages(config)`."""
    stages = models.family(config.model).stages(config)
    first = config.data.get("features_from")
    names = [first] if first in stages else []
    if "pretrain" in config.init.params_from:
        names += [n for n in stages if n not in names]
    return {n: stages[n] for n in names}


def plan(config, workdir: str) -> str:
    """The line that opens a run: each stage it trains with its steps and workdir (a finished
    earlier stage is reused), and the key that sets the earlier stages' steps, which
    `train.steps` does not."""
    stages = earlier_stages(config)
    parts, pending = [], False
    for i, (name, stage) in enumerate(stages.items(), 1):
        where = os.path.join(workdir, "pretrain", name)
        done = os.path.exists(os.path.join(where, "eval.json"))
        pending |= not done
        parts.append(f"stage {i} {name} ({stage.model}/{stage.variant}) "
                     + (f"finished in {where}" if done else f"{stage.train.steps:,} steps -> {where}"))
    parts.append(f"{f'stage {len(stages) + 1} ' if stages else ''}{config.model}/{config.variant} "
                 f"{config.train.steps:,} steps -> {workdir}")
    hint = " (--config.pretrain.steps=N sets every earlier stage's steps)" if pending and not \
        config.pretrain.steps else ""
    return f"[train] plan: {'; '.join(parts)}{hint}"


def load_earlier_stages(prog: Program, state: TrainState, workdir: str) -> TrainState:
    """Copies the parameter subtrees `config.init.params` found in the newest checkpoints of
    `config.init.params_from`: workdirs, or "pretrain" = the family's `stages(config)`, each
    trained into W/pretrain/NAME first unless it has finished. An entry "dst=src" copies the
    source's subtree src into this model's dst (e.g. start one network from another's weights)."""
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
    pairs = options.parsed(config, "init.params")  # (dst, src)
    loaded: dict[str, str] = {}  # parameter subtree -> the workdir it came from
    for source in sources:
        try:
            src = from_workdir(source, data=False, selected=False).state
        except UserError as e:
            raise UserError(f"config init.params_from: {e}") from None
        src_params, src_model_state = src.params, src.model_state
        for dst, name in ((d, s) for d, s in pairs if s in src_params and d in params):
            if jax.tree.map(np.shape, src_params[name]) != jax.tree.map(np.shape, params[dst]):
                raise UserError(f"config init.params: {name} in {source} has other shapes than this model's {dst} "
                                "(trained with other settings?)")
            params[dst] = src_params[name]
            loaded[dst] = source
            for col, tree in src_model_state.items():
                if name in tree and dst in model_state.get(col, {}):
                    model_state[col][dst] = tree[name]
    missing = [d for d, _ in pairs if d in params and d not in loaded]
    if missing:
        raise UserError(f"config init.params: {', '.join(missing)} not found in {', '.join(sources)}")
    log.info(f"[train] loaded {', '.join(f'{n} ({w})' for n, w in loaded.items())} "
             f"(frozen: {', '.join(config.optim.frozen) or 'none'})")
    # the optimizer state of a fresh run does not depend on parameter values: it stays
    return jax.device_put(state.replace(params=params, model_state=model_state), prog.state_sharding)


def write_stage_features(config, workdir: str) -> str:
    """The data with the features of the earlier stage `config.data.features_from`: the stage
    trained into W/pretrain/NAME unless finished, then its `features` output of every record
    written into W/pretrain/NAME/features (resumed shard by shard if interrupted). With
    `pretrain.folds` = k, the training records' features come from k out-of-fold models of
    the stage instead (`train_out_of_fold`), written into W/pretrain/NAME/oof-k/features."""
    name, k = config.data.features_from, config.pretrain.get("folds", 0)
    stages = models.family(config.model).stages(config)
    if name not in stages:
        raise UserError(f"config data.features_from={name!r} names no earlier stage (config.pretrain.configs has "
                        f"{', '.join(stages) or 'none'})")
    if k and source_dir(stages[name], checked=False) != source_dir(config, checked=False):
        raise UserError(f"config pretrain.folds={k}: stage {name} trains on other data ({source_dir(stages[name])}), "
                        "so it never saw these records: set --config.pretrain.folds=0")
    stage_dir = _train_stage(stages[name], os.path.join(workdir, "pretrain", name))
    out = features_dir(workdir, name, k)
    data = data_dir(config_lib.load_workdir(stage_dir), stage_dir)  # what the stage read (its own stage's features)
    # finished shards are kept (a resumed extraction), unless other checkpoints wrote them (a retrained stage)
    features.extract(stage_dir, data, out, config.data.features_field, replace_stale=True,
                     folds=train_out_of_fold(stage_dir, k) if k else ())
    return out


def train_out_of_fold(stage_dir: str, folds: int) -> list[str]:
    """The `folds` out-of-fold models of the stage trained in `stage_dir`, each trained (unless
    finished) into stage_dir/oof-k/fold-NN with the stage's config but for `data.oof_fold`:
    one subject fold of the stage's training records held out (`data.oof_fold`). Each reuses
    the stage's own earlier stages (linked: they are the same configs)."""
    out = []
    for j in range(folds):
        cfg = config_lib.load_workdir(stage_dir)
        with cfg.unlocked():
            cfg.data.oof_fold, cfg.data.oof_folds = j, folds
        where = os.path.join(stage_dir, f"oof-{folds}", f"fold-{j:02d}")  # as `fergate cv` names its folds
        if os.path.isdir(os.path.join(stage_dir, "pretrain")) and not os.path.lexists(os.path.join(where, "pretrain")):
            os.makedirs(where, exist_ok=True)
            os.symlink(os.path.join("..", "..", "pretrain"), os.path.join(where, "pretrain"))
        log.info(f"[train] out-of-fold model {j} of {folds} of {cfg.model}/{cfg.variant}")
        out.append(_train_stage(cfg, where))
    return out


def _train_stage(config, workdir: str) -> str:
    """An earlier stage, trained into `workdir` unless it has finished there."""
    if not os.path.exists(os.path.join(workdir, "eval.json")):
        log.info(f"[train] earlier stage {config.model}/{config.variant} -> {workdir}")
        train(config, workdir)
    return workdir


# ----------------------------------------------------------------------------- workdir
def changed_keys(saved: dict, config) -> list[str]:
    """The keys in which `config` differs from a workdir's saved config that a resume cannot
    take; a key added since the workdir was written counts at the value meaning what it did."""
    saved = json.loads(json.dumps(saved))
    options.fill_missing(saved)
    old, new = config_lib.flatten(saved), config_lib.flatten(json.loads(config_lib.to_json(config)))
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES]


def check_workdir_config(workdir: str, config) -> None:
    """A workdir belongs to one config: refuse to resume another's state, or to change the
    learning-rate schedule under it (raising `train.steps` moves the decay horizon unless
    `optim.decay_steps` pins it)."""
    saved = read_json(os.path.join(workdir, "config.json"))
    if saved is not None:
        diff = changed_keys(saved, config)
        if diff:
            raise UserError(f"workdir {workdir} was written by another config (differs in {', '.join(diff[:6])}); "
                            "use a new --workdir")
        horizon = saved["optim"].get("decay_steps") or saved["train"]["steps"]
        if horizon != decay_horizon(config):
            raise UserError(f"workdir {workdir}: its learning rate decays over {horizon} steps, this config's over "
                            f"{decay_horizon(config)}, so the schedule would jump at the resume; keep it with "
                            f"--config.optim.decay_steps={horizon} (past that step the rate stays at optim.end_lr), "
                            "or use a new --workdir")


def check_workdir_data(workdir: str, data: DataPlan) -> None:
    """A workdir resumes on the data it trained on: a checkpoint of data with another
    fingerprint (`DataPlan.fingerprint`: prepared again with other options, or from other
    items) is refused naming both; a workdir written before fergate recorded fingerprints, or
    one without a checkpoint yet, takes the data it is given."""
    saved = read_json(os.path.join(workdir, "data.json")) or {}
    theirs = saved.get("fingerprint")
    ckpts = os.path.join(workdir, "checkpoints")
    if not theirs or theirs == data.fingerprint or not (os.path.isdir(ckpts) and any(
            n.isdigit() for n in os.listdir(ckpts))):
        return
    raise UserError(f"workdir {workdir} trained on data {theirs} ({saved.get('dir', '?')}), this run reads data "
                    f"{data.fingerprint} ({data.dir}): it was prepared again since (other options or items); resume "
                    "on the data it trained on, or use a new --workdir")


def write_workdir_config(workdir: str, config, data: DataPlan) -> None:
    """W/config.json, and W/data.json: how the records were made (the manifest's
    `export.DATA_KEYS`), what `fergate export` tells predict to repeat, and the data's
    `fingerprint` and `dir` (`check_workdir_data`)."""
    manifest = data.manifest
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        write_atomic(os.path.join(workdir, "config.json"), config_lib.to_json(config))
        write_atomic(os.path.join(workdir, "data.json"),
                     json.dumps({**{k: manifest[k] for k in export.DATA_KEYS if k in manifest},
                                 "fingerprint": data.fingerprint, "dir": data.dir}, indent=1))


class Profile:
    """A jax.profiler trace of steps A..B (`train.profile_steps=A,B`) into W/profile/, with
    a Perfetto trace (open it at ui.perfetto.dev) beside TensorBoard's xplane files."""

    def __init__(self, steps: tuple, workdir: str):
        self.first, self.last = steps or (0, -1)
        self.dir, self.active = os.path.join(workdir, "profile"), False

    def step(self, step: int):
        """A context for the step's dispatch: its trace annotation while tracing."""
        if step == self.first:
            jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
            self.active = True
        return jax.profiler.StepTraceAnnotation("train", step_num=step) if self.active else contextlib.nullcontext()

    def after(self, step: int, outputs) -> None:
        if self.active and step == self.last:
            jax.block_until_ready(outputs)  # the traced steps have run, not only been dispatched
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            log.info(f"[train] profile of steps {self.first}-{self.last} -> {self.dir}")


def _pace(row: dict, eta: float | None) -> str:
    """A progress line's speed and ETA, each where it is known: no rate on a line right after
    the first step (it is timed from that step's end, compile excluded), no ETA before the
    pace has been measured over a logging interval after the first one (which holds the
    input pipeline's and checkpointing's start-up) nor on the last line."""
    sps = row.get("steps_per_sec")
    if not sps:
        return ""
    ex = row["examples_per_sec"]
    speed = f"{sps:.1f} steps/s" if sps >= 1 else f"{1 / sps:.1f} s/step"
    return f" | {speed} {f'{ex:,.0f}' if ex >= 10 else f'{ex:.2g}'} ex/s" + \
        (f" | ETA {_hms(eta)}" if eta is not None else "")


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"
