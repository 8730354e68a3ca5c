"""The `table.md` a sweep writes: its rows beside the paper's column, the budget and data in
the caption (`fergate.sweep.aggregate` builds the report it renders)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

#: metrics whose value by chance is one over the number of classes (marked on the table)
CHANCE_METRICS = ("accuracy", "mean_class_accuracy")


def chance(metric: str, outs: Sequence[str]) -> float | None:
    """A uniform guess's `metric` (1 / the classes of a run's confusion matrix), where that is
    what chance means for it."""
    if metric not in CHANCE_METRICS or not outs:
        return None
    with open(os.path.join(outs[0], "eval.json")) as f:
        classes = len(json.load(f).get("confusion_matrix") or [])
    return 1.0 / classes if classes else None


def report_markdown(report: dict, decimals: int) -> str:
    """The table beside the paper's column, the budget and data in its caption; a column per
    extra with each run's value (seed order), `-` where a run has none."""
    scale, extras = report["scale"], report.get("extras", [])

    def fmt(x: float) -> str:
        return f"{x * scale:.{decimals}f}"

    folds = f", each the mean of {report['folds']} folds" if report["folds"] else ""
    chance = f"; chance {fmt(report['chance'])}" if report.get("chance") else ""
    lines = [f"**{report['title']}**: {report['metric']}{' (%)' if scale == 100 else ''}, mean ± std (n seeds"
             f"{folds}); budget "
             f"`{report['budget']}` ({', '.join(report['budget_overrides']) or 'the configs as they are'}"
             f"{', ' + ', '.join(report['overrides']) if report['overrides'] else ''}); {report['data']}{chance}.", "",
             "| " + " | ".join(["row", "fergate", "paper", "paper's setting", *extras]) + " |",
             "|" + "---|" * (4 + len(extras))]
    for r in report["rows"]:
        cell = "-" if r["mean"] is None else fmt(r["mean"]) + (f" ± {r['std'] * scale:.{decimals}f}"
                                                                if r["std"] is not None else "") + f" ({r['n']})"
        notes = [f"{len(r[k])} {what}" for k, what in (("failed", "failed"), ("missing", "not run")) if r[k]]
        cell += f" [{', '.join(notes)}]" if notes else ""
        paper = "-" if r["paper"] is None else f"{r['paper']:g}"
        more = [", ".join("-" if v is None else fmt(v) for v in values) if any(v is not None for v in values)
                else "-" for values in ([run["extras"][e] for run in r["runs"]] for e in extras)]
        lines.append("| " + " | ".join([r["name"], cell, paper, r["paper_note"], *more]) + " |")
    return "\n".join(lines) + "\n"
