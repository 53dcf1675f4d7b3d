"""What a node can reach at run time: its identity, the daemon's services, its logger."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Services:
    """Daemon-wide services shared by nodes: drivers by connection name, the store, paths.

    ``connections`` maps a kind (``"mqtt"``) to an async getter taking the connection
    name and returning the started, shared driver; the daemon fills it. Tests build one
    with fakes.
    """

    device_id: str = "mechaway"
    data_dir: Path = field(default_factory=lambda: Path("."))
    store: Any = None
    connections: dict[str, Any] = field(default_factory=dict)

    async def connection(self, kind: str, name: str) -> Any:
        """The shared driver for ``[kind.name]``; raises ``KeyError`` naming what is missing."""
        getter = self.connections.get(kind)
        if getter is None:
            raise KeyError(f"no {kind} connections are available")
        return await getter(name)


class BurstLog:
    """Log the first of a burst of similar events, then a count at most every ``window_s``."""

    __slots__ = ("_logger", "_suppressed", "_until", "window_s")

    def __init__(self, logger: logging.Logger, window_s: float = 10.0) -> None:
        self._logger = logger
        self.window_s = window_s
        self._until = 0.0
        self._suppressed = 0

    def warning(self, text: str, *args: Any) -> None:
        """Log ``text`` unless inside the current burst window (then count it)."""
        t = time.monotonic()
        if t < self._until:
            self._suppressed += 1
            return
        if self._suppressed:
            self._logger.warning("(%d similar messages suppressed)", self._suppressed)
            self._suppressed = 0
        self._until = t + self.window_s
        self._logger.warning(text, *args)


@dataclass(slots=True)
class NodeContext:
    """Per-node handle on the outside world."""

    flow_id: str
    node_id: str
    services: Services
    log: logging.Logger = field(init=False)
    burst: BurstLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = logging.getLogger(f"mechaway.flow.{self.flow_id}.{self.node_id}")
        self.burst = BurstLog(self.log)
