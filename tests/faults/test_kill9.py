"""kill -9 a stateful worker at 5 random points: the committed output equals an uninterrupted run's,
with zero duplicates under read_committed (exactly-once: transactions + changelog + replay)."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from faultkit import committed, start_worker, stop, wait_until, write_topology

from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.topics.spec import TopicSpec

N = 500_000
PARTS = 4


def rows() -> pa.Table:
    rng = np.random.default_rng(42)
    i = np.arange(N, dtype=np.int64)
    k = i % 40
    g = (i * 7919) % 7
    x = rng.normal(size=N)
    x[(k == 3) & (g == 2) & (rng.random(N) < 0.3)] += 12.0
    return pa.table({"id": i, "k": pa.array([f"k{v}" for v in k]), "g": pa.array([f"g{v}" for v in g]),
                     "t": 1_700_000_000_000 + i * 10, "x": x})


STAGES = {
    "windows": [{"op": "window_count", "key": "k", "time": "t", "size": "60s"}],
    "macrobase": [{"op": "classify", "metrics": ["x"], "warmup": 1000, "period": 5000},
                  {"op": "explain", "attributes": ["k", "g"], "min_support": 0.05, "emit_every": 20_000,
                   "period": 5000}],
}


def topology(tmp: Path, name: str, src: str, dst: str, bootstrap: str, stages: list) -> Path:
    return write_topology(tmp / f"{name}.yaml", {
        "name": name, "input": {"topic": src, "partitions": PARTS}, "stages": stages,
        "outputs": [{"topic": dst}], "kafka": {"bootstrap": bootstrap}, "metrics": {"port": 0},
        "checkpoint_ms": 1000, "batch": {"max_messages": 5000},
    })


def started(log: Path, since: int) -> bool:
    """The worker started after byte ``since`` of ``log`` has its partitions (so its supervisor handles
    SIGTERM by committing). Only that process's lines count: the killed one before it also logged
    ``partitions.assigned``, and a SIGTERM before the new supervisor installs its handler kills it."""
    new = log.read_bytes()[since:]
    return b"event=runner.start" in new and b"event=partitions.assigned" in new.rsplit(b"event=runner.start", 1)[-1]


def output_rows(reader, topic: str) -> list[tuple]:
    out = []
    for m in reader(topic, None, idle_s=3, timeout_s=120):
        r = orjson.loads(m.value())
        r.pop("emit_time", None)
        out.append(tuple(sorted((k, str(v)) for k, v in r.items())))
    return out


@pytest.mark.parametrize("kind", ["windows", "macrobase"])
def test_kill9_five_times_gives_the_uninterrupted_output(kind: str, kafka_bootstrap: str, reader,
                                                         tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    table = rows()
    # The killed run reads a copy of the input that arrives in slices, one more before each kill and the
    # last after the fifth, so the stream cannot finish before the fifth kill however fast the worker
    # is. Keys fix the partitions, so each partition sees the reference run's rows in the same order.
    slices = [table.slice(o, N // 7 + 1) for o in range(0, N, N // 7 + 1)]
    assert len(slices) == 7
    srcs = {run: f"test.kill9-{tag}.{run}-rows.v1" for run in ("reference", "killed")}
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=t, partitions=PARTS) for t in srcs.values()])
    replay_table(table, srcs["reference"], key="k", bootstrap=kafka_bootstrap)
    replay_table(slices[0], srcs["killed"], key="k", bootstrap=kafka_bootstrap)
    results = {}
    rng = random.Random(7)
    for run, src in srcs.items():
        name = f"kill9-{kind}-{run}-{tag}"
        dst = f"test.kill9-{tag}.{kind}-{run}.v1"
        topo = topology(tmp_path, name, src, dst, kafka_bootstrap, STAGES[kind])
        group = f"dawnstream.{name}"
        log = tmp_path / f"{run}.log"
        since = 0
        proc = start_worker(topo, log=log)
        if run == "killed":
            for kill in range(5):
                before = committed(kafka_bootstrap, group, src, PARTS)
                replay_table(slices[kill + 1], src, key="k", bootstrap=kafka_bootstrap)
                wait_until(lambda b=before, g=group, s=src: committed(kafka_bootstrap, g, s, PARTS) > b, 120,
                           "progress after a restart")
                time.sleep(rng.uniform(0.0, 1.5))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                since = log.stat().st_size
                proc = start_worker(topo, log=log)
            replay_table(slices[-1], src, key="k", bootstrap=kafka_bootstrap)
        wait_until(lambda g=group, s=src: committed(kafka_bootstrap, g, s, PARTS) >= N, 300, f"{run} to finish")
        # The last restart may come after the input was done: let it finish starting before SIGTERM.
        wait_until(lambda f=log, s=since: started(f, s), 60, "the worker to start")
        assert stop(proc) == 0, log.read_text()[-3000:]
        results[run] = output_rows(reader, dst)
        if run == "killed":
            assert "state.restored" in log.read_text()
    ref, got = results["reference"], results["killed"]
    assert len(ref) > 0
    assert Counter(got) == Counter(ref)
    if kind == "windows":
        keys = Counter(tuple(v for k, v in r if k in ("window_start", "k")) for r in got)
        assert max(keys.values()) == 1, "a window was emitted twice"
        total = sum(int(dict(r)["count"]) for r in got)
        assert 0 < total <= N
