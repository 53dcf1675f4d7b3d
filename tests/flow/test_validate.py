"""Flow validation: every located error kind, parse errors with lines, hypothesis fuzzing,
and the JSON Schema every node type exports."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechaway.errors import FlowError, Issue
from mechaway.flow.diff import diff
from mechaway.flow.parse import parse_text, read_file
from mechaway.flow.validate import ValidFlow, find_cycle, validate
from mechaway.nodes.context import NodeContext, Services
from mechaway.nodes.registry import node_types, params_schema
from mechaway.testing.flows import IDLE_SOURCE, doc, edge, laughs, node


def issues_of(raw: Any, source: str = "") -> list[Issue]:
    with pytest.raises(FlowError) as exc:
        validate(raw, source=source)
    assert exc.value.issues, "a FlowError must carry at least one issue"
    return exc.value.issues


def rendered(raw: Any, source: str = "") -> list[str]:
    """The lines the CLI prints (``source: where: message``)."""
    with pytest.raises(FlowError) as exc:
        validate(raw, source=source)
    return exc.value.render().splitlines()


def ok_flow() -> dict[str, Any]:
    return doc(
        "gh",
        [
            node("t", "InjectNode", interval=1.0),
            node("hot", "FilterNode", op="gt", value=30),
            node("log", "LogNode"),
        ],
        [edge("t", "hot"), edge("hot", "log")],
    )


def test_a_good_flow_validates() -> None:
    v = validate(ok_flow())
    assert isinstance(v, ValidFlow)
    assert v.id == "gh"
    assert v.routes == {("t", "out"): ["hot"], ("hot", "out"): ["log"]}
    assert v.nodes["t"].params.interval == 1.0


# -- located errors, one kind at a time -------------------------------------------------------
def test_unknown_node_type() -> None:
    raw = ok_flow()
    raw["nodes"][1]["type"] = "FilterNod"
    (msg,) = rendered(raw, "flows/gh.json")
    assert msg.startswith("flows/gh.json: nodes[1] (hot).type: unknown node type 'FilterNod'")
    assert "FilterNode" in msg  # lists the known types


def test_wrong_param_type() -> None:
    raw = ok_flow()
    raw["nodes"][0]["params"]["interval"] = "fast"
    assert rendered(raw) == ["nodes[0] (t).params.interval: expected `float | null`, got `str`"]


def test_wrong_param_type_nested() -> None:
    raw = ok_flow()
    raw["nodes"][1] = node("hot", "RouteNode", rules=[{"op": "gt", "value": 1, "port": 7}])
    raw["edges"] = [edge("t", "hot")]
    assert rendered(raw) == ["nodes[1] (hot).params.rules[0].port: expected `str`, got `int`"]


def test_invalid_enum_value() -> None:
    raw = ok_flow()
    raw["nodes"][2]["params"] = {"level": "loud"}
    (msg,) = rendered(raw)
    assert msg.startswith("nodes[2] (log).params.level: invalid value 'loud'")


def test_missing_required_param() -> None:
    raw = ok_flow()
    raw["nodes"][1] = node("hot", "DebounceNode")
    assert rendered(raw) == ["nodes[1] (hot).params: missing required key `quiet`"]


def test_unknown_param_key() -> None:
    raw = ok_flow()
    raw["nodes"][0]["params"]["intervall"] = 2
    assert rendered(raw) == ["nodes[0] (t).params: unknown key `intervall`"]


def test_params_value_check() -> None:
    raw = ok_flow()
    raw["nodes"][0]["params"] = {"interval": -1}
    assert rendered(raw) == ["nodes[0] (t).params.interval: expected `float` > 0.0"]


def test_duplicate_node_ids() -> None:
    raw = ok_flow()
    raw["nodes"].append(node("hot", "LogNode"))
    assert rendered(raw) == ["nodes[3].id: duplicate node id 'hot'"]


def test_invalid_ids() -> None:
    raw = ok_flow()
    raw["id"] = "has space"
    raw["nodes"][2]["id"] = ""
    raw["edges"] = [edge("t", "hot")]
    msgs = rendered(raw)
    assert "id: 'has space' is not a valid id (1-64 of A-Z a-z 0-9 _ . : -)" in msgs
    assert "nodes[2].id: '' is not a valid node id" in msgs


def test_edges_to_missing_nodes() -> None:
    raw = ok_flow()
    raw["edges"].append(edge("ghost", "log"))
    raw["edges"].append(edge("hot", "nowhere"))
    assert rendered(raw) == [
        "edges[2] (ghost -> log).from: no node with id 'ghost'",
        "edges[3] (hot -> nowhere).to: no node with id 'nowhere'",
    ]


def test_edges_from_missing_ports() -> None:
    raw = ok_flow()
    raw["edges"].append(edge("hot", "log", "high"))
    assert rendered(raw) == [
        "edges[2] (hot -> log).port: node 'hot' has no port 'high' (has: out, error)"
    ]


def test_error_port_is_always_allowed() -> None:
    raw = ok_flow()
    raw["nodes"].append(node("errs", "LogNode"))
    raw["edges"].append(edge("hot", "errs", "error"))
    validate(raw)


def test_edge_into_a_source() -> None:
    raw = ok_flow()
    raw["nodes"].append(node("t2", "InjectNode", once=True))
    raw["edges"].append(edge("log", "t2"))
    assert rendered(raw) == [
        "edges[2] (log -> t2).to: 't2' is a source (InjectNode) and takes no input"
    ]


def test_duplicate_edge() -> None:
    raw = ok_flow()
    raw["edges"].append(edge("t", "hot"))
    assert rendered(raw) == ["edges[2] (t -> hot): duplicate edge"]


def test_cycle_names_the_nodes_on_it() -> None:
    raw = doc(
        "c",
        [
            IDLE_SOURCE,
            node("a", "PassNode"),
            node("b", "PassNode"),
            node("c", "PassNode"),
            node("d", "LogNode"),
        ],
        [edge("src", "a"), edge("a", "b"), edge("b", "c"), edge("c", "a"), edge("c", "d")],
    )
    assert rendered(raw) == ["edges: cycle: a -> b -> c -> a"]


def test_self_loop_and_error_port_cycle() -> None:
    raw = doc("c", [IDLE_SOURCE, node("a", "PassNode")], [edge("src", "a"), edge("a", "a")])
    assert rendered(raw) == ["edges: cycle: a -> a"]
    raw = doc(
        "c",
        [IDLE_SOURCE, node("a", "PassNode"), node("b", "PassNode")],
        [edge("src", "a"), edge("a", "b"), edge("b", "a", "error")],
    )
    assert rendered(raw) == ["edges: cycle: a -> b -> a"]


def test_find_cycle_acyclic_diamond() -> None:
    routes = {("s", "out"): ["a", "b"], ("a", "out"): ["c"], ("b", "out"): ["c"]}
    assert find_cycle(["s", "a", "b", "c"], routes) == []


def test_no_source() -> None:
    raw = doc("n", [node("a", "PassNode"), node("b", "LogNode")], [edge("a", "b")])
    assert rendered(raw) == ["nodes: the flow has no source node (nothing would ever run)"]


def test_no_nodes() -> None:
    assert rendered({"id": "e", "nodes": []}) == ["nodes: the flow has no nodes"]


def test_every_issue_is_reported_at_once() -> None:
    raw = doc(
        "m",
        [
            node("t", "InjectNode"),
            node("x", "Nope"),
            node("t", "LogNode"),
            node("l", "LogNode", keep="3"),
        ],
        [edge("t", "zz"), edge("l", "l")],
    )
    wheres = [i.where for i in issues_of(raw)]
    assert wheres == [
        "nodes[0] (t).params",
        "nodes[1] (x).type",
        "nodes[2].id",
        "nodes[3] (l).params.keep",
        "edges[0] (t -> zz).to",
        "edges",
    ]


@pytest.mark.parametrize(
    ("raw", "where", "needle"),
    [
        ([], "", "a flow document must be an object, got list"),
        ("flow", "", "got str"),
        (None, "", "got NoneType"),
        ({"nodes": []}, "", "missing required key `id`"),
        ({"id": "x", "nodes": [], "colour": 1}, "", "unknown key `colour`"),
        ({"id": 5, "nodes": []}, "id", "expected `str`, got `int`"),
        ({"id": "x", "nodes": {}}, "nodes", "expected `array`, got `object`"),
        ({"id": "x", "nodes": [{"id": "a"}]}, "nodes[0]", "missing required key `type`"),
        (
            {"id": "x", "nodes": [{"id": "a", "type": "LogNode", "params": []}]},
            "nodes[0].params",
            "expected `object`, got `array`",
        ),
        (
            {"id": "x", "nodes": [IDLE_SOURCE], "edges": [{"from": "src"}]},
            "edges[0]",
            "missing required key `to`",
        ),
        (
            {"id": "x", "nodes": [IDLE_SOURCE], "edges": [{"from": "src", "to": "src", "via": 1}]},
            "edges[0]",
            "unknown key `via`",
        ),
    ],
)
def test_document_shape_errors(raw: Any, where: str, needle: str) -> None:
    (issue,) = issues_of(raw, "api")
    assert issue.where == where
    assert needle in issue.message


def test_source_prefixes_every_line() -> None:
    raw = ok_flow()
    raw["nodes"][0]["type"] = "X"
    raw["nodes"][1]["params"] = {}
    with pytest.raises(FlowError) as exc:
        validate(raw, source="flows/gh.json")
    lines = exc.value.render().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("flows/gh.json: nodes[") for line in lines)


def test_params_must_be_json_compatible() -> None:
    raw = ok_flow()
    raw["nodes"][0]["params"] = {"once": True, "payload": 2**70}
    (issue,) = issues_of(raw)
    assert issue.where == "nodes[0] (t).params"
    assert "not JSON-compatible" in issue.message
    raw["nodes"][0]["params"] = {"once": True, "payload": {1: "int key from YAML"}}
    assert issues_of(raw)[0].where == "nodes[0] (t).params"


def test_path_with_unicode_digits_is_a_key_not_an_index() -> None:
    # "²".isdigit() is True; the path splitter must not try int("²") (it used to crash)
    raw = doc(
        "u",
        [IDLE_SOURCE, node("c", "ChangeNode", rules=[{"op": "delete", "path": "payload.²"}])],
        [edge("src", "c")],
    )
    validate(raw)
    raw["nodes"][1]["params"]["rules"][0]["path"] = "payload.--1"
    validate(raw)


# -- parse: JSON and YAML with line numbers ---------------------------------------------------
def test_bad_json_has_line_and_column() -> None:
    text = '{\n  "id": "x",\n  "nodes": [\n    {"id": "a",}\n  ]\n}\n'
    with pytest.raises(FlowError) as exc:
        parse_text(text, fmt="json", source="flows/x.json")
    (issue,) = exc.value.issues
    assert issue.where.startswith("line 4 column ")
    assert issue.message.startswith("invalid JSON")
    assert str(exc.value).startswith("flows/x.json: line 4 column ")


def test_bad_yaml_has_line_and_column() -> None:
    text = "id: x\nnodes:\n  - id: a\n    type: [LogNode\n  - id: b\n"
    with pytest.raises(FlowError) as exc:
        parse_text(text, fmt="yaml", source="flows/x.yaml")
    (issue,) = exc.value.issues
    assert issue.where.startswith("line 5 column ")
    assert issue.message.startswith("invalid YAML")


@pytest.mark.parametrize(
    "text",
    [
        "a: 2024-13-45",  # looks like a date, is not one: yaml raises ValueError
        "[" * 3000,  # too deep for the YAML composer (RecursionError)
        "\x00",  # reader error: no line mark, message must stay on one line
        "a: !!python/object:os.system x",
    ],
)
def test_hostile_yaml_is_a_flow_error(text: str) -> None:
    with pytest.raises(FlowError) as exc:
        parse_text(text, fmt="yaml")
    assert "invalid YAML" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_self_referencing_yaml_is_rejected_by_validate() -> None:
    raw = parse_text(
        "id: f\nnodes:\n  - &n {id: a, type: InjectNode, params: {once: true, payload: [*n]}}\n",
        fmt="yaml",
    )
    (issue,) = issues_of(raw)
    assert issue.where == "nodes[0] (a).params"


def test_a_yaml_alias_bomb_is_refused_before_anything_walks_it() -> None:
    # 10^8 leaves from ~1 KB: validating it took ~1 minute and ~11 GB before the check
    with pytest.raises(FlowError) as exc:
        parse_text(laughs(8), fmt="yaml", source="flows/bomb.yaml")
    assert str(exc.value) == (
        "flows/bomb.yaml: the document expands to more than 100,000 values"
        " (a YAML alias counts once per use)"
    )


def test_yaml_anchors_within_the_bound_are_fine() -> None:
    # 10^4 leaves through aliases, and one anchor reused by two nodes' params
    raw = parse_text(laughs(4), fmt="yaml")
    assert len(orjson.dumps(validate(raw).nodes["a"].params.payload)) > 40_000
    raw = parse_text(
        "id: f\nnodes:\n  - {id: a, type: InjectNode, params: &p {interval: 5}}\n"
        "  - {id: c, type: InjectNode, params: *p}\n  - {id: b, type: LogNode}\n"
        "edges:\n  - {from: a, to: b}\n  - {from: c, to: b}\n",
        fmt="yaml",
    )
    v = validate(raw)
    assert v.nodes["a"].params == v.nodes["c"].params


def test_read_file_json_and_yaml_are_equivalent(tmp_path: Path) -> None:
    j = tmp_path / "gh.json"
    y = tmp_path / "gh.yml"
    j.write_bytes(orjson.dumps(ok_flow()))
    y.write_text(
        "id: gh\nname: test gh\nnodes:\n"
        "  - {id: t, type: InjectNode, params: {interval: 1.0}}\n"
        "  - {id: hot, type: FilterNode, params: {op: gt, value: 30}}\n"
        "  - {id: log, type: LogNode, params: {}}\n"
        "edges:\n  - {from: t, to: hot}\n  - {from: hot, to: log}\n"
    )
    assert validate(read_file(j)).doc == validate(read_file(y)).doc


def test_read_file_missing_is_a_flow_error(tmp_path: Path) -> None:
    with pytest.raises(FlowError) as exc:
        read_file(tmp_path / "nope.json")
    assert str(exc.value) == f"{tmp_path / 'nope.json'}: cannot read: No such file or directory"


# -- hypothesis: nothing but FlowError ever escapes -------------------------------------------
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSONISH = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=25,
)


def check_validate(raw: Any, *, again: bool = True) -> bool:
    """``validate`` returns a ValidFlow or raises FlowError with located issues. A valid flow
    can be diffed, stored (canonical JSON) and validated again from its stored form, and
    every one of its nodes can be built (what the engine does first at deploy)."""
    try:
        v = validate(raw)
    except FlowError as err:
        assert err.issues
        for issue in err.issues:
            assert isinstance(issue.where, str)
            assert isinstance(issue.message, str)
            assert issue.message
        return False
    assert isinstance(v, ValidFlow)
    diff(v.doc, v.doc)  # node keys are canonical JSON
    for vn in v.nodes.values():
        vn.cls(vn.id, vn.params, NodeContext(v.id, vn.id, Services()))
    if again:
        stored = orjson.loads(orjson.dumps(v.doc.to_builtins(), option=orjson.OPT_SORT_KEYS))
        assert check_validate(stored, again=False)
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSONISH)
def test_arbitrary_json_never_raises_anything_but_flow_error(raw: Any) -> None:
    check_validate(raw)


def _type_names() -> list[str]:
    return [*node_types(), "Nope", "", "injectnode"]


def _param_keys() -> list[str]:
    keys: set[str] = {"bogus"}
    for cls in node_types().values():
        keys.update(f.encode_name for f in msgspec.structs.fields(cls.Params))
    return sorted(keys)


IDS = st.sampled_from(["a", "b", "c", "src", "x y", "", "ä"])
COND = st.fixed_dictionaries(
    {"op": st.sampled_from(["eq", "gt", "between", "regex", "contains", "else", "bad"])},
    optional={
        "value": SCALARS | st.sampled_from(["a{99999999999}", "(" * 500, "[", ".*"]),
        "value2": SCALARS,
        "property": st.sampled_from(["payload", "payload.x[0]", "a.²", "--1", ""]),
        "port": st.sampled_from(["out", "hot", "error", ""]),
    },
)
PLAUSIBLE_VALUE = (
    JSONISH
    | st.lists(COND, max_size=3)
    | st.lists(
        st.fixed_dictionaries(
            {
                "op": st.sampled_from(["set", "delete", "move"]),
                "path": st.sampled_from(["payload.a", "", "x[1]", "²", "a..b"]),
            },
            optional={"from": st.sampled_from(["payload", "", "q"]), "value": SCALARS},
        ),
        max_size=3,
    )
    | st.sampled_from(
        ["* * * * *", "bad cron", "{id=$.id}", "{a=$.x[?(@.v > 1)]}", "{a=$.[}", "mean", "all"]
    )
)


@st.composite
def flowish(draw: st.DrawFn) -> dict[str, Any]:
    keys = _param_keys()
    nodes = []
    for _ in range(draw(st.integers(0, 5))):
        params = draw(st.dictionaries(st.sampled_from(keys), PLAUSIBLE_VALUE, max_size=4))
        if draw(st.booleans()):
            params.update(draw(COND))
        nodes.append(
            {"id": draw(IDS), "type": draw(st.sampled_from(_type_names())), "params": params}
        )
    edges = [
        {"from": draw(IDS), "to": draw(IDS), "port": draw(st.sampled_from(["out", "error", "hot"]))}
        for _ in range(draw(st.integers(0, 5)))
    ]
    out: dict[str, Any] = {
        "id": draw(st.sampled_from(["f", "flow-1", "", "a b"])),
        "nodes": nodes,
        "edges": edges,
    }
    if draw(st.booleans()):
        out["name"] = draw(SCALARS)
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flowish())
def test_flowish_documents_never_raise_anything_but_flow_error(raw: dict[str, Any]) -> None:
    check_validate(raw)


#: one known-good params dict per built-in type (the starting point for mutations)
GOOD: dict[str, list[dict[str, Any]]] = {
    "InjectNode": [{"interval": 5}, {"once": True, "payload": {"a": 1}}, {"cron": "*/5 * * * *"}],
    "JSONTransformNode": [{"map": "{id=$.id, s=$.v[?(@.ok == true)].x}"}, {"map": {"a": "1"}}],
    "RouteNode": [
        {"rules": [{"op": "gt", "value": 1, "port": "hi"}, {"op": "else", "port": "lo"}]}
    ],
    "ChangeNode": [{"rules": [{"op": "move", "path": "payload.a[0]", "from": "payload.b"}]}],
    "FilterNode": [{"op": "regex", "value": "^a", "property": "topic"}, {"op": "exists"}],
    "DeadbandNode": [{"band": 0.5}, {"percent": 5, "key": "none"}],
    "RateLimitNode": [{"rate": 2, "per": 0.5}],
    "DebounceNode": [{"quiet": 1}],
    "WindowNode": [{"size": 3, "op": "max"}, {"seconds": 2, "op": "count"}],
    "DelayNode": [{"seconds": 0.5, "overflow": "drop_oldest"}],
    "LogNode": [{}, {"property": "", "level": "debug"}],
}
PORTS = ["out", "error", "hi", "lo"]


@st.composite
def damaged_flows(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 5))
    nodes: list[dict[str, Any]] = [{"id": "s0", "type": "InjectNode", "params": {"once": True}}]
    for i in range(n):
        t = draw(st.sampled_from(sorted(GOOD)))
        params = dict(draw(st.sampled_from(GOOD[t])))
        damage = draw(st.integers(0, 5))
        if damage == 1 and params:  # drop a key
            params.pop(draw(st.sampled_from(sorted(params))))
        elif damage == 2 and params:  # replace a value
            params[draw(st.sampled_from(sorted(params)))] = draw(PLAUSIBLE_VALUE)
        elif damage == 3:  # add a key (known to some other type, or not)
            params[draw(st.sampled_from(_param_keys()))] = draw(PLAUSIBLE_VALUE)
        nodes.append({"id": f"n{i}", "type": t, "params": params})
    ids = [x["id"] for x in nodes]
    edges = [
        {
            "from": draw(st.sampled_from(ids)),
            "to": draw(st.sampled_from(ids[1:])),
            "port": draw(st.sampled_from(PORTS)),
        }
        for _ in range(draw(st.integers(0, 6)))
    ]
    return {"id": "damaged", "nodes": nodes, "edges": edges}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_flows())
def test_damaged_good_flows_never_raise_anything_but_flow_error(raw: dict[str, Any]) -> None:
    check_validate(raw)


def test_the_good_specs_are_good() -> None:
    """The mutation strategy starts from valid params, so it explores the valid side too."""
    for t, variants in GOOD.items():
        for params in variants:
            raw = {
                "id": "g",
                "nodes": [
                    {"id": "s0", "type": "InjectNode", "params": {"once": True}},
                    {"id": "x", "type": t, "params": params},
                ],
            }
            assert check_validate(raw), (t, params)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=100), st.sampled_from(["json", "yaml"]))
def test_parse_text_never_raises_anything_but_flow_error(text: str | bytes, fmt: str) -> None:
    try:
        raw = parse_text(text, fmt=fmt)
    except FlowError as err:
        assert err.issues
        return
    check_validate(raw)


def test_a_nan_param_is_a_located_error_not_a_crash() -> None:
    raw = ok_flow()
    raw["nodes"][1]["params"]["value"] = math.nan
    with pytest.raises(FlowError, match=r"nodes\[1\] \(\w+\)\.params: not JSON-compatible"):
        validate(raw)


# -- JSON Schema of every node type -----------------------------------------------------------
def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    assert ref.startswith("#/$defs/"), ref
    target: dict[str, Any] = root["$defs"][ref.removeprefix("#/$defs/")]
    return target


def _refs(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [
            *([obj["$ref"]] if "$ref" in obj else []),
            *(r for v in obj.values() for r in _refs(v)),
        ]
    if isinstance(obj, list):
        return [r for v in obj for r in _refs(v)]
    return []


@pytest.mark.parametrize("name", list(node_types()))
def test_params_schema_is_json_schema(name: str) -> None:
    schema = params_schema(name)
    orjson.dumps(schema)  # serialisable as is
    assert schema["title"] == name
    assert isinstance(schema.get("description"), str)
    body = _resolve(schema, schema)
    assert body["type"] == "object"
    assert isinstance(body["properties"], dict)
    assert body.get("additionalProperties") is False  # unknown keys are errors
    fields = msgspec.structs.fields(node_types()[name].Params)
    assert set(body["properties"]) == {f.encode_name for f in fields}
    required = {f.encode_name for f in fields if f.required}
    assert set(body.get("required", [])) == required
    for ref in _refs(schema):  # every reference resolves inside the document
        assert ref.removeprefix("#/$defs/") in schema.get("$defs", {}), ref
    for prop in body["properties"].values():
        assert isinstance(prop, dict)


def test_schema_unknown_type_is_key_error() -> None:
    with pytest.raises(KeyError):
        params_schema("NoSuchNode")


def test_schema_covers_the_builtins() -> None:
    builtins = {
        "InjectNode",
        "JSONTransformNode",
        "RouteNode",
        "ChangeNode",
        "FilterNode",
        "DeadbandNode",
        "RateLimitNode",
        "DebounceNode",
        "WindowNode",
        "DelayNode",
        "LogNode",
    }
    assert builtins <= set(node_types())


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_in_params_are_rejected(value: float) -> None:
    """YAML can say .nan / .inf; JSON storage would turn them into null behind our back."""
    doc = {"id": "f", "nodes": [
        {"id": "tick", "type": "InjectNode", "params": {"interval": value}}]}  # fmt: skip
    with pytest.raises(FlowError, match=r"nodes\[0\] \(tick\)\.params: not JSON-compatible: NaN"):
        validate(doc)
