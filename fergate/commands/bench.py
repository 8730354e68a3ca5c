"""`fergate bench`: step, input-pipeline and face-pipeline (`--prep`) timings as one JSON line."""

from __future__ import annotations

import argparse

from fergate.commands import add_command, builtin_data, jax_setup
from fergate.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "bench", run, overrides=True,
                    help="time train (or --infer) steps on synthetic batches, the input pipeline (--pipeline) or "
                         "data_prep (--prep); prints one JSON line")
    q.add_argument("--config", default=None, help="configs/X.py[:arg=value,...] (not needed with --prep)")
    q.add_argument("--batch", type=int, default=None, help="global batch size (default: the config's "
                   "input.batch_size)")
    q.add_argument("--steps", type=int, default=20, help="steps timed (the median step time is reported)")
    q.add_argument("--warmup", type=int, default=3, help="untimed steps run first, after the compile")
    q.add_argument("--infer", action="store_true", help="time the inference step (a forward pass) instead of the "
                   "train step")
    q.add_argument("--data", default=None, help="also time the input pipeline on this prepared directory (and "
                   "report its rate over the step's)")
    q.add_argument("--pipeline", action="store_true", help="only the input pipeline, no model: on --data, else "
                   "on the config's own data (the built-in set, prepared on first use); examples/s after the first "
                   "epoch and in it, bytes per example and MB/s sent to the devices")
    q.add_argument("--prep", action="store_true", help="only data_prep: faces/s of `fergate prep` on the sample set "
                   "with each of --prep_workers")
    q.add_argument("--prep_workers", default="1,2", help="worker counts for --prep, comma-separated")
    q.add_argument("--prep_size", type=int, default=280, help="sample-set images for --prep")
    q.add_argument("--vs", default=None, help="a second config (same overrides) timed in alternation: reports speedup")


def run(a: argparse.Namespace, overrides: list[str]) -> None:
    from fergate import config as config_lib

    if a.prep:
        from fergate import plugins
        from fergate.train import bench

        try:
            workers = [int(n) for n in a.prep_workers.split(",")]
        except ValueError:
            raise UserError(f"--prep_workers {a.prep_workers!r}: comma-separated numbers, e.g. 1,2") from None
        print(bench.to_json(plugins.prep_bench(workers, a.prep_size)))
        return
    if not a.config:
        raise UserError("--config is needed (only --prep times without a model)")
    cfg = config_lib.load(a.config, overrides)
    vs = config_lib.load(a.vs, overrides) if a.vs else None
    jax_setup(a)
    from fergate.train import bench

    if a.pipeline:
        data = a.data
        if not data:  # the config's own data: the built-in set, prepared on first use
            if cfg.data.get("features_from"):
                k = cfg.pretrain.get("folds", 0)
                raise UserError(f"{cfg.model}/{cfg.variant} reads an earlier stage's features: add --data "
                                f"W/pretrain/{cfg.data.features_from}/features of a trained workdir W"
                                + (f" (oof-{k}/features there: out-of-fold, pretrain.folds={k})" if k else ""))
            builtin_data(cfg)
            from fergate.train.data import data_dir

            data = data_dir(cfg)
        print(bench.to_json(bench.pipeline_bench(cfg, data, a.batch)))
        return
    print(bench.to_json(bench.bench(cfg, a.batch, a.steps, a.warmup, a.infer, a.data, vs)))
