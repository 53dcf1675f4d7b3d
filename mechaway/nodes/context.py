"""What a node can reach at run time: its identity, the daemon's services, its logger."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from mechaway.logs import BurstLog

if TYPE_CHECKING:
    from mechaway.drivers.base import Connections, Driver

D = TypeVar("D", bound="Driver[Any]")


@dataclass(slots=True)
class Services:
    """Daemon-wide services shared by nodes: driver connections, the store, paths.

    ``drivers`` is the daemon's ``Connections`` (the driver layer); ``connections`` maps a
    kind (``"mqtt"``) to an async getter of a connection by name, for tests with fakes
    (it wins over ``drivers`` for its kinds).
    """

    device_id: str = "mechaway"
    data_dir: Path = field(default_factory=lambda: Path("."))
    store: Any = None
    connections: dict[str, Any] = field(default_factory=dict)
    drivers: Connections | None = None

    @overload
    async def connection(self, kind: type[D], name: str = "default") -> D: ...

    @overload
    async def connection(self, kind: str, name: str = "default") -> Any: ...

    async def connection(self, kind: str | type[D], name: str = "default") -> Any:
        """The started, shared connection ``[kind.name]``: ``connection(SerialDriver,
        "arduino")`` is typed; ``KeyError`` names what is missing."""
        key = kind if isinstance(kind, str) else kind.kind
        getter = self.connections.get(key)
        if getter is not None:
            return await getter(name)
        if self.drivers is None:
            raise KeyError(f"no {key} connections are available")
        return await self.drivers.get(kind, name)


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
