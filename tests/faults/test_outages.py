"""A broker stopped for 10 s mid-stream, and a worker killed while another shares the group:
the workers recover by themselves and the committed output is exact."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from faultkit import committed, committed_each, start_worker, stop, wait_until, worker_pids, write_topology
from kafkakit import read_all

from dawnstream.streams.broker import BrokerManager
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.topics.spec import TopicSpec

N = 200_000
PARTS = 4


def data() -> pa.Table:
    i = np.arange(N, dtype=np.int64)
    return pa.table({"id": i, "k": pa.array([f"k{v}" for v in i % 25]), "t": 1_700_000_000_000 + i * 20})


def topo(tmp: Path, name: str, src: str, dst: str, bootstrap: str) -> Path:
    return write_topology(tmp / f"{name}.yaml", {
        "name": name, "input": {"topic": src, "partitions": PARTS},
        "stages": [{"op": "window_count", "key": "k", "time": "t", "size": "30s"}],
        "outputs": [{"topic": dst}], "kafka": {"bootstrap": bootstrap}, "metrics": {"port": 0},
        "checkpoint_ms": 1000, "batch": {"max_messages": 2000},
    })


def counts(reader_fn, topic: str) -> Counter:
    c: Counter = Counter()
    for m in reader_fn(topic, None, idle_s=3, timeout_s=120):
        r = orjson.loads(m.value())
        c[(r["window_start"], r["k"])] += r["count"]
    return c


def expected(table: pa.Table) -> Counter:
    """Windows closed by the end of each partition are emitted; compare on those the run emitted."""
    import datetime as dt

    t = table["t"].to_numpy()
    k = table["k"].to_pylist()
    fmt = "%Y-%m-%d %H:%M:%S"
    return Counter((dt.datetime.fromtimestamp((int(ts) // 30_000) * 30, dt.UTC).strftime(fmt), key)
                   for ts, key in zip(t, k, strict=True))


def test_broker_down_for_10s_mid_stream(tmp_path: Path, reader, monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = BrokerManager(port=39392, home=tmp_path / "broker")
    boot = mgr.start(timeout_s=120)
    # This test owns its broker. `make test` exports DAWNSTREAM_KAFKA_BOOTSTRAP (the shared broker), which
    # overrides every client's bootstrap - the helpers' here and the worker's (it inherits the environment).
    monkeypatch.setenv("DAWNSTREAM_KAFKA_BOOTSTRAP", boot)
    try:
        tag = uuid.uuid4().hex[:8]
        src, dst = f"test.outage-{tag}.rows.v1", f"test.outage-{tag}.out.v1"
        TopicAdmin(boot).ensure([TopicSpec(name=src, partitions=PARTS)])
        table = data()
        replay_table(table, src, key="k", bootstrap=boot)
        name = f"outage-{tag}"
        log = tmp_path / "worker.log"
        proc = start_worker(topo(tmp_path, name, src, dst, boot), log=log)
        group = f"dawnstream.{name}"
        wait_until(lambda: committed(boot, group, src, PARTS) > N // 10, 120, "progress", log=log)
        mgr.stop()
        time.sleep(10)
        assert proc.poll() is None, "the worker died while the broker was down"
        mgr.start(timeout_s=120)
        wait_until(lambda: committed(boot, group, src, PARTS) >= N, 300, "the worker to catch up", log=log)
        assert stop(proc) == 0, log.read_text()[-3000:]
        got = counts(lambda topic, n, **kw: read_all(boot, topic, n, **kw), dst)
        exp = expected(table)
        wrong = {w: (got[w], exp[w]) for w in got if got[w] != exp[w]}
        assert got and not wrong, f"{len(wrong)} windows differ (got, expected): {sorted(wrong.items())[:8]}"
        assert sum(got.values()) > N // 2
    finally:
        mgr.stop()


def test_survivor_takes_over_a_killed_workers_partitions_and_state(kafka_bootstrap: str, reader,
                                                                    tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    src, dst = f"test.takeover-{tag}.rows.v1", f"test.takeover-{tag}.out.v1"
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=src, partitions=PARTS)])
    table = data()
    name = f"takeover-{tag}"
    log = tmp_path / "workers.log"
    proc = start_worker(topo(tmp_path, name, src, dst, kafka_bootstrap), workers=2, log=log)
    group = f"dawnstream.{name}"
    wait_until(lambda: log.read_text().count("event=partitions.assigned") >= 3, 60, "both workers to join")
    import threading

    # Paced so the kill lands mid-stream, while the killed worker still owns unprocessed input.
    feeder = threading.Thread(target=replay_table, args=(table, src),
                              kwargs={"key": "k", "bootstrap": kafka_bootstrap, "rate": 40_000})
    feeder.start()
    # Kill only once every partition has a commit - hence a snapshot, which goes in the same transaction -
    # so the victim surely has state to hand over (killed earlier, the survivor would rightly start empty).
    wait_until(lambda: min(committed_each(kafka_bootstrap, group, src, PARTS)) > 0
               and committed(kafka_bootstrap, group, src, PARTS) > N // 5, 120, "progress on every partition", log=log)
    children = worker_pids(proc)
    assert len(children) == 2
    os.kill(children[1], signal.SIGKILL)
    feeder.join()
    wait_until(lambda: committed(kafka_bootstrap, group, src, PARTS) >= N, 300, "the survivor to finish")
    assert stop(proc) in (0, 9), log.read_text()[-3000:]  # the parent reports the killed child's signal
    text = log.read_text()
    assert "state.restored" in text, "the survivor did not restore the killed worker's state"
    got = counts(reader, dst)
    exp = expected(table)
    wrong = {w: (got[w], exp[w]) for w in got if got[w] != exp[w]}
    assert got and not wrong, f"{len(wrong)} windows differ (got, expected): {sorted(wrong.items())[:8]}"
    assert sum(got.values()) > N // 2
