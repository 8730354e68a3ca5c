"""Small file helpers the library shares."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

from fergate.errors import DiskFull, UserError


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


def write_atomic(path: str, text: str) -> None:
    """`text` into `path` through a temporary file renamed over it: a reader, or the run
    after a kill, finds the old file or the new one, never a part."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ----------------------------------------------------------------------------- full disk
#: errno values of a write that failed for space (a full device, an exhausted quota)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "os_error_code='28'")


def no_space(e: BaseException) -> str | None:
    """For an error a full disk caused (an OSError with ENOSPC or EDQUOT, or one that
    wraps it: tensorstore's "RESOURCE_EXHAUSTED ... Failed writing" under orbax), the path
    that could not be written ("" when the error does not say); None for any other error."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return str(e.filename or "")
        text = str(e)
        if any(t in text for t in _NO_SPACE_TEXT) or ("RESOURCE_EXHAUSTED" in text and "Failed writing" in text):
            m = re.search(r'Failed writing: "([^"]+)"', text) or re.search(r'local file "([^"]+)"', text) or \
                re.search(r"writing (/[^;]+);", text)  # array_record's
            return m[1] if m else ""
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def space_errors(to_error: Callable[[BaseException], Exception]):
    """Turns an error a full disk caused inside the block into `to_error(e)` (one line, what
    was kept); a UserError and every other error pass unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        if no_space(e) is None:
            raise
        raise to_error(e) from None


def disk_full(path: str, kept: str, needs: int | None = None, doing: str = "") -> DiskFull:
    """The one line for a write that failed for space: `path` (and what was being done), the
    space needed when known and free now, and what was `kept`."""
    free = free_bytes(path)
    space = ", ".join(x for x in (f"about {human(needs)} needed" if needs else "",
                                  f"{human(free)} free" if free is not None else "") if x)
    return DiskFull(f"no space left on the device of {path}{f' {doing}' if doing else ''}"
                    f"{f' ({space})' if space else ''}; kept: {kept}; free space, then run the same command again")


def remove_settled(find: Callable[[], list[str]], quiet_s: float = 0.3, limit_s: float = 10.0) -> list[str]:
    """Removes the paths `find()` lists until none comes back for `quiet_s` (at most
    `limit_s`): after a save failed, writes already under way in orbax's threads may still
    land in a partial directory. Returns what was removed."""
    removed: list[str] = []
    start = quiet_since = time.time()
    while True:
        found = find()
        for path in found:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        if found:
            removed += [p for p in found if p not in removed]
            quiet_since = time.time()
        if time.time() - quiet_since >= quiet_s or time.time() - start >= limit_s:
            return removed
        time.sleep(0.05)


def free_bytes(path: str) -> int | None:
    """Free bytes on the device of `path` (of its nearest existing parent)."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path or ".").free
    except OSError:
        return None


def du(path: str) -> int:
    """Bytes of the files under `path`."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
               if not os.path.islink(os.path.join(d, f)))


def human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
