"""orbax checkpoints of the train state *and* the grain iterator, saved asynchronously.

A checkpoint that fails to restore (corrupt, half-deleted) is reported by name and the
next older one is tried, so a damaged latest checkpoint costs one interval, not the run.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grain
import orbax.checkpoint as ocp

from fergate.errors import UserError

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
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

    def restore(self, abstract_state: Any, iterator: Any | None = None) -> tuple[Any, int] | None:
        """(state, step) of the newest checkpoint that restores; None when there is none.
        The iterator, when given, is restored in place."""
        failures = []
        for step in self.steps():
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
