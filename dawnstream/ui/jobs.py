"""One job as the dashboard shows it, built from its workers' scrapes (``/metrics``, ``/healthz``,
``/stages``): throughput, latency percentiles, lag per partition and which worker holds it, dead
letters per stage, each stage's live values and panels.

Rates are the counters' increase over the last :data:`RATE_WINDOW_S` seconds of scrapes, summed over
workers (a worker that restarted and reset its counters contributes its new count, like Prometheus'
``rate``). Latency percentiles come from the histograms' buckets over :data:`LATENCY_WINDOW_S`
(everything since start while the window holds no batch).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dawnstream.ui.scrape import Scrape, bucket_delta, histogram_quantile

RATE_WINDOW_S = 5.0
LATENCY_WINDOW_S = 30.0
HISTORY_SCRAPES = 120
STAGE_COUNTERS = (("rows_in", "dawnstream_stage_rows_in_total"), ("rows_out", "dawnstream_stage_rows_out_total"),
                  ("seconds", "dawnstream_operator_seconds_total"))


@dataclass
class Endpoint:
    """A worker's metrics endpoint and what the last scrapes of it said.

    Attributes:
        url: ``http://host:port`` (no path).
        announced: the worker's announcement (:mod:`dawnstream.streams.endpoints`), or None for a ``--target``.
        scrapes: the latest parsed ``/metrics`` answers, oldest first.
        health: the last ``/healthz`` JSON; stages: the last ``/stages`` JSON.
        error: why the last scrape failed (None when it answered).
    """

    url: str
    announced: dict[str, Any] | None = None
    scrapes: deque[Scrape] = field(default_factory=lambda: deque(maxlen=HISTORY_SCRAPES))
    health: dict[str, Any] | None = None
    stages: dict[str, Any] | None = None
    error: str | None = None
    last_ok: float = 0.0

    @property
    def topology(self) -> str | None:
        if self.health and self.health.get("topology"):
            return str(self.health["topology"])
        return None if self.announced is None else str(self.announced.get("topology"))

    @property
    def worker(self) -> int | None:
        for src in (self.health, self.announced):
            if src and src.get("worker") is not None:
                return int(src["worker"])
        return None

    def latest(self) -> Scrape | None:
        return self.scrapes[-1] if self.scrapes else None

    def before(self, seconds: float) -> Scrape | None:
        """The newest scrape at least ``seconds`` older than the latest (else the oldest kept)."""
        if len(self.scrapes) < 2:
            return None
        last = self.scrapes[-1].at
        for s in reversed(self.scrapes):
            if last - s.at >= seconds:
                return s
        return self.scrapes[0]


def _rate(ep: Endpoint, name: str, window_s: float) -> float | None:
    now, old = ep.latest(), ep.before(window_s)
    if now is None or old is None or now.at <= old.at:
        return None
    a, b = now.sum(name), old.sum(name)
    return (a - b if a >= b else a) / (now.at - old.at)


def _quantiles(eps: list[Endpoint], name: str) -> tuple[float | None, float | None]:
    merged: dict[float, float] = {}
    for ep in eps:
        now = ep.latest()
        if now is None:
            continue
        old = ep.before(LATENCY_WINDOW_S)
        delta = bucket_delta(now.buckets(name), None if old is None else old.buckets(name))
        if not delta or max(delta.values()) <= 0:
            delta = now.buckets(name)
        for le, c in delta.items():
            merged[le] = merged.get(le, 0.0) + c
    p50, p99 = histogram_quantile(0.5, merged), histogram_quantile(0.99, merged)
    return (None if p50 is None else p50 * 1000.0, None if p99 is None else p99 * 1000.0)


def job_view(topology: str, eps: list[Endpoint], now: float) -> dict[str, Any]:
    """The job's JSON for ``/api/state`` (see :func:`dawnstream.ui.collector.Collector.state`)."""
    live = [ep for ep in eps if ep.latest() is not None]
    workers, partitions = [], []
    info: dict[str, Any] = {}
    for ep in sorted(eps, key=lambda e: (e.worker if e.worker is not None else -1, e.url)):
        h = ep.health or {}
        s = ep.latest()
        parts = sorted(int(lb["partition"]) for lb, _ in s.rows("dawnstream_consumer_lag")) if s else []
        restarts = h.get("restarts")
        if s is not None:
            for lb, _ in s.rows("dawnstream_worker_info"):
                info = {k: lb[k] for k in ("guarantee", "group", "input", "outputs")}
                restarts = int(lb.get("restarts", 0))
        up = ep.error is None and s is not None
        workers.append({"worker": ep.worker, "url": ep.url, "up": up, "state": h.get("state") if up else "down",
                        "error": ep.error or h.get("error"), "uptime_s": h.get("uptime_s"),
                        "last_batch_age_s": h.get("last_batch_age_s"), "restarts": restarts,
                        "assigned": int(s.sum("dawnstream_assigned_partitions")) if s else 0, "partitions": parts,
                        "pid": (ep.announced or {}).get("pid")})
        if s is not None and up:
            for lb, v in s.rows("dawnstream_consumer_lag"):
                partitions.append({"partition": int(lb["partition"]), "topic": lb["topic"], "worker": ep.worker,
                                   "lag": max(v, 0.0), "source": "worker"})
    rates_in = [r for ep in live if (r := _rate(ep, "dawnstream_rows_in_total", RATE_WINDOW_S)) is not None]
    rates_out = [r for ep in live if (r := _rate(ep, "dawnstream_rows_out_total", RATE_WINDOW_S)) is not None]
    batch_p50, batch_p99 = _quantiles(live, "dawnstream_batch_seconds")
    commit_p50, commit_p99 = _quantiles(live, "dawnstream_commit_seconds")
    stages: dict[str, dict[str, float]] = {}
    dead: dict[str, float] = {}
    values: dict[str, dict[str, dict[str, float]]] = {}
    panels: dict[str, dict[str, Any]] = {}
    outputs_total = 0.0
    for ep in live:
        s = ep.latest()
        assert s is not None
        for key, metric in STAGE_COUNTERS:
            for lb, v in s.rows(metric):
                st = stages.setdefault(lb["stage"], {"rows_in": 0.0, "rows_out": 0.0, "seconds": 0.0})
                st[key] += v
        for lb, v in s.rows("dawnstream_dead_letters_total"):
            dead[lb["stage"]] = dead.get(lb["stage"], 0.0) + v
        for lb, v in s.rows("dawnstream_stage_value"):
            values.setdefault(lb["stage"], {}).setdefault(lb["name"], {})[lb["partition"]] = v
        outputs_total += s.sum("dawnstream_rows_out_total")
        for stage, by_part in ((ep.stages or {}).get("stages") or {}).items():
            panels.setdefault(stage, {}).update(by_part)
    if not info:
        h = next((ep.health for ep in eps if ep.health), {})
        info = {"guarantee": h.get("guarantee"), "group": h.get("group"), "input": h.get("input"),
                "outputs": ",".join(h.get("outputs") or [])}
    return {
        "topology": topology, **info,
        "outputs": [o for o in str(info.get("outputs") or "").split(",") if o],
        "workers": workers, "workers_up": sum(w["up"] for w in workers),
        "partitions": sorted(partitions, key=lambda p: p["partition"]),
        "lag_total": sum(p["lag"] for p in partitions),
        "rows_in_total": sum(sc.sum("dawnstream_rows_in_total") for ep in live if (sc := ep.latest()) is not None),
        "rows_out_total": outputs_total,
        "rows_in_per_s": sum(rates_in) if rates_in else None,
        "rows_out_per_s": sum(rates_out) if rates_out else None,
        "batch_p50_ms": batch_p50, "batch_p99_ms": batch_p99,
        "commit_p50_ms": commit_p50, "commit_p99_ms": commit_p99,
        "dead_letters_total": sum(dead.values()), "dead_by_stage": dead,
        "stages": [{"stage": k, **v} for k, v in stages.items()],
        "values": values, "panels": panels, "updated": now,
    }
