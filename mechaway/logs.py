"""Logging that an SD card survives: one line per burst of similar events, not one per event.

Every "log once per burst" in mechaway is one of these two.
"""

from __future__ import annotations

import logging
import time
from typing import Any


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


class OncePerKey:
    """Log each kind of condition (a key) once until ``reset()`` (a connection that became
    stable again): the conditions of a burst each get one line, the repeats none."""

    __slots__ = ("_logger", "seen")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self.seen: set[str] = set()

    def warning(self, key: str, text: str, *args: Any) -> bool:
        """Log ``text`` if ``key`` was not logged in this burst; True if it was logged."""
        if key in self.seen:
            return False
        self.seen.add(key)
        self._logger.warning(text, *args)
        return True

    def reset(self) -> None:
        self.seen.clear()
