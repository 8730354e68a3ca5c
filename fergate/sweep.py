"""`fergate sweep`: a paper's table run as a grid of ordinary training runs, written beside
the paper's numbers.

A table file (`configs/tables/<name>.py`, `get_table(arg)`, loaded like a config file)
lists rows (a config and its overrides, the paper's number), seeds, folds and named
budgets. Every (row, seed[, fold]) cell is an ordinary resumable `fergate train` (or
`fergate cv --fold`) run in `W/<row>/seed-<s>[/fold-NN]`, in a child process (fresh JAX
state each); the cell's `sweep.json` marker says whether it finished, failed or was
interrupted, under which config fingerprint. Rows that share an earlier stage
(`shares=("row",)`) link the finished `pretrain/NAME` workdir of the first of them for the
same seed, so a seed's stage 1 trains once. `--task I --tasks N` runs every N-th unit
(a cell with the cells sharing its stages); whichever task finishes last writes
`W/table.json`, `table.md` and `table.png`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

from fergate import config as config_lib
from fergate import lock
from fergate.errors import Interrupted, UserError
from fergate.files import write_atomic
from fergate.signals import StopSignals
from fergate.sweep_table import chance, report_markdown

log = logging.getLogger(__name__)

MARKER = "sweep.json"
TABLE_KEYS = {"title", "metric", "seeds", "folds", "budgets", "rows", "scale", "decimals", "extras"}
ROW_KEYS = {"name", "config", "overrides", "paper", "paper_note", "shares"}


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    config: str  # configs/X.py[:arg], resolved like --config (from the working directory)
    overrides: tuple[str, ...] = ()
    paper: float | None = None
    paper_note: str = ""
    shares: tuple[str, ...] = ()  # rows whose earlier stages (W/<row>/seed-<s>/pretrain/NAME) this row reuses


@dataclasses.dataclass(frozen=True)
class Table:
    spec: str
    title: str
    rows: tuple[Row, ...]
    budgets: dict[str, tuple[str, ...]]
    metric: str = "mean_class_accuracy"  # an eval.json key
    seeds: int = 3
    folds: int = 0  # 0: the config's held-out split; k: subject-independent k-fold CV per seed
    scale: float = 100.0  # table.md / table.png show metric x scale (the papers' numbers are given so)
    decimals: int = 1
    #: more numbers reported per run, not averaged into the metric: {column: (a folder of the cell's
    #: workdir, e.g. an earlier stage's "pretrain/rotation", an eval.json key there)}
    extras: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Cell:
    index: int
    row: Row
    seed: int
    fold: int  # -1: no cross-validation

    @property
    def path(self) -> str:
        """The cell's workdir relative to W."""
        base = os.path.join(self.row.name, f"seed-{self.seed}")
        return os.path.join(base, f"fold-{self.fold:02d}") if self.fold >= 0 else base

    def __str__(self) -> str:
        return f"{self.row.name} seed {self.seed}" + (f" fold {self.fold}" if self.fold >= 0 else "")


def load_table(spec: str) -> Table:
    """`path.py[:arg]` -> its `get_table(arg)` as a checked `Table` (mistakes: one-line errors)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"table file not found: {path}")
    module = config_lib.load_module(path)
    if not hasattr(module, "get_table"):
        raise UserError(f"{path} has no get_table(arg)")
    d = dict(module.get_table(arg or None))
    if set(d) - TABLE_KEYS or not {"title", "rows", "budgets"} <= set(d):
        raise UserError(f"{path}: get_table() keys {', '.join(sorted(set(d) - TABLE_KEYS)) or '(none unknown)'} "
                        f"unknown or title/rows/budgets missing; known: {', '.join(sorted(TABLE_KEYS))}")
    rows = []
    for r in d.pop("rows"):
        if set(r) - ROW_KEYS or not {"name", "config"} <= set(r):
            raise UserError(f"{path}: row {r.get('name')!r} needs name and config, may have "
                            f"{', '.join(sorted(ROW_KEYS - {'name', 'config'}))}")
        rows.append(Row(**{**r, "overrides": tuple(r.get("overrides", ())), "shares": tuple(r.get("shares", ()))}))
    names = [r.name for r in rows]
    for r in rows:
        if names.count(r.name) > 1 or "/" in r.name:
            raise UserError(f"{path}: row name {r.name!r} twice or with a '/'")
        for s in r.shares:
            if s not in names or s == r.name:
                raise UserError(f"{path}: row {r.name!r} shares stages with {s!r}, not another row of the table")
    budgets = {k: tuple(v) for k, v in d.pop("budgets").items()}
    extras = {k: tuple(v) for k, v in d.pop("extras", {}).items()}
    if any(len(v) != 2 for v in extras.values()):
        raise UserError(f"{path}: extras are {{column: (folder in the cell's workdir, eval.json key)}}")
    for k, v in budgets.items():
        if any("=" not in o for o in v):
            raise UserError(f"{path}: budget {k!r}: overrides are 'key=value' strings")
    return Table(spec=spec, rows=tuple(rows), budgets=budgets, extras=extras, **d)


def select_cells(table: Table, rows: Sequence[str] | None = None, seeds: int | None = None) -> list[Cell]:
    """The table's cells, seed by seed (so a first seed of every row is done early)."""
    known = [r.name for r in table.rows]
    unknown = [r for r in rows or () if r not in known]
    if unknown:
        raise UserError(f"--rows {','.join(unknown)}: not in {table.spec} (rows: {', '.join(known)})")
    chosen = [r for r in table.rows if not rows or r.name in rows]
    folds = range(table.folds) if table.folds else (-1,)
    grid = [(r, s, f) for s in range(seeds or table.seeds) for f in folds for r in chosen]
    return [Cell(i, r, s, f) for i, (r, s, f) in enumerate(grid)]


