"""`fergate sweep`: a paper's table, every (row, seed[, fold]) cell an ordinary resumable run
(`fergate.sweep`)."""

from __future__ import annotations

import argparse

from fergate.commands import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "sweep", run, overrides=True, jax=False,  # the runs start JAX, each in its own process
                    help="a paper's table: every (row, seed) of a table file trained as a resumable run, then "
                         "W/table.json, table.md, table.png beside the paper's numbers",
                    epilog="Overrides: --config.key=value, applied to every run (e.g. --config.data.dir=DIR). As a "
                           "SLURM array: launch/slurm_sweep.sbatch.")
    q.add_argument("table", help="configs/tables/X.py[:arg=value,...]")
    q.add_argument("--workdir", required=True, help="run r, seed s trains in WORKDIR/r/seed-s; the table goes here")
    q.add_argument("--budget", default=None, help="one of the table's budgets (default: its first)")
    q.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the table's)")
    q.add_argument("--rows", default=None, help="only these rows, comma-separated")
    q.add_argument("--task", type=int, default=0, help="this task's index: it runs every --tasks-th cell")
    q.add_argument("--tasks", type=int, default=1, help="tasks sharing the cells; the last to finish writes the table")
    q.add_argument("--aggregate", action="store_true", help="only write the table from the finished cells")


def run(a: argparse.Namespace, overrides: list[str]) -> None:
    from fergate import sweep

    rows = [r.strip() for r in a.rows.split(",") if r.strip()] if a.rows else None
    sweep.run(a.table, a.workdir, a.budget, a.seeds, rows, a.task, a.tasks, overrides, a.aggregate)
