"""MQTT topic rules: filters, matching, the checks on what may be published, and whether
a publish topic (or a template of one) can come back through a subscription."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "bad_topic",
    "check_filter",
    "check_topic",
    "strip_share",
    "template_may_match",
    "topic_matches",
]


def strip_share(topic_filter: str) -> str:
    """The filter without its ``$share/<group>/`` prefix (what messages are routed by)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter


def check_filter(topic_filter: str) -> str:
    """The routing filter of a valid topic filter; ValueError names what is wrong."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) != 3 or not parts[1] or "+" in parts[1] or "#" in parts[1]:
            raise ValueError(f"bad shared subscription {topic_filter!r}: $share/<group>/<filter>")
    inner = strip_share(topic_filter)
    if not inner or "\0" in inner:
        raise ValueError(f"empty or invalid topic filter {topic_filter!r}")
    levels = inner.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"bad topic filter {topic_filter!r}: '#' must be a whole last level")
        if "+" in level and level != "+":
            raise ValueError(f"bad topic filter {topic_filter!r}: '+' must be a whole level")
    return inner


def check_topic(topic: str) -> None:
    """ValueError for a topic no one may publish to."""
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"bad topic to publish {topic!r}: empty or has a wildcard")
    if len(topic.encode("utf-8", "replace")) > 0xFFFF:
        raise ValueError(f"topic to publish too long ({topic[:40]!r}...): over 65535 bytes")


def bad_topic(topic: str) -> bool:
    """A topic no broker may send: wildcards or NUL (empty ones never get this far)."""
    return "+" in topic or "#" in topic or "\0" in topic


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching: ``+`` one level, ``#`` this level and below; ``$`` topics skip wildcards."""
    flt = strip_share(topic_filter).split("/")
    parts = topic.split("/")
    if topic.startswith("$") and flt[0] in ("+", "#"):
        return False
    for i, level in enumerate(flt):
        if level == "#":
            return True
        if i >= len(parts) or (level != "+" and level != parts[i]):
            return False
    return len(flt) == len(parts)


# ---------------------------------------------------------------------------------------
# Can a templated topic match a filter?
# ---------------------------------------------------------------------------------------
#: pattern tokens: a character, ANY (any text, ``/`` included), LEVEL (any text but ``/``)
_ANY = "\x00any"
_LEVEL = "\x00level"
_OTHER = "\x01"  # stands for every character no pattern names


def template_may_match(parts: Sequence[str | None], topic_filter: str) -> bool:
    """Whether some topic rendered from ``parts`` matches ``topic_filter``.

    ``parts``: the template's literal text and its fields in order, None for a field
    (``"site/{payload.room}/t"`` is ``["site/", None, "/t"]``); a field renders to any
    text, ``/`` included. Decided exactly: both sides are small automata over characters
    and the answer is whether their product reaches both ends together.
    """
    tpl: list[str] = []
    for part in parts:
        if part is None:
            tpl.append(_ANY)
        else:
            tpl.extend(part)
    inner = strip_share(topic_filter)
    if inner[:1] in ("+", "#") and tpl[:1] == ["$"]:
        return False  # wildcards at the first level never match $ topics
    alternatives: list[list[str]] = []
    levels = inner.split("/")
    if levels[-1] == "#":
        # "a/#" matches "a" and everything below "a/"; "#" matches everything
        head = "/".join(levels[:-1])
        if head:
            alternatives.append(_filter_tokens(head))
            alternatives.append([*_filter_tokens(head), "/", _ANY])
        else:
            alternatives.append([_ANY])
    else:
        alternatives.append(_filter_tokens(inner))
    return any(_intersects(tpl, flt) for flt in alternatives)


def _filter_tokens(flt: str) -> list[str]:
    out: list[str] = []
    for i, level in enumerate(flt.split("/")):
        if i:
            out.append("/")
        if level == "+":
            out.append(_LEVEL)
        else:
            out.extend(level)
    return out


def _closure(pattern: list[str], states: set[int]) -> set[int]:
    """Wildcards may match nothing: a state on one also stands after it."""
    todo = list(states)
    seen = set(states)
    while todo:
        k = todo.pop()
        if k < len(pattern) and pattern[k] in (_ANY, _LEVEL) and k + 1 not in seen:
            seen.add(k + 1)
            todo.append(k + 1)
    return seen


def _step(pattern: list[str], k: int, ch: str) -> list[int]:
    if k >= len(pattern):
        return []
    tok = pattern[k]
    if tok == _ANY or (tok == _LEVEL and ch != "/"):
        return [k]
    return [k + 1] if tok == ch else []


def _intersects(a: list[str], b: list[str]) -> bool:
    alphabet = {c for c in (*a, *b) if c not in (_ANY, _LEVEL)} | {"/", _OTHER}
    start = [(i, j) for i in _closure(a, {0}) for j in _closure(b, {0})]
    seen = set(start)
    todo = list(start)
    while todo:
        i, j = todo.pop()
        if i == len(a) and j == len(b):
            return True
        for ch in alphabet:
            for ni in _closure(a, set(_step(a, i, ch))):
                for nj in _closure(b, set(_step(b, j, ch))):
                    if (ni, nj) not in seen:
                        seen.add((ni, nj))
                        todo.append((ni, nj))
    return False
