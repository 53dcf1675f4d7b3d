"""A flow that feeds itself (issue 12, point 2) at validation: an MQTTOutNode whose topic
the same flow's MQTTInNode receives on the same connection. The run-time cut is tested
with the driver (test_mqtt_driver.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mechaway.drivers.mqtt import template_may_match
from mechaway.errors import FlowError
from mechaway.flow.validate import validate


def flow(out: dict[str, Any], in_topic: str = "sensors/#", **in_params: Any) -> dict[str, Any]:
    return {
        "id": "f",
        "nodes": [
            {"id": "in", "type": "MQTTInNode", "params": {"topic": in_topic, **in_params}},
            {"id": "out", "type": "MQTTOutNode", "params": out},
        ],
        "edges": [{"from": "in", "to": "out"}],
    }


def test_a_fixed_topic_the_flow_receives_is_an_error() -> None:
    with pytest.raises(FlowError) as err:
        validate(flow({"topic": "sensors/t1"}))
    assert str(err.value) == (
        "nodes[1] (out).params: publishes to 'sensors/t1', which the flow's own MQTTInNode"
        " 'in' (sensors/#) receives on [mqtt.default]: the flow would feed itself"
    )


def test_a_template_that_can_match_is_a_warning_the_default_topic_too() -> None:
    for out in ({}, {"topic": "sensors/{payload.room}/t"}):  # {} : topic "{topic}"
        valid = validate(flow(out))
        (warning,) = valid.warnings
        assert warning.where == "nodes[1] (out).params"
        assert "the flow may feed itself" in warning.message


@pytest.mark.parametrize(
    "out, in_topic, in_params",
    [
        ({"topic": "alarms/{payload.room}"}, "sensors/#", {}),  # never under sensors/
        ({"topic": "sensors/t1"}, "sensors/+/t", {}),  # one level short
        ({"topic": "sensors/t1", "connection": "far"}, "sensors/#", {}),  # another broker
        ({"topic": "alarms/{topic}"}, "$share/g/sensors/+", {}),  # shared: by its filter
    ],
)
def test_what_cannot_come_back_is_neither(
    out: dict[str, Any], in_topic: str, in_params: dict[str, Any]
) -> None:
    assert validate(flow(out, in_topic, **in_params)).warnings == []


def test_template_matching_is_exact() -> None:
    f = None  # a field: any text, "/" included
    assert template_may_match(["a/", f], "a/#")
    assert template_may_match(["a"], "a/#")  # "#" takes its parent level too
    assert not template_may_match(["b/", f], "a/#")
    assert template_may_match([f, "/x"], "+/+/x")  # the field may hold a "/"
    assert not template_may_match(["a/", f, "/c"], "a/+/+/d")
    assert template_may_match(["a/", f, "/c"], "a/+/+/c")
    assert not template_may_match(["$SYS/", f], "#")  # wildcards skip $ topics
    assert template_may_match(["$SYS/", f], "$SYS/#")
    assert not template_may_match(["ab"], "a")


def test_mechaway_validate_prints_warnings_and_errors(tmp_path: Path) -> None:
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(flow({})))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(flow({"topic": "sensors/t1"})))
    run = subprocess.run(
        [sys.executable, "-m", "mechaway", "validate", str(ok)],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{ok}: ok (1 warning(s))"
    assert f"{ok}: warning: nodes[1] (out).params: topic '{{topic}}' can render" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "mechaway", "validate", str(bad)],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    assert "the flow would feed itself" in run.stderr
