"""``/healthz`` tells a probe whether the worker is doing its job: 200 while starting or running,
503 with the reason once it failed (a dead worker is never reported healthy)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from dawnstream.streams.metrics import MetricsServer, WorkerMetrics


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_healthz_turns_503_with_the_reason_when_the_worker_failed() -> None:
    m = WorkerMetrics("t", 0)
    server = MetricsServer(m, port=0).start()
    try:
        assert get(server.port, "/healthz")[0] == 200
        m.status = {"state": "running"}
        assert get(server.port, "/healthz")[0] == 200
        m.status = {"state": "failed", "error": "worker 0: topic(s) a.b.c.v1 do not exist"}
        code, body = get(server.port, "/healthz")
        assert code == 503 and body["state"] == "failed" and "do not exist" in body["error"]
    finally:
        server.stop()
