"""1,000,000 rows through a filter topology, JSON rows and Arrow batches, with exact counts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.streams.runner import KafkaRunner
from dawnstream.topics import Message, RowSchema, get_codec
from dawnstream.topics.spec import TopicSpec

N = 1_000_000


def table() -> pa.Table:
    i = np.arange(N, dtype=np.int64)
    return pa.table({"id": i, "x": ((i * 7919) % 1000 - 500).astype(np.float64),
                     "k": pa.array(np.array(["a", "b", "c", "d"])[i % 4])})


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "arrow"])
def test_million_rows_filter_exact_counts(fmt: str, kafka_bootstrap: str, topic_name, reader) -> None:
    src, dst = topic_name("rows", f"m{fmt}"), topic_name("out", f"m{fmt}")
    t = table()
    expected = t.filter(pc.greater_equal(t["x"], 0))
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=src, partitions=2)])
    sent = replay_table(t, src, fmt=fmt, batch_rows=10_000, key="k" if fmt == "json" else None,
                        bootstrap=kafka_bootstrap)
    assert sent.rows == N
    topo = parse_topology({
        "name": f"million-{fmt}-{src}", "input": {"topic": src, "codec": fmt, "partitions": 2},
        "stages": [{"op": "filter", "expr": "x >= 0"}],
        "outputs": [{"topic": dst, "codec": fmt, "partitions": 2}],
        "batch": {"max_messages": 10_000 if fmt == "json" else 20},
        "kafka": {"bootstrap": kafka_bootstrap}, "metrics": {"port": 0},
    })
    stats = KafkaRunner(topo).run(max_rows=N, max_idle_s=60)
    assert (stats.rows_in, stats.rows_out, stats.rows_dead) == (N, expected.num_rows, 0)
    if fmt == "json":
        msgs = reader(dst, expected.num_rows, timeout_s=120)
        assert len(msgs) == expected.num_rows
        d = get_codec("json").decode([Message(m.value()) for m in msgs], RowSchema())
    else:
        msgs = reader(dst, stats.records_out, timeout_s=120)
        assert len(msgs) == stats.records_out
        d = get_codec("arrow").decode([Message(m.value()) for m in msgs], RowSchema())
    assert not d.rejected and d.table is not None
    assert d.table.num_rows == expected.num_rows
    # Every surviving row exactly once: same ids, same sum.
    assert pc.sum(d.table["id"]).as_py() == pc.sum(expected["id"]).as_py()
    assert pc.count_distinct(d.table["id"]).as_py() == expected.num_rows
    assert pc.min(d.table["x"]).as_py() >= 0
