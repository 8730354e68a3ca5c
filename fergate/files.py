"""Small file helpers the library shares."""

from __future__ import annotations

import json
import os
from typing import Any

from fergate.errors import UserError


def read_json(path: str, default: Any = None) -> Any:
    """The JSON value in `path`, or `default` when there is no such file (a workdir's or
    a shard's optional record: best.json, fold.json, .stats/...)."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def need_json(path: str, missing: str) -> Any:
    """The JSON value in `path`, a file the caller cannot go on without (a workdir's config,
    a dataset's or an export's manifest): absent, the one-line error `missing`, which names
    the fix; unreadable, one that names the file."""
    if not os.path.exists(path):
        raise UserError(missing)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable: {e}") from None
