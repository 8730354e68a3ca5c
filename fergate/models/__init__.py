"""Model families. Each `fergate/models/<family>.py` exports its Flax module plus
`build(config)` and `inputs(config)` (the record fields it reads, per-example shapes)."""

from __future__ import annotations

import importlib
from types import ModuleType

from fergate.errors import UserError

FAMILIES = ("modul", "thin")


def family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise UserError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"fergate.models.{name}")
