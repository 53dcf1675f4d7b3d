"""The spool: a FIFO of QoS>=1 publishes waiting for the broker (``Spool``), and its
in-memory implementation. The daemon's durable one (SQLite) lives in ``mechaway.store``."""

from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import Future as ThreadFuture
from typing import Any, Literal, Protocol

__all__ = ["MemorySpool", "Spool", "SpoolItem"]

#: (id, topic, payload, qos, retain); ids increase with every append
SpoolItem = tuple[int, str, bytes, int, bool]


class Spool(Protocol):
    """A FIFO of pending publishes; the SQLite one makes them survive a restart.

    Called on the event loop thread; every method must be quick (``__len__`` above all:
    it is checked on each QoS>=1 publish). The connection enforces the bound and the
    overflow policy before ``append``.

    ``append`` returns a future that resolves once the item is on disk (``durable``: fsynced
    too), or None when there is nothing to wait for (a memory spool, an item dropped).
    """

    def append(
        self, topic: str, payload: bytes, qos: int, retain: bool, durable: bool = False
    ) -> ThreadFuture[Any] | None: ...

    def peek(self, n: int) -> list[SpoolItem]: ...

    def remove_upto(self, id_: int) -> None: ...

    def __len__(self) -> int: ...


class MemorySpool:
    """In-memory ``Spool``: bounded, with a drop policy; ``dropped`` counts what it shed."""

    def __init__(
        self, max_items: int = 100_000, overflow: Literal["drop_oldest", "drop_new"] = "drop_oldest"
    ) -> None:
        self.max_items = max_items
        self.overflow = overflow
        self.dropped = 0
        self._items: deque[SpoolItem] = deque()
        self._ids = itertools.count(1)

    def append(
        self, topic: str, payload: bytes, qos: int, retain: bool, durable: bool = False
    ) -> ThreadFuture[Any] | None:
        if len(self._items) >= self.max_items:
            self.dropped += 1
            if self.overflow == "drop_new" or not self._items:
                return None
            self._items.popleft()
        self._items.append((next(self._ids), topic, payload, qos, retain))
        return None

    def peek(self, n: int) -> list[SpoolItem]:
        return list(itertools.islice(self._items, n))

    def remove_upto(self, id_: int) -> None:
        items = self._items
        while items and items[0][0] <= id_:
            items.popleft()

    def __len__(self) -> int:
        return len(self._items)

