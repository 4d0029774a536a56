"""``group_by``: the split into two jobs, the partition of each key, and windows after a repartition whose
watermark follows the slowest upstream partition (property-tested against a batch group-by)."""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.errors import ConfigError
from dawnstream.operators.group_by import SOURCE_PARTITION, GroupBy, partition_of
from dawnstream.operators.window_count import WindowCount
from dawnstream.streams.config import parse_topology
from dawnstream.streams.processor import BatchProcessor
from dawnstream.topics import Message

H = 3_600_000


def doc(stages: list[dict], partitions: int = 4) -> dict:
    return {"name": "Flights_By.Origin", "input": {"topic": "sensors.flights.rows.v1", "partitions": partitions,
                                                  "key_field": "tailnum", "schema": {"origin": "string"}},
            "stages": stages, "outputs": [{"topic": "sensors.flights.counts.v1", "key_field": "origin"}],
            "metrics": {"port": 9480}}


def test_a_group_by_splits_the_job_at_a_repartition_topic_of_its_own() -> None:
    window = {"op": "window_count", "key": "origin", "time": "t", "size": "1h"}
    t = parse_topology(doc([{"op": "filter", "expr": "delay > 0"}, {"op": "group_by", "key": "origin"}, window]))
    rekey, after = t.split()
    topic = "state.flights_by-origin.by-origin.v1"
    assert rekey.name == "Flights_By.Origin.by-origin" and [s.op for s in rekey.stages] == ["filter"]
    out = rekey.outputs[0]
    assert (out.topic, out.codec, out.partitions, out.partition_by) == (topic, "arrow", 4, "origin")
    assert rekey.input == t.input and rekey.metrics.port == 9580  # its own metrics endpoint
    assert after.name == t.name and after.outputs == t.outputs and after.input.topic == topic
    assert after.input.codec == "arrow" and after.input.partitions == 4 and after.input.row_schema == {}
    assert after.stage_tuples() == [("window_count", {**{k: v for k, v in window.items() if k != "op"},
                                                      "upstream_partitions": 4}, None)]
    assert parse_topology(doc([window])).split() == [parse_topology(doc([window]))]
    with pytest.raises(ConfigError, match="one group_by per topology"):
        parse_topology(doc([{"op": "group_by", "key": "a"}, {"op": "group_by", "key": "b"}])).split()
    with pytest.raises(ConfigError, match="stages.0.key"):
        parse_topology(doc([{"op": "group_by", "key": ""}]))


@settings(max_examples=examples(60), deadline=None)
@given(keys=st.lists(st.one_of(st.none(), st.text(max_size=6), st.integers(-5, 5).map(str)), max_size=40),
       n=st.integers(1, 8), dictionary=st.booleans())
def test_every_row_of_a_key_goes_to_one_partition_whatever_the_batch(keys, n, dictionary) -> None:
    arr = pa.array(keys, pa.string())
    got = partition_of(pa.record_batch({"k": arr.dictionary_encode() if dictionary else arr}), "k", n)
    want = [zlib.crc32(k.encode()) % n if k is not None else 0 for k in keys]
    assert got.tolist() == want and (got >= 0).all() and (got < n).all()


def test_the_rekey_half_writes_each_partitions_rows_with_their_upstream_partition() -> None:
    t = parse_topology(doc([{"op": "group_by", "key": "origin"}]))
    rekey, _ = t.split()
    bp = BatchProcessor(rekey)
    rows = [b'{"origin": "%s", "n": %d}' % (o.encode(), i) for i, o in enumerate(["JFK", "LGA", "EWR", "JFK"] * 5)]
    res = bp.process(2, [Message(v, b"tail", [], t.input.topic, 2, i) for i, v in enumerate(rows)])
    (topic, enc), = res.outputs
    assert topic == rekey.outputs[0].topic and enc.partitions is not None
    seen = {}
    for value, p in zip(enc.values, enc.partitions, strict=True):
        batch = pa.ipc.open_stream(value).read_all()
        assert set(batch.column(SOURCE_PARTITION).to_pylist()) == {2}
        for o in set(batch.column("origin").to_pylist()):
            assert seen.setdefault(o, p) == p  # one partition per key
        assert p == zlib.crc32(batch.column("origin")[0].as_py().encode()) % 4
    assert sorted(seen) == ["EWR", "JFK", "LGA"]
    assert GroupBy(key="origin").process(pa.record_batch({"origin": ["x"]}))[0].num_rows == 1


@settings(max_examples=examples(60), deadline=None)
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=4), seed=st.integers(0, 2**16),
       cuts=st.lists(st.integers(1, 25), min_size=1, max_size=8))
def test_windows_after_a_repartition_count_every_row_of_in_order_upstream_partitions(lengths, seed, cuts) -> None:
    # Each upstream partition sends its rows in event-time order; they interleave arbitrarily (one may run
    # days ahead of another). The counts must equal a batch group-by, however the stream is cut.
    rng = np.random.default_rng(seed)
    parts = [np.sort(rng.integers(0, 72, n)) * H // 2 for n in lengths]
    order = rng.permutation(np.repeat(np.arange(len(parts)), lengths))
    nxt = [0] * len(parts)
    src, t, key = [], [], []
    for p in order.tolist():
        src.append(p)
        t.append(int(parts[p][nxt[p]]))
        key.append(["JFK", "LGA"][(nxt[p] + p) % 2])
        nxt[p] += 1
    op = WindowCount(key="k", time="t", size="1h", upstream_partitions=len(parts))
    out, i, c = [], 0, 0
    while i < len(t):
        j = min(len(t), i + cuts[c % len(cuts)])
        batch = pa.record_batch({"k": key[i:j], "t": pa.array(t[i:j], pa.int64()),
                                 SOURCE_PARTITION: pa.array(src[i:j], pa.int32())})
        out += op.process(batch)
        i, c = j, c + 1
    out += op.flush()
    got = sorted((int(b.column("window_start")[r].value), b.column("k")[r].as_py(), b.column("count")[r].as_py())
                 for b in out for r in range(b.num_rows))
    want: dict[tuple[int, str], int] = {}
    for ti, ki in zip(t, key, strict=True):
        want[(ti // H * H, ki)] = want.get((ti // H * H, ki), 0) + 1
    assert got == sorted((w, k, n) for (w, k), n in want.items()) and op.late_rows == 0


def test_an_upstream_partition_with_no_rows_holds_no_window_open() -> None:
    def batch(src: int, hours: list[int]) -> pa.RecordBatch:
        return pa.record_batch({"k": ["JFK"] * len(hours), "t": pa.array([h * H for h in hours], pa.int64()),
                                SOURCE_PARTITION: pa.array([src] * len(hours), pa.int32())})

    waits = WindowCount(key="k", time="t", size="1h", upstream_partitions=3)
    assert waits.process(batch(0, [0, 1, 5])) == [] and waits.process(batch(2, [0, 4, 5])) == []
    assert waits.watermark is None  # partition 1 may still send hour 0
    told = WindowCount(key="k", time="t", size="1h", upstream_partitions=3)
    told.upstream_active = {0, 2}  # the runner read partition 1's offsets: it holds nothing
    told.process(batch(0, [0, 1, 5]))
    out = told.process(batch(2, [0, 4, 5]))
    assert [(b.column("window_start")[i].value // H, b.column("count")[i].as_py()) for b in out
            for i in range(b.num_rows)] == [(0, 2), (1, 1), (4, 1)] and told.watermark == 5 * H
