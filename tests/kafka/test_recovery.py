"""Recovery runs in the main loop, paused and interruptible: a rebalance in the middle of a long
restore moves the partition on, and the committed output is exactly an uninterrupted run's."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import numpy as np
import orjson
import pyarrow as pa
import pytest

from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.streams.runner import KafkaRunner
from dawnstream.topics.spec import TopicSpec

N, PARTS = 80_000, 4


def data(n: int, offset: int = 0) -> pa.Table:
    i = np.arange(offset, offset + n, dtype=np.int64)
    return pa.table({"k": pa.array([f"k{v}" for v in i % 16]), "t": 1_700_000_000_000 + i * 50})


def topology(name: str, src: str, dst: str, bootstrap: str) -> dict:
    # One snapshot per partition at its first batch, then none for an hour: a restore replays
    # nearly everything.
    return {"name": name, "input": {"topic": src, "partitions": PARTS},
            "stages": [{"op": "window_count", "key": "k", "time": "t", "size": "10s"}],
            "outputs": [{"topic": dst}], "kafka": {"bootstrap": bootstrap}, "metrics": {"port": 0},
            "checkpoint_ms": 3_600_000, "batch": {"max_messages": 2000}}


def counts(reader, topic: str) -> Counter:
    c: Counter = Counter()
    for m in reader(topic, None, idle_s=3, timeout_s=120):
        r = orjson.loads(m.value())
        c[(r["window_start"], r["k"])] += r["count"]
    return c


class Worker(threading.Thread):
    def __init__(self, topo: dict, worker: int, **run: object) -> None:
        super().__init__(daemon=True)
        self.runner = KafkaRunner(parse_topology(topo), worker=worker, metrics_port=-1)
        self.run_args = run
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.runner.run(**self.run_args)  # type: ignore[arg-type]
        except BaseException as e:  # noqa: BLE001
            self.error = e


def committed(bootstrap: str, group: str, topic: str) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return [max(o.offset, 0) for o in c.committed([TopicPartition(topic, p) for p in range(PARTS)], timeout=10)]
    finally:
        c.close()


def replaying(runner: KafkaRunner) -> bool:
    try:  # read from another thread: the dict may change under us
        return any(t.replayed > 0 for t in list(runner.recovery.pending.values()))
    except RuntimeError:
        return False


def wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_revocation_mid_recovery_loses_and_duplicates_nothing(kafka_bootstrap: str, reader) -> None:
    tag = uuid.uuid4().hex[:8]
    first, second = data(N), data(N // 4, N)
    results = {}
    for run in ("reference", "interrupted"):
        src, dst, name = f"test.recov-{tag}-{run}.rows.v1", f"test.recov-{tag}.{run}.v1", f"recov-{run}-{tag}"
        TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=src, partitions=PARTS)])
        replay_table(first, src, key="k", bootstrap=kafka_bootstrap)
        topo = topology(name, src, dst, kafka_bootstrap)
        a = Worker(topo, 0, max_rows=N, max_idle_s=60)
        a.runner.snapshot_on_stop = False  # as after a crash: the next worker replays nearly everything
        a.start()
        a.join(180)
        assert a.error is None and a.runner.stats.rows_in == N
        if run == "reference":
            b = Worker(topo, 1, max_idle_s=8)
            b.start()
            replay_table(second, src, key="k", bootstrap=kafka_bootstrap)
            b.join(180)
            assert b.error is None
        else:
            # B restores all four partitions by replaying ~N rows; C joins while B is mid-way.
            b, c = Worker(topo, 1, max_idle_s=8), Worker(topo, 2, max_idle_s=8)
            b.runner.recovery.chunk_messages = 5  # a long recovery: ~16,000 turns of the loop, seconds long
            b.start()
            wait(lambda b=b: replaying(b.runner), 60, "B to be replaying")
            c.start()
            wait(lambda b=b: len(b.runner.assigned) < PARTS, 60, "C to take partitions from B")
            replay_table(second, src, key="k", bootstrap=kafka_bootstrap)
            b.join(180)
            c.join(180)
            assert b.error is None and c.error is None
            assert not b.runner.recovery.pending and not c.runner.recovery.pending
            assert b.runner.recovery.interrupted >= 1, "C joined too late: no recovery was interrupted"
        ends = committed(kafka_bootstrap, f"dawnstream.{name}", src)
        assert sum(ends) == N + N // 4, f"a partition is stuck: committed {ends}"
        results[run] = counts(reader, dst)
    assert results["interrupted"] == results["reference"]
    assert sum(results["reference"].values()) > N  # most windows closed: the comparison means something


@pytest.mark.parametrize("guarantee,on_stop", [("exactly_once", True), ("at_least_once", True),
                                               ("exactly_once", False)])
def test_after_a_clean_stop_the_next_worker_replays_nothing(kafka_bootstrap: str, reader, guarantee: str,
                                                            on_stop: bool) -> None:
    tag = uuid.uuid4().hex[:8]
    n = N // 4
    src, dst, name = f"test.stop-{tag}.rows.v1", f"test.stop-{tag}.out.v1", f"stop-{tag}"
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=src, partitions=PARTS)])
    replay_table(data(n), src, key="k", bootstrap=kafka_bootstrap)
    topo = {**topology(name, src, dst, kafka_bootstrap), "guarantee": guarantee}
    a = Worker(topo, 0, max_rows=n, max_idle_s=60)
    a.runner.snapshot_on_stop = on_stop
    a.start()
    a.join(180)
    assert a.error is None and a.runner.stats.rows_in == n
    b = Worker(topo, 1, max_idle_s=8)
    b.start()
    replay_table(data(n, n), src, key="k", bootstrap=kafka_bootstrap)
    b.join(180)
    assert b.error is None and sum(committed(kafka_bootstrap, f"dawnstream.{name}", src)) == 2 * n
    if on_stop:
        assert b.runner.recovery.replayed == 0
    else:  # the last snapshots are the first batches' (checkpoint_ms is an hour): B replays nearly all of A's input
        assert b.runner.recovery.replayed > n // 2
    # and the windows B closed count A's rows and its own, each once
    both = data(2 * n)
    starts = [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 10_000 * 10)) for ms in both["t"].to_pylist()]
    want = Counter(zip(starts, both["k"].to_pylist(), strict=True))
    got = counts(reader, dst)
    assert got and all(got[w] == want[w] for w in got)
    assert sum(got.values()) > n  # windows that began under A closed under B


def test_at_least_once_checkpoints_never_wait_for_the_broker(kafka_bootstrap: str, reader) -> None:
    """At-least-once with ``max_wait_ms: 0``, a checkpoint is staged and finished by delivery reports: no batch
    waits for an acknowledgement during the run (the checkpoint's synchronous flush runs only once the loop
    has stopped), yet offsets commit and snapshots are written all along, and a successor that starts from
    them counts every row (a window it re-closes may repeat rows: at-least-once)."""
    tag = uuid.uuid4().hex[:8]
    n = N // 2
    src, dst, name = f"test.nowait-{tag}.rows.v1", f"test.nowait-{tag}.out.v1", f"nowait-{tag}"
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=src, partitions=PARTS)])
    topo = {**topology(name, src, dst, kafka_bootstrap), "guarantee": "at_least_once", "checkpoint_ms": 100,
            "batch": {"max_messages": 2000, "max_wait_ms": 0}}  # never waits for a batch: nor for a checkpoint
    a = Worker(topo, 0, max_rows=n, max_idle_s=60)
    a.runner.snapshot_on_stop = False  # the successor starts from what the running loop left
    flushes: list[int] = []
    flush = a.runner.checkpoint.flush

    def spy(timeout_s: float = 60.0) -> None:
        flushes.append(a.runner.stats.rows_in)
        flush(timeout_s)

    a.runner.checkpoint.flush = spy  # type: ignore[method-assign]
    a.start()
    group, seen = f"dawnstream.{name}", []
    feeder = threading.Thread(target=replay_table, args=(data(n), src),
                              kwargs={"key": "k", "bootstrap": kafka_bootstrap, "rate": 10_000})
    feeder.start()
    while a.is_alive() and a.runner.stats.rows_in < n:  # commits observed while rows still arrive
        seen.append(sum(committed(kafka_bootstrap, group, src)))
        time.sleep(0.5)
    feeder.join()
    a.join(180)
    assert a.error is None and a.runner.stats.rows_in == n
    assert all(rows == n for rows in flushes), f"a checkpoint waited for the broker mid-run: {flushes}"
    assert len({s for s in seen if 0 < s < n}) >= 2, f"offsets did not commit during the run: {seen}"
    b = Worker(topo, 1, max_idle_s=8)
    b.start()
    b.join(180)
    assert b.error is None and sum(committed(kafka_bootstrap, group, src)) == n
    assert b.runner.recovery.replayed < n // 4  # restored from snapshots written during the run
    rows = data(n)
    starts = [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 10_000 * 10)) for ms in rows["t"].to_pylist()]
    want = Counter(zip(starts, rows["k"].to_pylist(), strict=True))
    got = counts(reader, dst)
    assert got and all(got[w] >= want[w] for w in got)  # at-least-once: a replayed window may repeat rows
