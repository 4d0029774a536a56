"""BatchProcessor and LocalRunner: rows in = rows out + dead letters, content-type dispatch."""

from __future__ import annotations

import random

import orjson
import pyarrow as pa
import pytest

from dawnstream.errors import DawnstreamError
from dawnstream.streams.config import parse_topology
from dawnstream.streams.local_runner import LocalRunner
from dawnstream.streams.processor import BatchProcessor
from dawnstream.topics import Message, get_codec
from dawnstream.topics.dlq import dlq_reason

IN = "test.proc.rows.v1"


def topo(stages: list | None = None, codec: str = "json", out_codec: str = "json", **extra: object):
    return parse_topology({"name": "p", "input": {"topic": IN, "codec": codec, **extra},
                           "stages": stages or [], "output": {"topic": "test.proc.out.v1", "codec": out_codec}})


BAD = [b"{oops", b"[]", b"", b'{"y": 1}', b'{"x": "NaN-ish"}', b'{"x": {"a": 1}}', b"\xc3\x28",
       b'{"x": 1, "y": [1]}']


def test_rows_in_equals_rows_out_plus_dead_letters_for_a_passthrough() -> None:
    rng = random.Random(7)
    msgs, n_bad = [], 0
    for i in range(5000):
        if rng.random() < 0.05:
            v = rng.choice(BAD)
            n_bad += 1
        else:
            v = orjson.dumps({"x": rng.uniform(-5, 5), "y": i})
        msgs.append(Message(v, None, [], IN, 0, i))
    res = LocalRunner(topo([{"op": "filter", "expr": "x > -1000"}]), batch_rows=700).run_messages(msgs)
    assert res.rows_in == 5000
    assert res.rows_dead == n_bad == len(res.dead_letters)
    assert res.rows_out == 5000 - n_bad == len(res.records)
    offsets = sorted(int(dlq_reason(r.headers)["dlq.offset"]) for _, r in res.dead_letters)
    assert offsets == sorted(m.offset for m in msgs if m.value in BAD)
    assert all(t == IN + ".dlq" for t, _ in res.dead_letters)


def test_content_type_header_picks_the_codec_per_message() -> None:
    arrow = get_codec("arrow").encode(pa.record_batch({"x": [1.0, 2.0]})).values[0]
    msgs = [
        Message(b'{"x": 0.5}', None, [], IN, 0, 0),
        Message(arrow, None, [("content-type", b"application/vnd.apache.arrow.stream")], IN, 0, 1),
        Message(b'{"x": 3.0}', None, [("content-type", b"application/json")], IN, 0, 2),
        Message(b"whatever", None, [("content-type", b"text/csv")], IN, 0, 3),
        Message(b"\xff\xd8\xff", None, [("content-type", b"image/jpeg")], IN, 0, 4),
    ]
    res = BatchProcessor(topo(), keep_batches=True).process(0, msgs)
    assert sorted(v for b in res.out_batches for v in b.column("x").to_pylist()) == [0.5, 1.0, 2.0, 3.0]
    reasons = [dlq_reason(r.headers)["dlq.error"] for _, r in res.dead_letters]
    assert "unknown content-type 'text/csv'" in reasons[0]
    assert "cannot be decoded on a 'json' topic" in reasons[1]
    assert res.rows_in == 6 and res.rows_out == 4 and res.rows_dead == 2


def test_operator_failure_dead_letters_the_batch_and_keeps_going() -> None:
    # 'upper' of a number is a type error that only shows at run time.
    bp = BatchProcessor(topo([{"op": "derive", "columns": {"u": "upper(x)"}}]))
    res = bp.process(0, [Message(b'{"x": 1}', None, [], IN, 0, 0)])
    assert res.rows_dead == 1 and res.dead_by_stage == {"derive": 1}
    assert "ArrowNotImplementedError" in dlq_reason(res.dead_letters[0][1].headers)["dlq.error"]
    ok = BatchProcessor(topo([{"op": "derive", "columns": {"u": "upper(s)"}}])).process(
        0, [Message(b'{"s": "a"}', None, [], IN, 0, 1)])
    assert ok.rows_out == 1


def test_arrow_output_codec_batches_rows() -> None:
    msgs = [Message(orjson.dumps({"x": i}), None, [], IN, 0, i) for i in range(25)]
    t = parse_topology({"name": "p", "input": {"topic": IN},
                        "output": {"topic": "test.proc.out.v1", "codec": "arrow", "max_rows_per_message": 10}})
    res = LocalRunner(t).run_messages(msgs)
    assert [len(get_codec("arrow").decode([Message(r.value)], __import__("dawnstream").topics.RowSchema()).table)
            for _, r in res.records] == [10, 10, 5]


def test_run_table_checks_columns_and_windows_flush() -> None:
    t = topo([{"op": "window_count", "key": "k", "time": "t", "size": "10ms"}])
    table = pa.table({"k": ["a", "b", "a", "a"], "t": [1, 2, 11, 35]})
    res = LocalRunner(t, batch_rows=2).run_table(table)
    got = [(r["k"], r["count"]) for r in res.table().to_pylist()]  # type: ignore[union-attr]
    assert got == [("a", 1), ("b", 1), ("a", 1), ("a", 1)]
    with pytest.raises(DawnstreamError, match=r"lacks column\(s\) \['t'\]"):
        LocalRunner(t).run_table(pa.table({"k": ["a"]}))


def test_partitions_keep_separate_state() -> None:
    bp = BatchProcessor(topo([{"op": "window_count", "key": "k", "time": "t", "size": "10ms"}]), keep_batches=True)
    bp.process(0, [Message(b'{"k": "a", "t": 1}', None, [], IN, 0, 0)])
    bp.process(1, [Message(b'{"k": "a", "t": 2}', None, [], IN, 1, 0)])
    flushed = bp.flush()
    assert [r["count"] for b in flushed.out_batches for r in b.to_pylist()] == [1, 1]


def test_an_output_with_where_gets_only_the_rows_where_it_is_true() -> None:
    from dawnstream.errors import ConfigError

    doc = {"name": "p", "input": {"topic": IN}, "stages": [],
           "outputs": [{"topic": "test.proc.all.v1"}, {"topic": "test.proc.big.v1", "where": "x > 2"}]}
    msgs = [Message(orjson.dumps({"x": x}), None, [], IN, 0, x) for x in range(5)]
    res = LocalRunner(parse_topology(doc), batch_rows=2).run_messages(msgs)
    by_topic: dict[str, list[int]] = {}
    for topic, rec in res.records:
        by_topic.setdefault(topic, []).append(orjson.loads(rec.value)["x"])
    assert by_topic == {"test.proc.all.v1": [0, 1, 2, 3, 4], "test.proc.big.v1": [3, 4]}
    doc["outputs"][1]["where"] = "x >"
    with pytest.raises(ConfigError) as e:
        parse_topology(doc)
    assert e.value.path.startswith("outputs.1.where")
