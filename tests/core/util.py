"""Helpers shared by the core tests (the in-package ones, under the names these tests use)."""

from __future__ import annotations

from mechaway.testing.flows import (
    IDLE_SOURCE,
    deploy,
    doc,
    edge,
    got,
    node,
    payloads,
    settle,
    single,
    stats,
    wait_until,
)

__all__ = [
    "IDLE_SOURCE",
    "deploy",
    "doc",
    "edge",
    "got",
    "node",
    "payloads",
    "settle",
    "single",
    "stats",
    "wait_until",
]
