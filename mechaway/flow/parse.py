"""Reading flow documents from JSON or YAML text and files, with located parse errors."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import orjson

from mechaway import files
from mechaway.errors import FlowError, Issue

FLOW_SUFFIXES = (".json", ".yaml", ".yml")

#: a flow file larger than this is refused unread: a flow document is kilobytes, and the
#: whole file is held, parsed and validated at once
MAX_FLOW_FILE_BYTES = 4 * 1024 * 1024

#: Most values a YAML document may expand to, counting a value reached through an alias
#: once per alias. A 1 KB "billion laughs" document (anchors of ten aliases of anchors)
#: otherwise expands to 10^8 values when it is validated: ~1 minute and ~11 GB here.
MAX_YAML_VALUES = 100_000


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

        # libyaml's parser where the wheel has it: ~6x faster and leaner than the pure
        # Python one (a 256 KB flow: 0.6 s against 3.9 s here), and it caps nesting at 1,000
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            doc = yaml.load(text, Loader=loader)  # a safe loader, C or Python
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = " ".join((getattr(err, "problem", None) or str(err)).split())
            raise FlowError([Issue(where, f"invalid YAML: {problem}")], source) from err
        except Exception as err:  # 2024-13-45 as a date; PyYAML's AttributeError on
            # ``!!timestamp nope``; [[[[... too deep for the pure-Python composer
            problem = " ".join(str(err).split()) or type(err).__name__
            raise FlowError([Issue("", f"invalid YAML: {problem}")], source) from err
        _check_expansion(doc, source)
        return doc
    raise ValueError(f"unknown format {fmt!r}")


def _check_expansion(doc: Any, source: str) -> None:
    """Refuse a YAML document whose aliases expand past ``MAX_YAML_VALUES`` values.

    ``safe_load`` shares an aliased value instead of copying it, so loading is cheap; it
    is every later walk (validation, storage, the nodes) that pays for each use. This
    walk counts with memoised sizes, so it costs one visit per distinct value. A value
    that contains itself is left to validation, which names it.
    """
    if not isinstance(doc, (dict, list)):
        return
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(doc, False)]
    while stack:
        value, done = stack.pop()
        key = id(value)
        children = value.values() if isinstance(value, dict) else value
        if done:
            total = 1 + sum(sizes.get(id(c), 1) for c in children)
            if total > MAX_YAML_VALUES:
                raise FlowError(
                    [
                        Issue(
                            "",
                            f"the document expands to more than {MAX_YAML_VALUES:,} values"
                            " (a YAML alias counts once per use)",
                        )
                    ],
                    source,
                )
            sizes[key] = total
        elif key not in sizes:
            sizes[key] = 1  # a value that contains itself counts once, not forever
            stack.append((value, True))
            stack.extend((c, False) for c in children if isinstance(c, (dict, list)))


def format_for(path: Path) -> str:
    """``json`` or ``yaml`` by file suffix."""
    return "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"


def read_capped(path: Path) -> bytes | None:
    """The flow file's bytes, or None when it is larger than ``MAX_FLOW_FILE_BYTES``
    (blocking; a FIFO or directory by that name is an ``OSError``, never a hang)."""
    try:
        return files.read_capped(path, MAX_FLOW_FILE_BYTES)
    except OSError as err:
        if err.errno == errno.EFBIG:
            return None
        raise


def read_file(path: Path) -> Any:
    """Read and decode a flow file; a missing, unreadable or oversized file is a
    ``FlowError`` too."""
    try:
        data = read_capped(path)
    except OSError as err:
        raise FlowError([Issue("", f"cannot read: {err.strerror or err}")], str(path)) from err
    if data is None:
        raise FlowError(
            [Issue("", f"larger than {MAX_FLOW_FILE_BYTES // 1024} KiB, not read")], str(path)
        )
    return parse_text(data, fmt=format_for(path), source=str(path))