def units(cells: Sequence[Cell]) -> list[list[Cell]]:
    """Cells grouped with those they share stages with (same seed and fold, in either
    direction): a task runs a group in order, so a stage is trained once and linked."""
    parent = {c.index: c.index for c in cells}

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    by_key = {(c.row.name, c.seed, c.fold): c for c in cells}
    for c in cells:
        for s in c.row.shares:
            other = by_key.get((s, c.seed, c.fold))
            if other is not None:
                parent[root(c.index)] = root(other.index)
    groups: dict[int, list[Cell]] = {}
    for c in cells:
        groups.setdefault(root(c.index), []).append(c)
    return sorted(groups.values(), key=lambda g: g[0].index)


def cell_overrides(table: Table, cell: Cell, budget: str, extra: Sequence[str]) -> list[str]:
    """The cell's `key=value` overrides: the budget's, the row's, the command line's, the seed."""
    return [*table.budgets[budget], *cell.row.overrides, *(o.removeprefix("--config.") for o in extra),
            f"seed={cell.seed}"]


def fingerprint(cell: Cell, overrides: Sequence[str], folds: int) -> str:
    text = json.dumps({"config": cell.row.config, "overrides": list(overrides), "folds": folds, "fold": cell.fold})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_marker(workdir: str, cell: Cell) -> dict:
    try:
        with open(os.path.join(workdir, cell.path, MARKER)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def write_marker(workdir: str, cell: Cell, **fields) -> None:
    os.makedirs(os.path.join(workdir, cell.path), exist_ok=True)
    write_atomic(os.path.join(workdir, cell.path, MARKER),
           json.dumps({"row": cell.row.name, "seed": cell.seed, "fold": cell.fold, **fields}, indent=1))


def state(workdir: str, cell: Cell) -> str:
    """done | failed | interrupted | running | missing."""
    m = read_marker(workdir, cell)
    if m.get("status") == "done" and not os.path.exists(os.path.join(workdir, cell.path, "eval.json")):
        return "missing"
    return m.get("status", "missing")


def check_unchanged(table: Table, workdir: str, cells: Sequence[Cell], budget: str, extra: Sequence[str]) -> None:
    """A finished cell whose row the table now gives another config, overrides or budget is
    refused, naming the row: its result would be filed under a row it no longer is."""
    for c in cells:
        m = read_marker(workdir, c)
        ov = cell_overrides(table, c, budget, extra)
        if m.get("status") == "done" and m.get("fingerprint") != fingerprint(c, ov, table.folds):
            raise UserError(f"row {c.row.name!r}: {os.path.join(workdir, c.path)} finished with --config "
                            f"{m.get('config')} {' '.join(m.get('overrides', []))}, the table now gives "
                            f"{c.row.config} {' '.join(ov)}: restore the row (or budget), or use a new --workdir")


class _Stop(StopSignals):
    """SIGINT / SIGTERM while a sweep runs: passed on to the running cell (which saves a
    checkpoint and exits), then the sweep stops; the same command resumes that cell."""

    def __init__(self):
        super().__init__()
        self.child: subprocess.Popen | None = None

    def handle(self, signum, frame) -> None:
        super().handle(signum, frame)
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def check(self, where: str) -> None:
        if self.signum is not None:
            raise Interrupted(f"{signal.Signals(self.signum).name}: stopped {where}; run the same command again to "
                              "resume", self.signum)


def _die_with_parent() -> None:
    """In the child: killed when the sweep dies (even by kill -9), never left training alone."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def resolve(cell: Cell, overrides: list[str]):
    """(overrides, config) of a cell, checked in this process (a bad override fails the cell
    in seconds); a config with earlier stages gets `seed` added to the keys they inherit, so
    that every stage of a seed's run trains under that seed."""
    cfg = config_lib.load(cell.row.config, overrides)
    if cfg.pretrain.configs and "seed" not in cfg.pretrain.inherit:
        overrides = [*overrides, f"pretrain.inherit={(*cfg.pretrain.inherit, 'seed')!r}"]
        cfg = config_lib.load(cell.row.config, overrides)
    return overrides, cfg


def stage_configs(cfg) -> dict[str, str]:
    """{NAME: the stage's config as JSON}: two rows share a stage only where these agree."""
    from fergate import models

    return {n: config_lib.to_json(c) for n, c in models.family(cfg.model).stages(cfg).items()}


def link_stages(workdir: str, cell: Cell, unit: Sequence[Cell], stages_of) -> None:
    """Links the finished stages of the cells `cell` shares them with into its pretrain/ (the
    trainer skips a finished W/pretrain/NAME)."""
    mine = os.path.join(workdir, cell.path, "pretrain")
    for name, stage in stages_of(cell).items():
        if os.path.lexists(os.path.join(mine, name)):
            continue
        for other in unit:
            src = os.path.join(workdir, other.path, "pretrain", name)
            if other is cell or not os.path.exists(os.path.join(src, "eval.json")) or \
                    stages_of(other).get(name) != stage:
                continue
            os.makedirs(mine, exist_ok=True)
            os.symlink(os.path.relpath(src, mine), os.path.join(mine, name))
            log.info(f"[sweep] {cell}: stage {name} shared with row {other.row.name} ({src})")
            break


def _command(table: Table, workdir: str, cell: Cell, overrides: list[str]) -> list[str]:
    args = [f"--config.{o}" for o in overrides]
    if table.folds:
        return [sys.executable, "-m", "fergate", "cv", "--config", cell.row.config, "--workdir",
                os.path.join(workdir, cell.row.name, f"seed-{cell.seed}"), "--folds", str(table.folds), "--fold",
                str(cell.fold), *args]
    return [sys.executable, "-m", "fergate", "train", "--config", cell.row.config, "--workdir",
            os.path.join(workdir, cell.path), *args]


def _last_error(path: str) -> str:
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[-1][:500]


def run_cell(table: Table, workdir: str, cell: Cell, overrides: list[str], fp: str, stop: _Stop,
             unit: Sequence[Cell], stages_of) -> str:
    """Runs one cell to its end in a child process; returns done | failed. Its output goes to
    the cell's `sweep.log`; the marker records the outcome."""
    out = os.path.join(workdir, cell.path)
    with lock.hold(out, f"fergate sweep (cell {cell})") as held:  # the child trains under this lock
        return _run_cell(table, workdir, cell, overrides, fp, stop, unit, stages_of, held)


def _run_cell(table: Table, workdir: str, cell: Cell, overrides: list[str], fp: str, stop: _Stop,
              unit: Sequence[Cell], stages_of, held: lock.Lock) -> str:
    out = os.path.join(workdir, cell.path)
    record = dict(config=cell.row.config, overrides=overrides, fingerprint=fp)
    try:
        overrides, _ = resolve(cell, overrides)
    except UserError as e:
        write_marker(workdir, cell, status="failed", error=str(e), **record)
        return "failed"
    link_stages(workdir, cell, unit, stages_of)
    write_marker(workdir, cell, status="running", **record)
    logfile = os.path.join(out, "sweep.log")
    with open(logfile, "a") as f:
        stop.child = subprocess.Popen(_command(table, workdir, cell, overrides), stdout=f, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=_die_with_parent,
                                      env=lock.child_env(held))
        if stop.signum is not None:  # a signal before the child was known
            stop.child.send_signal(stop.signum)
        rc = stop.child.wait()
    stop.child = None
    if stop.signum is not None:
        write_marker(workdir, cell, status="interrupted", **record)
        stop.check(f"{cell} (its checkpoint is in {out})")
    if rc != 0 or not os.path.exists(os.path.join(out, "eval.json")):
        write_marker(workdir, cell, status="failed", error=f"exit {rc}: {_last_error(logfile)}", **record)
        return "failed"
    value = metric_value(table, out)
    _hparams(out, cell, overrides, table.metric, value)
    write_marker(workdir, cell, status="done", value=value, **record)
    return "done"


def _hparams(out: str, cell: Cell, overrides: Sequence[str], metric: str, value: float) -> None:
    """The run's overrides and result as TensorBoard hparams of the run itself (W/<row>/seed-<s>/
    tensorboard): the HParams tab of `tensorboard --logdir W` compares a sweep's runs side by side."""
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    hp = {"row": cell.row.name, "config": cell.row.config, "seed": cell.seed, "fold": cell.fold}
    hp.update(o.split("=", 1) for o in overrides if not o.startswith("seed="))
    with SummaryWriter(os.path.join(out, "tensorboard")) as w:
        for summary in hparams(hp, {f"sweep/{metric}": value}):
            w.file_writer.add_summary(summary)
        w.add_scalar(f"sweep/{metric}", value)


def metric_value(table: Table, out: str) -> float:
    with open(os.path.join(out, "eval.json")) as f:
        report = json.load(f)
    if not isinstance(report.get(table.metric), (int, float)):
        numbers = sorted(k for k, v in report.items() if isinstance(v, (int, float)))
        raise UserError(f"{table.spec}: metric {table.metric!r} is not a number in {out}/eval.json (it has: "
                        f"{', '.join(numbers)})")
    return float(report[table.metric])


def extra_values(table: Table, out: str) -> dict[str, float | None]:
    """The table's `extras` of the run in `out`: None where its folder has no such number (a
    row without that earlier stage)."""
    values = {}
    for name, (folder, key) in table.extras.items():
        path, report = os.path.join(out, folder, "eval.json"), {}
        if os.path.exists(path):
            with open(path) as f:
                report = json.load(f)
        values[name] = float(report[key]) if isinstance(report.get(key), (int, float)) else None
    return values


def run(spec: str, workdir: str, budget: str | None = None, seeds: int | None = None,
        rows: Sequence[str] | None = None, task: int = 0, tasks: int = 1, overrides: Sequence[str] = (),
        aggregate_only: bool = False) -> dict | None:
    """Runs this task's unfinished cells in turn (a failed cell is recorded and the others
    go on), then writes the table once every cell has a result (with `aggregate_only`: now,
    from the finished ones). Returns the table (None while other tasks' cells are missing)."""
    table = load_table(spec)
    budget = budget or next(iter(table.budgets), None)
    if budget not in table.budgets:
        raise UserError(f"--budget {budget}: {spec} has budgets {', '.join(table.budgets) or 'none'}")
    if not 0 <= task < tasks:
        raise UserError(f"--task {task} --tasks {tasks}: expected 0 <= task < tasks")
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds {seeds}: at least 1")
    cells = select_cells(table, rows, seeds)
    check_unchanged(table, workdir, cells, budget, overrides)
    if aggregate_only:
        return aggregate(table, workdir, cells, budget, overrides, partial=True)
    mine = [u for k, u in enumerate(units(cells)) if k % tasks == task]
    todo = sum(1 for u in mine for c in u if state(workdir, c) != "done")
    log.info(f"[sweep] {table.title}: {len(cells)} cells ({len({c.row.name for c in cells})} rows x "
             f"{len({c.seed for c in cells})} seeds{f' x {table.folds} folds' if table.folds else ''}), budget "
             f"{budget}; task {task} of {tasks}: {todo} to run -> {workdir}")
    cache: dict[int, dict] = {}

    def stages_of(c: Cell) -> dict[str, str]:
        if c.index not in cache:
            try:
                cache[c.index] = stage_configs(resolve(c, cell_overrides(table, c, budget, overrides))[1])
            except UserError:  # its row fails on its own
                cache[c.index] = {}
        return cache[c.index]

    times, ok = [], []
    with _Stop() as stop:
        for unit in mine:
            for cell in unit:
                if state(workdir, cell) == "done":
                    continue
                stop.check(f"before {cell}")
                ov = cell_overrides(table, cell, budget, overrides)
                n = len(times) + 1
                log.info(f"[sweep] {n}/{todo} {cell} -> {os.path.join(workdir, cell.path)}: started")
                t = time.time()
                result = run_cell(table, workdir, cell, ov, fingerprint(cell, ov, table.folds), stop, unit,
                                  stages_of)
                times.append(time.time() - t)
                ok.append(result == "done")
                left = todo - n
                took = [d for d, c in zip(times, ok) if c] if any(ok) else times  # a failure can take no time
                eta = np.mean(took) * left
                if result == "done":
                    shown = read_marker(workdir, cell)["value"] * table.scale
                    log.info(f"[sweep] {n}/{todo} {cell}: {table.metric} {shown:.{table.decimals}f} in "
                             f"{_hms(times[-1])}; {left} left, ETA {_hms(eta)}")
                else:
                    log.error(f"[sweep] {n}/{todo} {cell}: failed ({read_marker(workdir, cell).get('error')}); "
                              f"{left} left, ETA {_hms(eta)}")
    return aggregate(table, workdir, cells, budget, overrides, partial=False)


def aggregate(table: Table, workdir: str, cells: Sequence[Cell], budget: str, overrides: Sequence[str],
              partial: bool) -> dict | None:
    """W/table.json, table.md, table.png from the finished cells: per row the value of each
    seed (its folds' mean with cross-validation), their mean and std (ddof 1), each run's
    metric and extras read from its eval.json (a table whose metric changed under finished
    cells reports the new one). Unless `partial`, only once no cell is waiting (another
    task's); failed cells are listed."""
    states = {c.index: state(workdir, c) for c in cells}
    waiting = [c for c in cells if states[c.index] not in ("done", "failed")]
    if waiting and not partial:
        log.info(f"[sweep] {len(cells) - len(waiting)} of {len(cells)} cells have a result; waiting for "
                 f"{len(waiting)} ({', '.join(map(str, waiting[:4]))}{', ...' if len(waiting) > 4 else ''}); the "
                 "last task to finish writes the table (or run with --aggregate)")
        return None
    out_rows = []
    for row in dict.fromkeys(c.row for c in cells):
        mine = [c for c in cells if c.row == row]
        runs, failed, missing, values = [], [], [], []
        for seed in sorted({c.seed for c in mine}):
            seed_values = []
            for c in (c for c in mine if c.seed == seed):
                entry = {"seed": c.seed, "fold": c.fold if c.fold >= 0 else None, "workdir": c.path}
                if states[c.index] == "done":  # the table's metric now (it may be another than the marker's)
                    out = os.path.join(workdir, c.path)
                    v = metric_value(table, out)
                    runs.append({**entry, "value": v, **({"extras": extra_values(table, out)} if table.extras else {})})
                    seed_values.append(v)
                elif states[c.index] == "failed":
                    failed.append({**entry, "error": read_marker(workdir, c).get("error", "")})
                else:
                    missing.append(entry)
            if len(seed_values) == len([c for c in mine if c.seed == seed]):
                values.append(float(np.mean(seed_values)))
        v = np.array(values)
        out_rows.append({"name": row.name, "config": row.config, "overrides": list(row.overrides),
                         "paper": row.paper, "paper_note": row.paper_note, "values": values,
                         "mean": float(v.mean()) if len(v) else None,
                         "std": float(v.std(ddof=1)) if len(v) > 1 else None, "n": len(v),
                         "runs": runs, "failed": failed, "missing": missing})
    report = {"title": table.title, "table": table.spec, "metric": table.metric, "scale": table.scale,
              "extras": list(table.extras),
              "budget": budget, "budget_overrides": list(table.budgets[budget]),
              "overrides": [o.removeprefix("--config.") for o in overrides],
              "seeds": len({c.seed for c in cells}), "folds": table.folds, "data": _data(workdir, cells, states),
              "complete": not waiting and not any(r["failed"] for r in out_rows),
              "chance": chance(table.metric, [os.path.join(workdir, r["workdir"]) for row in out_rows
                                              for r in row["runs"]]),
              "rows": out_rows}
    os.makedirs(workdir, exist_ok=True)
    write_atomic(os.path.join(workdir, "table.json"), json.dumps(report, indent=1))
    write_atomic(os.path.join(workdir, "table.md"), report_markdown(report, table.decimals))
    from fergate import plots

    plots.sweep_table(out_rows, table.scale, f"{table.title}\nbudget {budget}, {report['data']}",
                      f"{table.metric}{' (%)' if table.scale == 100 else ''}", os.path.join(workdir, "table.png"),
                      report["chance"])
    bad = sum(len(r["failed"]) for r in out_rows)
    log.info(f"[sweep] table of {len(out_rows)} rows -> {os.path.join(workdir, 'table.md')}, table.json, table.png"
             f"{f'; {bad} failed cells listed, not averaged in' if bad else ''}"
             f"{f'; {len(waiting)} cells not finished' if waiting else ''}")
    return report


def _data(workdir: str, cells: Sequence[Cell], states: dict) -> str:
    """The data the runs trained on, as their config.json says."""
    for c in cells:
        if states[c.index] == "done":
            data = config_lib.load_workdir(os.path.join(workdir, c.path)).data
            return f"data {data.dir}" if data.dir else \
                f"built-in {data.dataset} ({', '.join(f'{k}={v}' for k, v in data.prep_options.items())})"
    return "no run finished"


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0, seconds))))
