"""The real daemon (a subprocess, lazy API): a webhook as the very first connection (it
loads the API), the seed's shape webhook -> transform -> Lua -> answer, the hook token,
/metrics with the generated token, and a journald-friendly log (no timestamps)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mechaway.testing.daemon import DaemonProc

from .conftest import HOOK

LUA = """
local d = msg.payload
return {http = msg.http, status = 200,
        payload = {id = d.id, score = d.score, passed = d.score >= 50}}
"""

FLOW = {
    "id": "wf-grading",
    "name": "grading_workflow",
    "nodes": [
        {"id": "n1", "type": "WebhookNode", "params": {"path": "/grade", "token": HOOK}},
        {"id": "n2", "type": "JSONTransformNode", "params": {"map": "{id=$.id, score=$.score}"}},
        {"id": "n3", "type": "FunLogicNode", "params": {"engine": "mlua", "script": LUA}},
        {"id": "n4", "type": "HTTPResponseNode"},
    ],
    "edges": [{"from": "n1", "to": "n2"}, {"from": "n2", "to": "n3"}, {"from": "n3", "to": "n4"}],
}


def post(url: str, body: object, token: str | None) -> tuple[int, object]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_a_webhook_is_the_first_connection_and_the_flow_answers(tmp_path: Path) -> None:
    d = DaemonProc(tmp_path)
    (d.flows / "grading.json").write_text(json.dumps(FLOW))
    d.start(wait=False)
    try:
        url = None

        def answered() -> tuple[int, object] | None:
            nonlocal url
            if not d.port:
                return None
            url = f"{d.url}/webhook/wf-grading/grade"
            try:
                code, body = post(url, {"id": 5, "score": 71, "extra": 1}, HOOK)
            except OSError:
                return None  # not listening yet
            return (code, body) if code != 404 else None  # 404: the flow not loaded yet

        code, body = d.wait(answered, 30, "the webhook to answer")
        assert code == 200, body
        assert body == {"id": 5, "score": 71, "passed": True}
        assert url is not None
        assert post(url, {"id": 6, "score": 10}, HOOK) == (200, {"id": 6, "score": 10,
                                                                "passed": False})  # fmt: skip
        token = d.own_token()
        assert post(url, {"id": 7, "score": 99}, token)[0] == 401  # the API's token: no
        req = urllib.request.Request(f"{d.url}/metrics")
        req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode()
        values = {
            (s.name, s.labels.get("node"), s.labels.get("figure")): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }
        assert values[("mechaway_node_messages_in_total", "n4", None)] == 2
        assert values[("mechaway_node_figure", "n1", "answered")] == 2
        assert values[("mechaway_node_figure", "n1", "unauthorized")] == 1
        assert values[("process_resident_memory_bytes", None, None)] > 1e6
        time.sleep(0.1)
        assert d.terminate() == 0
        log = d.log_tail(200)
        assert "Traceback" not in log
    finally:
        d.kill()


def test_logs_carry_no_timestamp_under_journald(tmp_path: Path) -> None:
    from mechaway.testing.daemon import clean_env

    d = DaemonProc(tmp_path, env=clean_env(JOURNAL_STREAM="8:1234"))
    d.start()
    try:
        assert d.terminate() == 0
        lines = [ln for ln in d.logfile.read_text().splitlines() if ln.strip()]
        assert lines and all(ln.split(" ", 1)[0] in ("INFO", "WARNING", "ERROR", "DEBUG")
                             for ln in lines), lines[:5]  # fmt: skip
    finally:
        d.kill()
