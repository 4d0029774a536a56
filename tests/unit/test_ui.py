"""The dashboard's pieces without a browser or a broker: histogram quantiles against the observations
they summarize, the serving stages' latency ring against numpy, endpoint announcements, and one
collector round against a real worker metrics endpoint."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.operators.serving.latency import RecentLatencies
from dawnstream.streams import endpoints
from dawnstream.streams.metrics import LATENCY_BUCKETS, MetricsServer, WorkerMetrics
from dawnstream.ui.collector import Collector
from dawnstream.ui.scrape import bucket_delta, histogram_quantile, json_safe

BOUNDS = (*LATENCY_BUCKETS, math.inf)


def cumulative(observations: list[float]) -> dict[float, float]:
    return {b: float(sum(x <= b for x in observations)) for b in BOUNDS}


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.floats(0.0, 20.0, allow_nan=False), min_size=1, max_size=60), st.floats(0.01, 1.0))
def test_the_quantile_lies_in_the_bucket_of_the_true_quantile(obs: list[float], q: float) -> None:
    # Prometheus' estimate interpolates inside the bucket that holds rank q*n: the observation of that rank
    # (nearest rank, ceil(q*n)) lies in the same bucket, so both share its bounds.
    est = histogram_quantile(q, cumulative(obs))
    true = sorted(obs)[max(math.ceil(q * len(obs)) - 1, 0)]
    upper = next(b for b in BOUNDS if true <= b)
    lower = max([0.0, *(b for b in BOUNDS if b < upper)])
    assert est is not None
    if math.isinf(upper):  # beyond the last finite bound: the largest finite bound is the answer
        assert est == LATENCY_BUCKETS[-1]
    else:
        assert lower <= est <= upper


def test_an_empty_histogram_has_no_quantile_and_a_reset_counter_starts_over() -> None:
    assert histogram_quantile(0.5, {}) is None and histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert bucket_delta({0.1: 3.0, math.inf: 4.0}, {0.1: 1.0, math.inf: 1.0}) == {0.1: 2.0, math.inf: 3.0}
    assert bucket_delta({0.1: 1.0, math.inf: 1.0}, {0.1: 5.0, math.inf: 9.0}) == {0.1: 1.0, math.inf: 1.0}
    assert json_safe({"a": [math.nan, 1.0, math.inf]}) == {"a": [None, 1.0, None]}


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1e4, allow_nan=False), st.integers(1, 9)), min_size=1, max_size=40),
       st.integers(1, 64))
def test_recent_latencies_are_numpys_percentiles_of_the_last_requests(batches, size: int) -> None:
    ring = RecentLatencies(size=size)
    flat: list[float] = []
    for ms, n in batches:
        ring.add(ms, n)
        flat += [ms] * n
    last = np.asarray(flat[-size:])
    got = ring.percentiles()
    assert got["latency_p50_ms"] == float(np.percentile(last, 50))
    assert got["latency_p99_ms"] == float(np.percentile(last, 99))


def test_announcements_appear_leave_and_are_dropped_when_their_process_is_gone(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(endpoints.RUN_DIR_ENV, str(tmp_path))
    path = endpoints.announce("jobA", 1, "0.0.0.0", 9555)
    assert path is not None
    [doc] = endpoints.announced()
    assert doc["topology"] == "jobA" and doc["worker"] == 1 and doc["url"] == "http://127.0.0.1:9555"
    endpoints.withdraw(path)
    assert endpoints.announced() == []
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "workers" / "stale.json"
    stale.write_bytes(orjson.dumps({**doc, "pid": int(gone.stdout)}))
    (tmp_path / "workers" / "broken.json").write_text("{not json")
    assert endpoints.announced() == [] and not stale.exists()  # a kill -9'd worker's file is cleaned up


def test_one_collector_round_shows_what_the_worker_exports_and_then_that_it_is_down(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(endpoints.RUN_DIR_ENV, str(tmp_path))
    m = WorkerMetrics("jobB", 0)
    m.describe("exactly_once", "dawnstream.jobB", "in.v1", ["out.v1"], restarts=2)
    m.init_series("in.v1", ["out.v1"], ["classify"])
    m.status["state"] = "running"
    m.lag.labels("jobB", "in.v1", "3").set(17)
    m.rows_in.labels("jobB", "in.v1").inc(1000)
    for s in (0.004, 0.004, 0.2):
        m.batch_seconds.labels("jobB").observe(s)
    server = MetricsServer(m, port=0).start()
    c = Collector(bootstrap=None, discover=True)  # found through its announcement alone
    try:
        c.poll()
        time.sleep(0.3)
        m.rows_in.labels("jobB", "in.v1").inc(300)
        c.poll()
        [job] = c.state()["jobs"]
        assert job["topology"] == "jobB" and job["guarantee"] == "exactly_once" and job["input"] == "in.v1"
        assert job["rows_in_total"] == 1300 and job["rows_in_per_s"] > 0
        assert job["partitions"] == [{"partition": 3, "topic": "in.v1", "worker": 0, "lag": 17, "source": "worker"}]
        assert job["workers"][0]["restarts"] == 2 and job["workers"][0]["up"] and job["workers_up"] == 1
        assert 2.5 < job["batch_p50_ms"] <= 5.0 and 100 < job["batch_p99_ms"] <= 250
    finally:
        server.stop()
    assert endpoints.announced() == []  # a clean stop withdraws the announcement
    c.targets.append(f"http://127.0.0.1:{server.port}")  # asked by hand: shown as down, with why
    c.poll()
    [job] = c.state()["jobs"]
    assert job["workers_up"] == 0 and job["workers"][0]["state"] == "down" and job["workers"][0]["error"]
