"""Prometheus metrics and the ``/metrics`` + ``/healthz`` endpoint of one worker.

Each worker has its own ``CollectorRegistry`` (prometheus_client) and HTTP port, bound to
127.0.0.1 unless the topology says otherwise.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dawnstream.streams.endpoints import announce, withdraw

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class RunnerStats:
    """Totals since start: rows in/out/dead, batches, and messages committed."""

    rows_in: int = 0
    rows_out: int = 0
    rows_dead: int = 0
    records_out: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    first_message: float | None = None  # monotonic time the first message arrived (after the group join)


class WorkerMetrics:
    """All metrics of one worker, labelled by topology (and topic/stage/partition where it applies).

    Metrics: ``dawnstream_rows_in_total``, ``dawnstream_rows_out_total``,
    ``dawnstream_dead_letters_total`` (rows), ``dawnstream_stage_rows_in_total`` /
    ``_out_total`` and ``dawnstream_operator_seconds_total`` per stage,
    ``dawnstream_batch_seconds`` (histogram, s), ``dawnstream_commit_seconds`` (histogram, s: the offset
    commit, or under exactly-once the transaction's commit), ``dawnstream_consumer_lag`` (messages, per
    partition), ``dawnstream_assigned_partitions``, ``dawnstream_stage_value`` (each stage's ``gauges()``)
    and ``dawnstream_worker_info`` (1, labelled with the guarantee, consumer group, input, outputs and
    how many times the supervisor replaced this worker). :attr:`panels` holds each stage's ``panel()``.
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
        self.stage_value = Gauge("dawnstream_stage_value", "A stage's own live numbers (e.g. serve: rmse.<model>, "
                                 "weight.<model>, batch.<model>, version.<model>, stragglers), per partition",
                                 ["topology", "stage", "partition", "name"], registry=r)
        self.assigned = Gauge("dawnstream_assigned_partitions", "Partitions assigned to this worker",
                              ["topology"], registry=r)
        self.commit_seconds = Histogram("dawnstream_commit_seconds", "Offset commit (exactly-once: transaction "
                                        "commit) latency, seconds", ["topology"], buckets=LATENCY_BUCKETS, registry=r)
        self.info = Gauge("dawnstream_worker_info", "Always 1; the labels describe the worker",
                          ["topology", "worker", "guarantee", "group", "input", "outputs", "restarts"], registry=r)
        self.panels: dict[str, dict[str, Any]] = {}  # stage -> partition -> panel(), refreshed by the runner
        self.started = time.time()
        self.last_batch = 0.0
        self.status: dict[str, Any] = {"state": "starting"}

    def describe(self, guarantee: str, group: str, input_topic: str, outputs: list[str], restarts: int = 0) -> None:
        """Set ``dawnstream_worker_info`` (what ``dawnstream ui`` shows per worker)."""
        self.info.labels(self.topology, self.worker, guarantee, group, input_topic, ",".join(outputs),
                         str(restarts)).set(1)
        self.status.update(guarantee=guarantee, group=group, input=input_topic, outputs=outputs, restarts=restarts)

    def init_series(self, input_topic: str, outputs: list[str], stages: list[str]) -> None:
        """Create every labelled series at 0 so an idle worker exposes the same metrics as a busy one."""
        name = self.topology
        self.rows_in.labels(name, input_topic)
        for o in outputs:
            self.rows_out.labels(name, o)
        self.dead.labels(name, input_topic, "decode")
        for stage in ["decode", *stages, "encode"]:
            self.op_seconds.labels(name, stage)
            self.stage_in.labels(name, stage)
            self.stage_out.labels(name, stage)
        self.batch_seconds.labels(name)
        self.commit_seconds.labels(name)
        self.assigned.labels(name).set(0)

    def account(self, input_topic: str, outputs: list[str], res: Any) -> None:
        """Add one :class:`~dawnstream.streams.processor.BatchResult` to the counters."""
        name = self.topology
        self.rows_in.labels(name, input_topic).inc(res.rows_in)
        for o in outputs:
            self.rows_out.labels(name, o).inc(res.rows_out)
        for stage, n in res.dead_by_stage.items():
            self.dead.labels(name, input_topic, stage).inc(n)
        for stage, (sec, rin, rout) in res.stage_stats.items():
            self.op_seconds.labels(name, stage).inc(sec)
            self.stage_in.labels(name, stage).inc(rin)
            self.stage_out.labels(name, stage).inc(rout)

    def refresh(self, consumer: Any, topic: str, partitions: list[int], chains: dict[int, Any]) -> None:
        """Periodic gauges: consumer lag (:meth:`refresh_lag`), each stage's ``gauges()`` and ``panel()`` per
        partition (called from the runner's thread: operator state is never read by the HTTP thread)."""
        self.refresh_lag(consumer, topic, partitions)
        panels: dict[str, dict[str, Any]] = {}
        for p, chain in list(chains.items()):
            for op in chain.operators:
                for key, value in op.gauges().items():
                    self.stage_value.labels(self.topology, op.name, str(p), key).set(value)
                panel = op.panel()
                if panel is not None:
                    panels.setdefault(op.name, {})[str(p)] = panel
        self.panels = panels

    def refresh_lag(self, consumer: Any, topic: str, partitions: list[int]) -> None:
        """Set ``dawnstream_consumer_lag`` from the consumer's positions and cached high watermarks."""
        from confluent_kafka import TopicPartition

        if not partitions:
            return
        try:
            for tp in consumer.position([TopicPartition(topic, p) for p in partitions]):
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0 and tp.offset >= 0:
                    # a cached high watermark can trail the position by the transaction markers just read
                    self.lag.labels(self.topology, topic, str(tp.partition)).set(max(high - tp.offset, 0))
        except Exception as e:  # noqa: BLE001 - metrics must never stop the worker
            from dawnstream.logs import event, get_logger

            event(get_logger(__name__), "lag.unavailable", error=str(e))

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the lag series of a partition this worker no longer owns."""
        try:
            self.lag.remove(self.topology, topic, str(partition))
        except KeyError:
            pass
        for labels in [k for k in self.stage_value._metrics if k[2] == str(partition)]:  # noqa: SLF001
            self.stage_value.remove(*labels)

    def stages_json(self) -> bytes:
        """``GET /stages``: ``{"topology", "worker", "at" (Unix s), "stages": {stage: {partition: panel}}}``."""
        return orjson.dumps({"topology": self.topology, "worker": int(self.worker), "at": time.time(),
                             "stages": self.panels}, default=str,
                            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)

    def health(self) -> dict[str, Any]:
        return {"topology": self.topology, "worker": int(self.worker), "uptime_s": round(time.time() - self.started, 1),
                "last_batch_age_s": round(time.time() - self.last_batch, 1) if self.last_batch else None,
                **self.status}


class MetricsServer:
    """Serves ``GET /metrics`` (Prometheus text), ``GET /healthz`` and ``GET /stages`` (JSON: each stage's
    :meth:`~dawnstream.operators.base.Operator.panel`) in a daemon thread, and announces itself to
    ``dawnstream ui`` (:mod:`dawnstream.streams.endpoints`) while it runs.

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
                elif path == "/stages":
                    body, ctype, code = m.stages_json(), "application/json", 200
                else:
                    body, ctype, code = b"not found: try /metrics, /healthz or /stages\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self.host = host
        self.announcement: Path | None = None
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        self.announcement = announce(self.metrics.topology, int(self.metrics.worker), self.host, self.port)
        return self

    def stop(self) -> None:
        withdraw(self.announcement)
        self.announcement = None
        self.server.shutdown()
        self.server.server_close()
