"""HTTP client connections (aiohttp, imported when a connection starts): one pooled
session per ``[http.NAME]`` section (``default`` needs none), shared by the
``HTTPRequestNode``s naming it."""

from mechaway.drivers.http.driver import (
    HttpDriver,
    HttpResponse,
    HttpSettings,
    RequestFailed,
    Retry,
)

__all__ = ["HttpDriver", "HttpResponse", "HttpSettings", "RequestFailed", "Retry"]
