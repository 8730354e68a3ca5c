"""A run's logged metrics: `W/metrics.jsonl`, one JSON object per logged step, and the same
values as TensorBoard scalars; read back by `fergate curves`."""

from __future__ import annotations

import json
import os

import jax

from fergate import plots


class MetricsWriter:
    """`W/metrics.jsonl` (one JSON object per logged step) and TensorBoard event files in
    `W/tensorboard` (tensorboardX: no TensorFlow), written by process 0. A resumed run first
    drops what was logged after its checkpoint and the final evaluation (`final`: it comes
    again), so that no step is there twice."""

    def __init__(self, workdir: str, start: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.lead = jax.process_index() == 0
        self.tb = None
        if not self.lead:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                rows = [(line, json.loads(line)) for line in f if line.strip()]
            kept = [line for line, row in rows if row["step"] <= start and not row.get("final")]
            with open(self.path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(self.path + ".tmp", self.path)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start + 1 if start else None)

    def write(self, step: int, row: dict, final: bool = False) -> None:
        """One row at `step`; `final`: the final evaluation (of the checkpoint at `step`)."""
        if not self.lead:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({**row, "step": step, **({"final": True} if final else {})}) + "\n")
        for k, v in row.items():
            if v is not None:
                split, _, name = k.partition("_")
                self.tb.add_scalar(f"{split}/{name}" if split in ("eval", "val") else f"train/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.lead:
            plots.training_curves({"": read_metrics(os.path.dirname(self.path))},
                                  os.path.join(os.path.dirname(self.path), "curves.png"))


def read_metrics(workdir: str) -> list[dict]:
    """The rows of `W/metrics.jsonl` (a last line still being written is left out)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [line for line in f if line.strip()]
    rows = [json.loads(line) for line in lines[:-1]]
    try:
        return rows + [json.loads(lines[-1])] if lines else rows
    except json.JSONDecodeError:
        return rows
