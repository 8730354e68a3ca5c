"""SIGINT and SIGTERM caught while a `with` block runs: how a training run (`Preemption`) and a
sweep stop cleanly, each handling the signal its own way."""

from __future__ import annotations

import signal
import threading
from typing import Self


class StopSignals:
    """Installs `handle` for `signals()` on entering and puts the previous handlers back on
    leaving; only in the main thread, the one Python lets set handlers (elsewhere nothing is
    caught). `signum`: the last signal caught, None before one."""

    def __init__(self):
        self.signum: int | None = None
        self.saved: dict[int, object] = {}

    def signals(self) -> tuple[int, ...]:
        return signal.SIGINT, signal.SIGTERM

    def handle(self, signum, frame) -> None:
        self.signum = signum

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.signal(s, self.handle) for s in self.signals()}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.saved.items():
            signal.signal(s, handler)
