"""mechaway: an edge/IoT runtime for fast telemetry microflows on single-board computers."""

from __future__ import annotations

__version__ = "0.1.0"
