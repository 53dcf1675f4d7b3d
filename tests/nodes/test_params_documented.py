"""Every param of every node type documents itself: a description, its default and its bounds
are in the JSON Schema that ``mechaway schema``, ``GET /api/v1/schema``, the docs and an
editor's forms read. And node types are typed by their params (``Node[RateLimitParams]``)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest

from mechaway import Node, NodeParams
from mechaway.nodes.registry import (
    load_entry_points,
    node_types,
    origin,
    params_schema,
    register_node,
)


def documented_types() -> dict[str, type[Node]]:
    """Every registered type whose params are code: built-ins, ``mechaway.testing`` and
    entry-point plugins. WASM packs are left out (their schema is a user's manifest: data,
    where a description is optional), as are the throwaway types test files register.
    """
    import mechaway.testing.nodes  # noqa: F401  (registers the test helper types too)

    plugins = {t for report in load_entry_points() for t in report.types}
    return {
        name: cls
        for name, cls in node_types().items()
        if cls.__module__.startswith("mechaway.") or name in plugins
    }


def undocumented(schema: dict[str, Any]) -> list[str]:
    """``Struct.field`` for every property of every struct in the schema without a description
    (nested structs too: a route's rules, a change's rules)."""
    return [
        f"{struct}.{field}"
        for struct, spec in schema.get("$defs", {}).items()
        for field, prop in spec.get("properties", {}).items()
        if not str(prop.get("description", "")).strip()
    ]


def test_every_param_of_every_node_type_has_a_description() -> None:
    types = documented_types()
    assert {"RateLimitNode", "MQTTInNode", "FunLogicNode", "UpstreamNode"} <= set(types)
    missing = {name: holes for name in types if (holes := undocumented(params_schema(name)))}
    assert not missing, (
        "node params without a description (write Annotated[T, msgspec.Meta(description=...)], "
        "with the bounds there too):\n"
        + "\n".join(f"  {name} ({origin(name)}): {', '.join(h)}" for name, h in missing.items())
    )


def test_the_check_finds_an_undocumented_param() -> None:
    class HalfParams(NodeParams):
        said: Annotated[int, msgspec.Meta(description="documented")] = 1
        unsaid: int = 2

    schema = msgspec.json.schema(HalfParams)
    assert undocumented(schema) == ["HalfParams.unsaid"]


def prop(type_name: str, field: str) -> dict[str, Any]:
    schema = params_schema(type_name)
    struct = schema["$ref"].rsplit("/", 1)[1]
    spec: dict[str, Any] = schema["$defs"][struct]["properties"][field]
    return spec


def bounds(spec: dict[str, Any]) -> dict[str, Any]:
    """The bound keywords of a property, an optional one's (``anyOf`` with null) included."""
    keys = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "minItems"}
    out = {k: v for k, v in spec.items() if k in keys}
    for branch in spec.get("anyOf", []):
        out.update({k: v for k, v in branch.items() if k in keys})
    return out


@pytest.mark.parametrize(
    ("type_name", "field", "expected"),
    [
        # the range checks that lived in __post_init__, where no schema could see them
        ("RateLimitNode", "rate", {"exclusiveMinimum": 0}),
        ("RateLimitNode", "per", {"exclusiveMinimum": 0}),
        ("DebounceNode", "quiet", {"exclusiveMinimum": 0}),
        ("WindowNode", "size", {"minimum": 1}),
        ("WindowNode", "seconds", {"exclusiveMinimum": 0}),
        ("DelayNode", "seconds", {"minimum": 0}),
        ("DelayNode", "max_pending", {"minimum": 1}),
        ("InjectNode", "interval", {"exclusiveMinimum": 0}),
        ("InjectNode", "once_delay", {"minimum": 0}),
        ("InjectNode", "repeat", {"minimum": 0}),
        ("LogNode", "keep", {"minimum": 0, "maximum": 1000}),
        ("DeadbandNode", "band", {"minimum": 0}),
        ("DeadbandNode", "percent", {"minimum": 0}),
        ("DeadbandNode", "max_keys", {"minimum": 1}),
        ("RouteNode", "rules", {"minItems": 1}),
        ("KVSetNode", "queue_size", {"minimum": 1}),
        ("KVSetNode", "max_inflight", {"minimum": 1}),
        ("KVSetNode", "ttl", {"exclusiveMinimum": 0}),
        ("KVSetNode", "key", {"minLength": 1}),
        ("KVGetNode", "key", {"minLength": 1}),
        ("StoreNode", "series", {"minLength": 1}),
        ("StoreNode", "max_age_s", {"exclusiveMinimum": 0}),
        ("StoreNode", "max_bytes", {"minimum": 1024}),
        ("VectorStoreNode", "collection", {"minLength": 1}),
        ("VectorStoreNode", "max_vectors", {"minimum": 1}),
        ("VectorQueryNode", "k", {"minimum": 1, "maximum": 1000}),
        ("UpstreamNode", "max_messages", {"minimum": 1}),
        ("UpstreamNode", "max_bytes", {"minimum": 1024}),
        ("FunLogicNode", "wall_time_ms", {"exclusiveMinimum": 0, "maximum": 1000}),
    ],
)
def test_bounds_are_in_the_schema(type_name: str, field: str, expected: dict[str, Any]) -> None:
    assert bounds(prop(type_name, field)) == expected


def test_defaults_and_descriptions_are_in_the_schema() -> None:
    spec = prop("RateLimitNode", "per")
    assert spec["default"] == 1.0
    assert "period" in spec["description"]
    # an optional bounded param carries its description at the property, not in a branch
    assert "description" in prop("InjectNode", "interval")
    # a rule a schema cannot state stays in __post_init__ and its description says so
    assert "set size or seconds" in prop("WindowNode", "size")["description"]


def test_node_types_are_typed_by_their_params() -> None:
    for name, cls in documented_types().items():
        assert issubclass(cls.Params, NodeParams), name
    from mechaway.nodes.timing import RateLimitNode, RateLimitParams

    assert RateLimitNode.Params is RateLimitParams  # taken from Node[RateLimitParams]


def test_params_that_disagree_with_the_type_argument_fail_at_class_creation() -> None:
    class AParams(NodeParams):
        pass

    class BParams(NodeParams):
        pass

    with pytest.raises(TypeError, match="is not a AParams"):

        class Wrong(Node[AParams]):
            Params = BParams

    class Narrower(AParams):
        pass

    class Fine(Node[AParams]):
        Params = Narrower  # a subclass of the type argument is consistent

    assert Fine.Params is Narrower


def test_an_undocumented_plugin_type_would_be_reported() -> None:
    class BareParams(NodeParams):
        gain: float = 1.0

    @register_node("UndocumentedProbeNode")
    class Probe(Node[BareParams]):
        """Registered only for this test."""

    from mechaway.nodes.registry import unregister_node

    try:
        assert undocumented(params_schema("UndocumentedProbeNode")) == ["BareParams.gain"]
    finally:
        unregister_node("UndocumentedProbeNode")
