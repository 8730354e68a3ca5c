"""orbax checkpoints of the train state *and* the grain iterator, saved asynchronously.

A checkpoint that fails to restore (corrupt, half-deleted) is reported by name and the
next older one is tried, so a damaged latest checkpoint costs one interval, not the run.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain
import orbax.checkpoint as ocp

from fergate.errors import UserError
from fergate.files import read_json

log = logging.getLogger(__name__)


class Checkpointer:
    """`W/checkpoints/` (or `W/<subdir>/`): the newest `keep` steps."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, subdir: str = "checkpoints"):
        self.directory = os.path.abspath(os.path.join(workdir, subdir))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=async_save),
            item_names=("state", "data"),
        )

    def save(self, step: int, state: Any, iterator: Any | None = None) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps(), reverse=True)

    def restore(self, abstract_state: Any, iterator: Any | None = None,
                step: int | None = None) -> tuple[Any, int] | None:
        """(state, step) of the newest checkpoint that restores (or of `step`); None when
        there is none. The iterator, when given, is restored in place."""
        failures = []
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise UserError(f"no checkpoint of step {step} in {self.directory} (it has steps "
                                f"{', '.join(map(str, sorted(steps))) or 'none'})")
            steps = [step]
        for step in steps:
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(iterator)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
                msg = f"checkpoint {os.path.join(self.directory, str(step))} does not restore " \
                      f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
                log.warning(f"[ckpt] {msg}; trying an older one")
                failures.append(msg)
                continue
            return restored["state"], step
        if failures:
            raise UserError(f"no checkpoint in {self.directory} restores; newest failure: {failures[0]}")
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class Selection:
    """The best checkpoint by a validation metric (`train.select`): its state in `W/best/`
    (only the best step is kept) and its step, metric and value in `W/best.json`."""

    def __init__(self, workdir: str, metric: str, split: str):
        self.metric, self.split = metric, split
        self.path = os.path.join(workdir, "best.json")
        self.ckpt = Checkpointer(workdir, keep=1, subdir="best")
        self.best = read_selection(workdir)

    def offer(self, step: int, state: Any, metrics: dict) -> bool:
        """Keeps `state` if its metric beats the best so far (a tie keeps the earlier step)."""
        value = float(metrics[self.metric])
        if self.best is not None and value <= self.best["value"]:
            return False
        self.ckpt.save(step, state)
        self.ckpt.wait()
        self.best = {"step": step, "metric": self.metric, "value": value, "split": self.split}
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.best, f)
        os.replace(self.path + ".tmp", self.path)
        return True

    def close(self) -> None:
        self.ckpt.close()


def read_selection(workdir: str) -> dict | None:
    """`W/best.json`: the selected step, metric, value and validation split; None if none."""
    return read_json(os.path.join(workdir, "best.json"))


def restore_selected(workdir: str, abstract_state: Any) -> tuple[Any, int, dict | None]:
    """(state, step, selection) of the selected checkpoint when the run selects one, else of
    the newest checkpoint (selection None)."""
    selection = read_selection(workdir)
    restored = Checkpointer(workdir, subdir="best" if selection else "checkpoints").restore(abstract_state)
    if restored is None:
        raise UserError(f"no checkpoint in {workdir}")
    return (*restored, selection)
