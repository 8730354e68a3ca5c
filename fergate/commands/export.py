"""`fergate export`: a trained model as a self-contained directory (`fergate.export`)."""

from __future__ import annotations

import argparse

from fergate.commands import add_command, add_workdir, jax_setup


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "export", run, help="a trained model as a self-contained directory: parameters, config, "
                    "classes, preprocessing contract and a serialized inference function (jax.export)")
    add_workdir(q, "a training workdir (fergate train)")
    q.add_argument("--out", required=True, help="a new directory")
    q.add_argument("--step", type=int, default=None, help="this checkpoint step (default: the selected, else newest)")


def run(a: argparse.Namespace) -> None:
    import os

    jax_setup(a)
    from fergate import export

    m = export.export(a.workdir, a.out, a.step)
    print(f"[export] {m['model']} step {m['step']} -> {os.path.abspath(a.out)} ({len(m['classes'])} classes, inputs "
          f"{', '.join(m['inputs'])}; {m['kind']} model; runs on {', '.join(m['platforms'])})")
