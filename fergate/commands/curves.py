"""`fergate curves`: the training curves of several workdirs in one figure (`fergate.plots`)."""

from __future__ import annotations

import argparse

from fergate.commands import add_command
from fergate.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "curves", run, jax=False,  # reads metrics.jsonl, draws with matplotlib
                    help="the training curves of several runs in one figure (loss, training and held-out accuracy "
                         "against the step)")
    q.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="training workdirs (their metrics.jsonl), one "
                   "colour each")
    q.add_argument("--out", required=True, help="the figure (.png)")
    q.add_argument("--labels", nargs="+", default=None, help="one per workdir (default: the workdirs' names)")
    q.add_argument("--title", default="", help="the figure's title")


def run(a: argparse.Namespace) -> None:
    import os

    from fergate import plots
    from fergate.train.metrics import read_metrics

    labels = a.labels or [os.path.basename(os.path.normpath(w)) for w in a.workdirs]
    if len(set(labels)) < len(labels):  # e.g. a/fold-01 and b/fold-01
        labels = a.labels or [os.path.normpath(w) for w in a.workdirs]
    if len(labels) != len(a.workdirs) or len(set(labels)) < len(labels):
        raise UserError(f"--labels: {len(labels)} labels for {len(a.workdirs)} workdirs, each its own")
    runs = {}
    for label, w in zip(labels, a.workdirs):
        try:
            runs[label] = read_metrics(w)
        except OSError:
            raise UserError(f"{w}: no metrics.jsonl (not a training workdir, or it has not logged yet)") from None
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    print(f"[curves] {len(runs)} runs -> {plots.training_curves(runs, a.out, a.title)}")
