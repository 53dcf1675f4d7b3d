"""One exception root for everything mechaway raises on purpose.

Library errors are re-raised at the driver boundary as one of these, with
``raise ... from err`` so the cause stays visible in logs.
"""

from __future__ import annotations

from dataclasses import dataclass


class MechawayError(Exception):
    """Root of every error mechaway raises deliberately."""


class ConfigError(MechawayError):
    """The daemon configuration (TOML file or environment) is invalid."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One located problem in a document: ``where`` is a dotted path, ``message`` the why."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class FlowError(MechawayError):
    """A flow document is invalid; carries every located issue found."""

    def __init__(self, issues: list[Issue], source: str = "") -> None:
        self.issues = issues
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(f"{prefix}{issue}" for issue in self.issues)


class NodeError(MechawayError):
    """A node failed to process a message (raised inside a node, counted by the engine)."""


class NotConnected(MechawayError):
    """A driver was asked to do I/O while its connection is down."""


class SandboxError(NodeError):
    """User logic (Lua, WASM) broke a sandbox limit or failed."""


class LimitExceeded(SandboxError):
    """User logic ran past its instruction/fuel budget, wall time or memory cap."""


class StoreError(MechawayError):
    """The SQLite store could not be opened or written."""


class StoreUnavailable(StoreError):
    """The file could not be written (disk full, I/O error, read-only): nothing of the
    write was stored, and the same write may succeed later. ``reason``: "disk full", ..."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


#: longest error text kept in status, logs and error messages: a node that puts a whole
#: (outside) value into its exception must not put 100 KB into every status call
MAX_ERROR_TEXT = 500


def error_text(exc: BaseException) -> str:
    """``str(exc)``, cut to ``MAX_ERROR_TEXT`` characters."""
    text = str(exc)
    if len(text) > MAX_ERROR_TEXT:
        text = f"{text[: MAX_ERROR_TEXT - 30]}... ({len(text)} characters)"
    return text


def split_validation(err: Exception) -> tuple[str, str]:
    """A msgspec ``ValidationError`` as (path, what): ``("api.port", "Expected `int`, got
    `str`")``, ``unknown key`` for an unknown field; the path is ``""`` at the top. The one
    place that reads msgspec's `` - at `$.a.b` `` suffix."""
    text = str(err).replace("Object contains unknown field", "unknown key")
    head, _, path = text.partition(" - at `$")
    return path.rstrip("`").lstrip("."), head


def located(err: Exception, where: str = "") -> str:
    """A msgspec ``ValidationError`` as ``where.key.path: what``."""
    key, head = split_validation(err)
    # an index at the top joins without a dot: ``nodes[0]``, not ``nodes.[0]``
    full = f"{where}.{key}" if where and key and not key.startswith("[") else f"{where}{key}"
    return f"{full}: {head}" if full else head
