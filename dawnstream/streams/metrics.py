"""Prometheus metrics and the ``/metrics`` + ``/healthz`` endpoint of one worker.

Each worker has its own ``CollectorRegistry`` (prometheus_client) and HTTP port, bound to
127.0.0.1 unless the topology says otherwise.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WorkerMetrics:
    """All metrics of one worker, labelled by topology (and topic/stage/partition where it applies).

    Metrics: ``dawnstream_rows_in_total``, ``dawnstream_rows_out_total``,
    ``dawnstream_dead_letters_total`` (rows), ``dawnstream_stage_rows_in_total`` /
    ``_out_total`` and ``dawnstream_operator_seconds_total`` per stage,
    ``dawnstream_batch_seconds`` (histogram, s), ``dawnstream_consumer_lag`` (messages, per partition),
    ``dawnstream_assigned_partitions``.
    """

    def __init__(self, topology: str, worker: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.topology = topology
        self.worker = str(worker)
        r = self.registry
        self.rows_in = Counter("dawnstream_rows_in", "Rows decoded from the input topic (good + dead-lettered)",
                               ["topology", "topic"], registry=r)
        self.rows_out = Counter("dawnstream_rows_out", "Rows produced to an output topic",
                                ["topology", "topic"], registry=r)
        self.dead = Counter("dawnstream_dead_letters", "Rows (or undecodable messages) sent to the dead-letter topic",
                            ["topology", "topic", "stage"], registry=r)
        self.stage_in = Counter("dawnstream_stage_rows_in", "Rows entering a stage", ["topology", "stage"], registry=r)
        self.stage_out = Counter("dawnstream_stage_rows_out", "Rows leaving a stage", ["topology", "stage"], registry=r)
        self.op_seconds = Counter("dawnstream_operator_seconds", "Seconds spent per stage (decode, operators, encode)",
                                  ["topology", "stage"], registry=r)
        self.batch_seconds = Histogram("dawnstream_batch_seconds", "Micro-batch latency: consume to commit, seconds",
                                       ["topology"], buckets=LATENCY_BUCKETS, registry=r)
        self.lag = Gauge("dawnstream_consumer_lag", "High watermark minus committed position, messages",
                         ["topology", "topic", "partition"], registry=r)
        self.assigned = Gauge("dawnstream_assigned_partitions", "Partitions assigned to this worker",
                              ["topology"], registry=r)
        self.started = time.time()
        self.last_batch = 0.0
        self.status: dict[str, Any] = {"state": "starting"}

    def health(self) -> dict[str, Any]:
        return {"topology": self.topology, "worker": int(self.worker), "uptime_s": round(time.time() - self.started, 1),
                "last_batch_age_s": round(time.time() - self.last_batch, 1) if self.last_batch else None,
                **self.status}


class MetricsServer:
    """Serves ``GET /metrics`` (Prometheus text) and ``GET /healthz`` (JSON) in a daemon thread.

    Args:
        metrics: the worker's metrics.
        host: bind address (127.0.0.1 unless configured).
        port: TCP port; 0 picks a free one (see :attr:`port` after start).
    """

    def __init__(self, metrics: WorkerMetrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        m = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype, code = generate_latest(m.registry), CONTENT_TYPE_LATEST, 200
                elif path == "/healthz":
                    h = m.health()
                    code = 200 if h.get("state") in ("running", "starting") else 503
                    body, ctype = orjson.dumps(h), "application/json"
                else:
                    body, ctype, code = b"not found: try /metrics or /healthz\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
