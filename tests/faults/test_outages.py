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
from kafkakit import free_port_pair, read_all

from dawnstream.broker import BrokerManager
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


def _label(start_ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(start_ms // 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def expected(table: pa.Table) -> Counter:
    """Rows per (30 s window start, key) of the input."""
    t = table["t"].to_numpy()
    k = table["k"].to_pylist()
    return Counter((_label((int(ts) // 30_000) * 30_000), key) for ts, key in zip(t, k, strict=True))


def assert_exact_windows(got: Counter, table: pa.Table) -> None:
    """Every window that must have closed is there, none that cannot have closed, each count exact.

    A partition closes window [s, s + 30 s) once its largest event time reaches s + 30 s (lateness 0).
    Each partition holds at least one key, so its largest time is at least the smallest of the keys'
    last times (every window ending by then must have closed) and at most the stream's last time.
    """
    exp = expected(table)
    t = table["t"].to_numpy()
    k = np.array(table["k"].to_pylist())
    surely = min(int(t[k == key].max()) for key in np.unique(k))
    at_most = int(t.max())
    starts = {(_label(s0), key): s0 for s0, key in zip(((t // 30_000) * 30_000).tolist(), k.tolist(), strict=True)}
    must = {w for w, s0 in starts.items() if s0 + 30_000 <= surely}
    may = {w for w, s0 in starts.items() if s0 + 30_000 <= at_most}
    missing, extra = must - set(got), set(got) - may
    wrong = {w: (got[w], exp[w]) for w in got if got[w] != exp[w]}
    assert not missing, f"{len(missing)} windows that must have closed are missing: {sorted(missing)[:8]}"
    assert not extra, f"{len(extra)} windows cannot have closed yet: {sorted(extra)[:8]}"
    assert not wrong, f"{len(wrong)} windows differ (got, expected): {sorted(wrong.items())[:8]}"


def test_broker_down_for_10s_mid_stream(tmp_path: Path, reader, monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = BrokerManager(port=free_port_pair(29392), home=tmp_path / "broker")
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
        assert_exact_windows(counts(lambda topic, n, **kw: read_all(boot, topic, n, **kw), dst), table)
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
    # The killed worker was replaced and the job ended cleanly; a killed parent would show as 9 here.
    assert stop(proc) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "state.restored" in text, "the killed worker's state was not restored by its successor"
    assert "event=worker.replaced" in text
    assert_exact_windows(counts(reader, dst), table)
