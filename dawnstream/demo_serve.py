"""``make demo-serve``: prediction serving and hybrid learning on MovieLens-100k, end to end through Kafka.

Runs ``dawnstream run topologies/movie-ratings.yaml`` (the ``serve`` stage: Velox, ONNX, online MF and
mean containers under an Exp4 ensemble) and ``dawnstream models retrain`` (θ retrained from the topic,
each version registered and promoted in a fresh registry) as processes of their own, and a
:class:`~dawnstream.streams.request_reply.PredictClient` that replays the 100,000 ratings in time
order as feedback (each acknowledged with the prediction made *before* it was learned: progressive
validation) with prediction requests for random users and items in between. The live view shows RMSE,
request latency percentiles, and, scraped from the worker's ``/metrics``, per-model RMSE, AIMD batch
sizes, the ensemble's weights and the model versions.

:func:`run_serve_demo` is what ``make demo-serve`` runs and what ``tests/kafka/test_demo_serve.py``
checks (on a prefix of the ratings); :func:`main` exits 0 only when every request and every
acknowledged feedback got its reply and the models beat the global mean.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from dawnstream.demo import exit_status
from dawnstream.demo_jobs import exited, failed, fresh_job, stop, worker_ready
from dawnstream.models.registry import REGISTRY_ENV, Registry
from dawnstream.sources import movielens
from dawnstream.streams.request_reply import PredictClient

TOPOLOGY = Path(__file__).resolve().parent.parent / "topologies" / "movie-ratings.yaml"
THETA = "movielens-theta"


def percentile(values: list[float], q: float) -> float:
    """``q``-th percentile (0-100) of ``values``; NaN when empty."""
    return float(np.percentile(values, q)) if values else float("nan")


def scrape_status(url: str) -> dict[str, Any]:
    """The ``serve`` stage's gauges from a worker's ``/metrics`` (``dawnstream_stage_value``), over every
    partition: counters summed, RMSE weighted by the feedback each model scored, weights averaged, AIMD
    batch sizes and versions at their maximum. Empty when the worker does not answer (yet)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - our own worker on localhost
            text = r.read().decode()
    except OSError:
        return {}
    per: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "dawnstream_stage_value":
            continue
        for sample in fam.samples:
            per.setdefault(sample.labels["partition"], {})[sample.labels["name"]] = sample.value
    if not per:
        return {}
    parts = list(per.values())

    def group(prefix: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for g in parts:
            for k, v in g.items():
                if k.startswith(prefix + "."):
                    out.setdefault(k[len(prefix) + 1:], []).append(v)
        return out

    scored = {m: [g.get(f"scored.{m}", 0.0) for g in parts] for m in group("rmse")}
    rmse = {}
    for m in scored:
        num = sum(g.get(f"rmse.{m}", 0.0) ** 2 * g.get(f"scored.{m}", 0.0) for g in parts
                  if g.get(f"scored.{m}", 0.0) > 0)
        den = sum(scored[m])
        rmse[m] = float(np.sqrt(num / den)) if den else float("nan")
    return {
        "counters": {k: sum(g.get(k, 0.0) for g in parts) for k in
                     ("requests", "feedback", "errors", "defaults", "stragglers")},
        "rmse": rmse,
        "batch": {m: max(v) for m, v in group("batch").items()},
        "weights": {m: float(np.mean(v)) for m, v in group("weight").items()},
        "versions": {m: max(v) for m, v in group("version").items()},
        "routed": {m: sum(v) for m, v in group("routed").items()},
    }


@dataclass
class ServeDemoResult:
    """What one run did.

    Attributes:
        ratings: feedback events sent; requests: prediction requests sent.
        lost: requests or acknowledged feedback without a reply at the end.
        rmse_test: RMSE of the acknowledged predictions over the last 20% of the ratings (each made
            before that rating was learned); rmse_mean: the global-mean anchor on the same ratings.
        latency_ms: request latency percentiles (p50, p99), client side, through the broker.
        versions: θ versions registered by the retrainer. status: :func:`serving_status` at the end.
        error: why the run failed, or None.
    """

    ratings: int = 0
    requests: int = 0
    lost: int = 0
    rmse_test: float = float("nan")
    rmse_mean: float = float("nan")
    latency_ms: dict[str, float] = field(default_factory=dict)
    versions: int = 0
    seconds: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def run_serve_demo(console: Console | None = None, limit: int | None = None, request_every: int = 4,
                   rate: float = 1200.0, max_inflight: int = 1000, retrain_every: int = 10_000) -> ServeDemoResult:
    """Replay MovieLens through the serving topology and report.

    Args:
        limit: replay only the first ``limit`` ratings (tests); default all 100,000.
        request_every: one prediction request (random user and item seen so far) per this many ratings.
        rate: ratings sent per second (requests come on top).
        max_inflight: the client waits when this many replies are outstanding (back-pressure).
        retrain_every: θ is retrained after this many new ratings (the first after half of that).

    Raises:
        DawnstreamError: the broker cannot be reached.
    """
    console = console or Console()
    registry = Path.home() / ".cache" / "dawnstream" / "demo-serve" / "registry"
    topo = fresh_job(TOPOLOGY, registry)
    table = movielens()
    if limit is not None:
        table = table.slice(0, limit)
    users, items = table.column("user_id").to_pylist(), table.column("item_id").to_pylist()
    ratings = table.column("rating").to_pylist()
    n = len(ratings)
    console.print(f"[bold]dawnstream demo-serve[/]: {n:,} MovieLens ratings through {topo.input.topic} "
                  f"at {topo.kafka.bootstrap}; registry {registry}")
    env = {**os.environ, REGISTRY_ENV: str(registry), "DAWNSTREAM_LOG_LEVEL": os.environ.get("DAWNSTREAM_LOG_LEVEL",
                                                                                           "WARNING")}
    # The worker and the retrainer run as the user would run them, in processes of their own: latencies
    # measured here are not those of threads sharing this interpreter's GIL.
    worker = subprocess.Popen([sys.executable, "-m", "dawnstream", "run", str(TOPOLOGY)], env=env)
    min_ratings = max(retrain_every // 2, 100)
    retrainer = subprocess.Popen([sys.executable, "-m", "dawnstream", "models", "retrain", str(TOPOLOGY),
                                  "--every", str(retrain_every), "--min-ratings", str(min_ratings)],
                                 env=env, stdout=subprocess.DEVNULL)
    procs = {"serving worker": worker, "retrainer": retrainer}
    metrics_url = f"http://{topo.metrics.host}:{topo.metrics.port}/metrics"
    reg = Registry(registry)
    seen: dict[str, Any] = {"status": {}, "at": 0.0}
    deadline = time.monotonic() + 120
    while not worker_ready(metrics_url) and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    client = PredictClient(topo.kafka.bootstrap, topo.input.topic, topo.outputs[0].topic,
                           key_field="user_id", settings=topo.kafka.settings)
    result = ServeDemoResult()
    acks: dict[str, int] = {}  # correlation id of acknowledged feedback -> rating index
    reqs: list[str] = []
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    progress = {"k": 0}

    def view() -> Group:
        if time.monotonic() - seen["at"] > 1.0:
            seen["status"], seen["at"] = scrape_status(metrics_url) or seen["status"], time.monotonic()
        st = seen["status"]
        dt = max(time.perf_counter() - t0, 1e-9)
        k = progress["k"]
        recent = [i for i in list(acks)[-5000:] if i in client.replies]
        errs = [client.replies[i]["prediction"] - ratings[acks[i]] for i in recent]
        lat = [(client.arrived[i] - client.sent[i]) * 1000 for i in reqs[-5000:] if i in client.arrived]
        head = Table(title=f"movie-ratings: Clipper serving + Velox learning through Kafka, {n:,} ratings",
                     caption="RMSE: of the last 5,000 answers; p50/p99: request to reply, ms; θ v: versions of "
                             "the offline model")
        for col in ("elapsed", "sent", "events/s", "RMSE", "p50 ms", "p99 ms", "θ v"):
            head.add_column(col, justify="right")
        head.add_row(f"{dt:.1f}s", f"{k:,}", f"{(k + len(reqs)) / dt:,.0f}",
                     f"{np.sqrt(np.mean(np.square(errs))):.3f}" if errs else "-",
                     f"{percentile(lat, 50):.1f}", f"{percentile(lat, 99):.1f}", str(len(reg.versions(THETA))))
        models = Table(title="models (RMSE on feedback, scored before learning it)")
        for col in ("model", "RMSE", "Exp4 weight", "AIMD batch", "version"):
            models.add_column(col, justify="right")
        for name in st.get("batch", {}):
            models.add_row(name, f"{st['rmse'][name]:.3f}", f"{st['weights'][name]:.3f}", str(st["batch"][name]),
                           str(st["versions"][name]))
        if st:
            models.add_row("[bold]ensemble[/]", f"{st['rmse']['served']:.3f}", "", "", "")
        return Group(head, models)

    try:
        with Live(view(), console=console, refresh_per_second=4) as live:
            last_view = 0.0
            for k in range(n):
                ahead = k / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
                while len(client.sent) - len(client.replies) - (k - len(acks)) > max_inflight:
                    if exited(procs):
                        break
                    time.sleep(0.002)
                if exited(procs):
                    break
                cid = client.feedback(users[k], items[k], ratings[k], ack=True)
                acks[cid] = k
                if k % request_every == 0 and k:
                    who, what = int(rng.integers(0, k)), int(rng.integers(0, k))
                    reqs.append(client.send({"user_id": users[who], "item_id": items[what]}))
                progress["k"] = k + 1
                if time.perf_counter() - last_view > 0.25:
                    live.update(view())
                    last_view = time.perf_counter()
            want = list(acks) + reqs
            deadline = time.monotonic() + 60
            while exited(procs) is None and time.monotonic() < deadline and any(i not in client.replies for i in want):
                time.sleep(0.1)
                live.update(view())
            # the retrainer reads the topic from its start in a process of its own: on a busy machine a short
            # stream can be over before its first fit, which the final numbers should include
            deadline = time.monotonic() + 60
            due = len(acks) >= min_ratings
            while due and exited(procs) is None and time.monotonic() < deadline and not reg.versions(THETA):
                time.sleep(0.2)
                live.update(view())
            live.update(view())
        time.sleep(2.5)  # the worker refreshes its gauges every 2 s
        seen["at"] = 0.0
        view()  # the final numbers
    finally:
        client.close()
        stop(procs)
    result.seconds = time.perf_counter() - t0
    result.ratings, result.requests = len(acks), len(reqs)
    result.lost = sum(1 for i in list(acks) + reqs if i not in client.replies)
    cut = int(0.8 * n)
    test = [i for i, k in acks.items() if k >= cut and i in client.replies]
    y = np.asarray([ratings[acks[i]] for i in test])
    if len(y):
        pred = np.asarray([client.replies[i]["prediction"] for i in test])
        result.rmse_test = float(np.sqrt(np.mean((pred - y) ** 2)))
        result.rmse_mean = float(np.sqrt(np.mean((y - np.mean(ratings[:cut])) ** 2)))
    lat = [(client.arrived[i] - client.sent[i]) * 1000 for i in reqs if i in client.arrived]
    result.latency_ms = {"p50": percentile(lat, 50), "p99": percentile(lat, 99)}
    result.versions = len(reg.versions(THETA))
    result.status = seen["status"]
    result.error = failed(procs)
    if result.error is None and result.lost:
        result.error = f"{result.lost} of {len(acks) + len(reqs)} messages got no reply within 60 s"
    if result.error is None and not result.rmse_test < result.rmse_mean:
        result.error = f"RMSE {result.rmse_test:.3f} does not beat the global mean's {result.rmse_mean:.3f}"
    console.print(f"{result.ratings:,} ratings and {result.requests:,} requests in {result.seconds:.1f}s; "
                  f"RMSE on the last 20%: [bold]{result.rmse_test:.3f}[/] (global mean {result.rmse_mean:.3f}); "
                  f"request latency p50 {result.latency_ms['p50']:.1f} ms, p99 {result.latency_ms['p99']:.1f} ms; "
                  f"{result.versions} θ versions registered; {result.lost} replies lost; "
                  f"{client.duplicates} duplicate replies ignored")
    return result


def main() -> int:
    """``make demo-serve``: exit status 0 only when every reply came back and the models beat the mean."""
    return exit_status(run_serve_demo, "demo-serve")


if __name__ == "__main__":
    sys.exit(main())
