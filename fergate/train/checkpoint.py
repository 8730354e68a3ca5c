"""orbax checkpoints of the train state *and* the grain iterator, saved asynchronously.

A checkpoint that fails to restore (corrupt, half-deleted) is reported by name and the
next older one is tried, so a damaged latest checkpoint costs one interval, not the run.

A checkpoint is written into `<step>.orbax-checkpoint-tmp*` and renamed to `<step>` when
complete. The run that writes a workdir (it holds its lock) removes such partial ones when
it starts and when a save fails for space (`disk_full`): they hold space and are never
resumed from.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import sys
from typing import Any

import grain
import orbax.checkpoint as ocp

from fergate.errors import DiskFull, UserError
from fergate.files import disk_full as disk_full_error
from fergate.files import du, no_space, read_json, remove_settled, write_atomic

log = logging.getLogger(__name__)

PARTIAL = ".orbax-checkpoint-tmp"


class Checkpointer:
    """`W/checkpoints/` (or `W/<subdir>/`): the newest `keep` steps. `writes`: the run that
    saves into it (partial checkpoints left by a killed one are removed as it starts)."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, subdir: str = "checkpoints",
                 writes: bool = False):
        self.directory = os.path.abspath(os.path.join(workdir, subdir))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=writes,
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
        self.ckpt = Checkpointer(workdir, keep=1, subdir="best", writes=True)
        self.best = read_selection(workdir)

    def offer(self, step: int, state: Any, metrics: dict) -> bool:
        """Keeps `state` if its metric beats the best so far (a tie keeps the earlier step)."""
        value = float(metrics[self.metric])
        if self.best is not None and value <= self.best["value"]:
            return False
        self.ckpt.save(step, state)
        self.ckpt.wait()
        self.best = {"step": step, "metric": self.metric, "value": value, "split": self.split}
        write_atomic(self.path, json.dumps(self.best))
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


# ----------------------------------------------------------------------------- full disk
def complete_steps(directory: str) -> list[int]:
    """The steps of the complete checkpoints in `directory`, newest first (read from the
    directory names: a partial one is not yet renamed to its step)."""
    if not os.path.isdir(directory):
        return []
    return sorted((int(d) for d in os.listdir(directory) if d.isdigit()), reverse=True)


def remove_partial(workdir: str) -> list[str]:
    """Removes the partial checkpoints of `workdir` (W/checkpoints, W/best), once no write
    of a failed save lands in them any more; returns them."""
    return sorted(remove_settled(lambda: glob.glob(os.path.join(workdir, "*", f"*{PARTIAL}*"))))


def disk_full(e: BaseException, workdir: str) -> DiskFull:
    """The one line for a training run in `workdir` that a full disk stopped (`e`): what it
    was writing, the space a checkpoint takes, and the newest complete checkpoint, from which
    the same command resumes once space is freed; the partial checkpoints are removed first."""
    path = no_space(e) or workdir
    partial = remove_partial(workdir)
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    steps = complete_steps(directory)
    failed = re.search(rf"/(checkpoints|best)/(\d+){re.escape(PARTIAL)}", path)
    needs, doing = None, ""
    if failed or PARTIAL in path:
        path = os.path.join(workdir, failed[1]) if failed else directory
        doing = f"saving the checkpoint of step {failed[2]}" if failed else "saving a checkpoint"
        needs = du(os.path.join(directory, str(steps[0]))) if steps else None
    removed = f" (its partial {', '.join(os.path.basename(p) for p in partial)} removed)" if partial else ""
    kept = f"step {steps[0]}, the newest complete checkpoint in {directory}{removed}; the run resumes from it" \
        if steps else f"no complete checkpoint yet{removed}; the run starts from step 0"
    return disk_full_error(path, kept, needs, doing)


class _QuietNoSpace(logging.Filter):
    """Drops orbax's log of a save that failed for space (each of its threads logs it, with
    a traceback): the trainer reports it in one line (`disk_full`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (no_space(Exception(record.getMessage())) is not None or (exc and no_space(exc) is not None))


def _quiet_closed_loop(hook):
    """`sys.unraisablehook` without the "Event loop is closed" errors of tensorstore writes
    that finish after orbax closed the event loop of a save that failed (a full disk): one
    traceback each, after the error that the trainer reports in one line."""

    def unraisable(u) -> None:
        if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
            return
        hook(u)

    return unraisable


logging.getLogger("absl").addFilter(_QuietNoSpace())
sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)
