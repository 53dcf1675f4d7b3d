"""WebSocket client connections (aiohttp, imported when a connection starts): one per
``[websocket.NAME]`` section, kept up by the driver layer's Supervisor and shared by the
``WebSocketInNode``s and ``WebSocketOutNode``s naming it."""

from mechaway.drivers.websocket.driver import Handler, WebSocketDriver, WebSocketSettings

__all__ = ["Handler", "WebSocketDriver", "WebSocketSettings"]
