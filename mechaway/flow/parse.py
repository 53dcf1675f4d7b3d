"""Reading flow documents from JSON or YAML text and files, with located parse errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from mechaway.errors import FlowError, Issue

FLOW_SUFFIXES = (".json", ".yaml", ".yml")


def parse_text(text: str | bytes, *, fmt: str = "json", source: str = "") -> Any:
    """Decode a document (``fmt`` json or yaml). Raises ``FlowError`` with line/column."""
    if fmt == "json":
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as err:
            raise FlowError(
                [Issue(f"line {err.lineno} column {err.colno}", f"invalid JSON: {err.msg}")], source
            ) from err
    if fmt == "yaml":
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = " ".join((getattr(err, "problem", None) or str(err)).split())
            raise FlowError([Issue(where, f"invalid YAML: {problem}")], source) from err
        except (ValueError, RecursionError) as err:  # 2024-13-45 as a date; [[[[... too deep
            raise FlowError([Issue("", f"invalid YAML: {err}")], source) from err
    raise ValueError(f"unknown format {fmt!r}")


def format_for(path: Path) -> str:
    """``json`` or ``yaml`` by file suffix."""
    return "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"


def read_file(path: Path) -> Any:
    """Read and decode a flow file; a missing/unreadable file is a ``FlowError`` too."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FlowError([Issue("", f"cannot read: {err.strerror or err}")], str(path)) from err
    return parse_text(data, fmt=format_for(path), source=str(path))
