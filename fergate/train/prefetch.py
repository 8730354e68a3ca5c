"""Training batches put on the devices ahead of the step that reads them (double buffering:
the transfer of batch n + 1 overlaps step n), with the input iterator's checkpoint state of
the batches the steps have read, not of those fetched ahead: a resumed run starts at the
first batch no step has read."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from typing import Any

from fergate.train.mesh import global_batch


class DevicePrefetch:
    """`next` -> the next global batch of `iterator` (a grain iterator of this process's
    parts), already on the devices of `sharding`, with `depth` - 1 more on their way there;
    `get_state` is what grain's checkpoint handler saves: the iterator's state after the
    last batch `next` returned."""

    def __init__(self, iterator: Iterator, sharding: Any, depth: int = 2):
        self.iterator, self.sharding, self.depth = iterator, sharding, depth
        self.state = iterator.get_state()  #: where a resumed run starts: nothing read yet
        self.ahead: collections.deque = collections.deque()

    def _fetch(self) -> None:
        batch = global_batch(next(self.iterator), self.sharding)  # device_put returns before the copy ends
        self.ahead.append((batch, self.iterator.get_state()))

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self) -> dict:
        while len(self.ahead) < self.depth:
            self._fetch()
        batch, self.state = self.ahead.popleft()
        return batch

    def get_state(self) -> bytes:
        """The iterator's state after the batches read so far, as grain's checkpoint handler
        takes a non-grain iterator's (JSON bytes)."""
        return json.dumps(self.state).encode()
