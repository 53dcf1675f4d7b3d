"""MQTT node params the validator refuses: a typo in a topic template is an error, never a
literal topic published to."""

from __future__ import annotations

import pytest

from mechaway.errors import FlowError
from mechaway.flow.validate import validate


def out_flow(topic: str) -> dict[str, object]:
    return {
        "id": "m",
        "nodes": [
            {"id": "t", "type": "InjectNode", "params": {"interval": 5}},
            {"id": "o", "type": "MQTTOutNode", "params": {"topic": topic}},
        ],
        "edges": [{"from": "t", "to": "o"}],
    }


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("alarms/{payload.room", "unbalanced { or }"),
        ("alarms/payload.room}", "unbalanced { or }"),
        ("alarms/{{payload.room}}", "unbalanced { or }"),
        ("a/{ }/b", "an empty {}"),
        ("a/+/b", "cannot contain + or #"),
        ("a/{topic}/#", "cannot contain + or #"),
    ],
)
def test_a_broken_topic_template_is_a_located_error(topic: str, why: str) -> None:
    with pytest.raises(FlowError) as info:
        validate(out_flow(topic))
    assert str(info.value).startswith("nodes[1] (o).params")
    assert why in str(info.value)


@pytest.mark.parametrize("topic", ["a/{payload.room}/t", "{topic}", "fixed/topic", "x/{a}{b}"])
def test_good_templates_validate(topic: str) -> None:
    assert validate(out_flow(topic)).doc.id == "m"
