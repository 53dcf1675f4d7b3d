"""A test source for the crash test, loaded into the real daemon: ``AckFeedNode``.

It plays the part of an MQTT QoS 1 subscription: a producer sends numbered lines over
TCP (``"17\\n"``, or ``"17 dup\\n"`` for a retry), each becomes a message emitted into the
flow with ``emit_collecting``, and the producer gets ``"ack 17\\n"`` only once every outbox
append the message caused is durable (``"nak 17\\n"`` if one was refused).

Run the daemon with it: ``python tests/store/crash_feed.py start --flows ...`` (the
regular CLI, after this module registered the node type).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable
from typing import Any, ClassVar

from mechaway.nodes.base import NodeParams, SourceNode, emit_collecting
from mechaway.nodes.registry import register_node

Receipts = list[Awaitable[Any]]


class AckFeedParams(NodeParams):
    port: int


@register_node("AckFeedNode")
class AckFeedNode(SourceNode):
    """Numbered messages from TCP lines; acknowledged only once durable."""

    Params = AckFeedParams
    ports: ClassVar[tuple[str, ...]] = ("out",)

    def __init__(self, node_id: str, params: Any, ctx: Any) -> None:
        super().__init__(node_id, params, ctx)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.params.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        acks: asyncio.Queue[tuple[int, Receipts]] = asyncio.Queue()
        acker = asyncio.get_running_loop().create_task(self._acker(acks, writer))
        try:
            while line := await reader.readline():
                text, _, flag = line.decode().strip().partition(" ")
                n = int(text)
                await self.room()
                msg = {"payload": n, "topic": "crash", "ts": time.time(), "dup": flag == "dup"}
                r = emit_collecting(self.emit, msg)
                acks.put_nowait((n, r))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            acker.cancel()
            with contextlib.suppress(BaseException):
                await acker
            writer.close()
            self._tasks.discard(task)

    async def _acker(
        self, acks: asyncio.Queue[tuple[int, Receipts]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            n, r = await acks.get()
            try:
                ok = len(r) == 1 and all(await asyncio.gather(*r))
            except Exception:
                ok = False
            writer.write(f"{'ack' if ok else 'nak'} {n}\n".encode())
            if acks.empty():
                await writer.drain()


if __name__ == "__main__":
    from mechaway.cli import main

    sys.exit(main())
