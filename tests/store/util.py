"""Helpers for the store tests: the in-package flow helpers, plus ``flow`` with an idle source."""

from __future__ import annotations

from typing import Any

from mechaway.testing.flows import IDLE_SOURCE, deploy, edge, got, node, settle, wait_until

__all__ = ["deploy", "edge", "flow", "got", "node", "settle", "wait_until"]


def flow(fid: str, nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> dict[str, Any]:
    """A flow of ``nodes`` behind an idle source (validation wants one)."""
    return {"id": fid, "name": fid, "nodes": [IDLE_SOURCE, *nodes], "edges": edges}
