"""Small file helpers the library shares."""

from __future__ import annotations

import json
import os
from typing import Any


def read_json(path: str, default: Any = None) -> Any:
    """The JSON value in `path`, or `default` when there is no such file (a workdir's or
    a shard's optional record: best.json, fold.json, .stats/...)."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)
