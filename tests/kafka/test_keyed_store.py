"""A keyed store's state lives in the changelog key by key: it can grow past one 16 MiB message and a
new worker restores it, deletes included, before it processes anything."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import numpy as np
import orjson
import pyarrow as pa
import pytest

from dawnstream.operators.base import Operator
from dawnstream.operators.registry import OPERATORS, register
from dawnstream.streams.config import parse_topology
from dawnstream.streams.replay import replay_table
from dawnstream.streams.runner import KafkaRunner

PAD = 512 * 1024  # 40 keys x 512 KiB = 20 MiB of state: more than one changelog message may hold
KEYS = 40


class KeyedCounter(Operator):
    """Counts rows per ``k`` in its keyed store (each value padded to 512 KiB); ``k == 'gone'`` deletes."""

    kind = "test_keyed_counter"
    stateful = True
    keyed_state = True

    def required_columns(self) -> set[str]:
        return {"k"}

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        ks, counts = [], []
        for k in batch.column("k").to_pylist():
            if k == "gone":
                self.store.pop("k0", None)
                continue
            n = int.from_bytes(self.store.get(k, bytes(8))[:8], "little") + 1
            self.store[k] = n.to_bytes(8, "little") + bytes(PAD)
            ks.append(k)
            counts.append(n)
        return [pa.record_batch({"k": ks, "count": counts})]


@pytest.fixture
def keyed_counter() -> Iterator[None]:
    register(KeyedCounter)  # for this test only: the conformance suite checks every registered kind
    try:
        yield
    finally:
        OPERATORS.pop(KeyedCounter.kind, None)


def test_keyed_state_past_one_message_is_restored_by_the_next_worker(kafka_bootstrap: str, reader,
                                                                      keyed_counter: None) -> None:
    tag = uuid.uuid4().hex[:8]
    src, dst = f"test.keyed-{tag}.rows.v1", f"test.keyed-{tag}.out.v1"
    topo = parse_topology({"name": f"keyed-{tag}", "input": {"topic": src},
                           "stages": [{"op": KeyedCounter.kind}], "outputs": [{"topic": dst}],
                           "kafka": {"bootstrap": kafka_bootstrap}, "metrics": {"port": 0}, "checkpoint_ms": 0})
    keys = [f"k{i % KEYS}" for i in range(200)]
    first = pa.table({"k": keys})
    a = KafkaRunner(topo, worker=0, metrics_port=-1)
    replay_table(first, src, key=None, bootstrap=kafka_bootstrap)
    a.run(max_rows=200, max_idle_s=60)
    second = pa.table({"k": ["gone", *keys]})
    replay_table(second, src, key=None, bootstrap=kafka_bootstrap)
    b = KafkaRunner(topo, worker=1, metrics_port=-1)
    b.run(max_rows=201, max_idle_s=60)
    rows = [orjson.loads(m.value()) for m in reader(dst, 400, timeout_s=60)]
    last = Counter()
    for r in rows:
        last[r["k"]] = max(last[r["k"]], r["count"])
    expected = Counter(keys) + Counter(keys)
    expected["k0"] = Counter(keys)["k0"]  # 'gone' deleted k0 between the two runs: it counts from 0 again
    assert last == expected
    assert np.sum(list(last.values())) == 395
