"""Messages built to break the decoder: deep nesting, integers past int64 or 2**53, type drift.

Rule under test: whatever a message contains, it ends as a dead letter with a reason (never as an
exception out of the worker), and a learned column type never changes after it was learned.
"""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from dawnstream.streams.config import parse_topology
from dawnstream.streams.processor import BatchProcessor
from dawnstream.topics import Message
from dawnstream.topics.dlq import dlq_reason

IN = "test.hostile.rows.v1"


def processor(stages: list | None = None, schema: dict | None = None) -> BatchProcessor:
    return BatchProcessor(parse_topology({
        "name": "hostile", "input": {"topic": IN, "schema": schema or {}},
        "stages": stages or [], "output": {"topic": "test.hostile.out.v1"}}), keep_batches=True)


def msg(value: bytes, offset: int) -> Message:
    return Message(value, None, [], IN, 0, offset)


def nested(depth: int) -> bytes:
    """A row whose column ``n`` nests ``depth`` objects (the whole document is depth + 1 deep)."""
    return b'{"x":1,"n":' + b'{"a":' * (depth - 1) + b"1" + b"}" * depth


@pytest.mark.parametrize("depth", [2, 990, 1000, 1022, 1023, 1024, 1025, 5000])
def test_deep_nesting_is_a_dead_letter_on_both_sides_of_the_parser_limit(depth: int) -> None:
    # orjson parses up to 1024 levels; the issue's repro (1001 deep) used to raise RecursionError
    # out of the duplicate-key check and crash-loop the partition.
    bp = processor()
    good = [msg(b'{"x": 1}', 0), msg(b'{"x": 2}', 2)]
    res = bp.process(0, [good[0], msg(nested(depth), 1), good[1]])
    assert res.rows_dead == 1 and res.rows_out == 2
    reason = dlq_reason(res.dead_letters[0][1].headers)
    assert reason["dlq.offset"] == "1" and reason["dlq.stage"] == "decode"
    assert "nested" in reason["dlq.error"] or "invalid JSON" in reason["dlq.error"]


def test_the_issue_repro_message_is_dead_lettered() -> None:
    bad = b'{"x":1,"n":' + b'{"a":' * 1000 + b"1" + b"}" * 1001
    res = processor().process(0, [msg(bad, 0)])
    assert res.rows_dead == 1 and res.rows_out == 0


def test_a_codec_that_raises_dead_letters_only_the_messages_that_make_it_raise(monkeypatch) -> None:
    bp = processor()
    codec = bp.codecs["json"]
    real = codec.decode

    def fragile(messages, schema):  # a decoder bug triggered by one message's content
        if any(m.value and b"boom" in m.value for m in messages):
            raise RecursionError("maximum recursion depth exceeded")
        return real(messages, schema)

    monkeypatch.setattr(codec, "decode", fragile)
    res = bp.process(0, [msg(b'{"x": 1}', 0), msg(b'{"x": "boom"}', 1), msg(b'{"x": 3}', 2)])
    assert [b.column("x").to_pylist() for b in res.out_batches] == [[1, 3]]
    (dead,) = res.dead_letters
    why = dlq_reason(dead[1].headers)
    assert why["dlq.offset"] == "1" and "RecursionError" in why["dlq.error"]


BIG = 1180591620717411303424  # 2**70


def test_an_integer_past_int64_is_a_dead_letter_and_the_learned_type_stays() -> None:
    bp = processor()
    bp.process(0, [msg(b'{"id": 5, "v": 1.5}', 0)])
    assert bp.schema(0).fields["id"] == pa.int64()
    res = bp.process(0, [msg(orjson.dumps({"id": 6, "v": 1.0}), 1), msg(b'{"id": %d, "v": 1.0}' % BIG, 2)])
    assert res.rows_dead == 1
    why = dlq_reason(res.dead_letters[0][1].headers)["dlq.error"]
    assert "out of range for int64" in why and "input.schema" in why
    later = bp.process(0, [msg(b'{"id": 6, "v": 2.0}', 3), msg(b'{"id": 9007199254740993, "v": 2.0}', 4)])
    assert bp.schema(0).fields["id"] == pa.int64()
    assert [r.value for _, enc in later.outputs for r in enc.records()] == [
        b'{"id":6,"v":2.0}', b'{"id":9007199254740993,"v":2.0}']


def test_the_learned_type_survives_a_snapshot_and_both_partitions_agree() -> None:
    bp = processor()
    for p in (0, 1):
        bp.process(p, [msg(b'{"id": 5}', 0)])
    bp.process(0, [msg(b'{"id": %d}' % BIG, 1)])
    data = bp.snapshot(0, 2)
    fresh = processor()
    fresh.restore(0, data)
    assert fresh.schema(0).fields["id"] == bp.schema(1).fields["id"] == pa.int64()


@pytest.mark.bitexact
def test_once_learned_a_fraction_in_an_integer_column_is_rejected_whatever_the_batch_cut() -> None:
    rows = [b'{"k": 6.0}', b'{"k": 2.5}', b'{"k": 7}']
    together, one = processor(), processor()
    for bp in (together, one):
        bp.process(0, [msg(b'{"k": 1}', 0)])  # learns k: int64
    res_together = together.process(0, [msg(r, i + 1) for i, r in enumerate(rows)])
    apart = [one.process(0, [msg(r, i + 1)]) for i, r in enumerate(rows)]
    out_together = [v for b in res_together.out_batches for v in b.column("k").to_pylist()]
    out_apart = [v for res in apart for b in res.out_batches for v in b.column("k").to_pylist()]
    assert out_together == out_apart == [6, 7]
    assert res_together.rows_dead == sum(r.rows_dead for r in apart) == 1
    assert together.schema(0).fields["k"] == one.schema(0).fields["k"] == pa.int64()


def test_numeric_columns_are_learned_as_float64_and_reject_inexact_integers() -> None:
    # The chain compares t with a number, so t is learned as float64 even when the first row says 20.
    bp = processor([{"op": "filter", "expr": "t > 0"}])
    res = bp.process(0, [msg(b'{"t": 20}', 0), msg(b'{"t": 20.5}', 1), msg(b'{"t": 9007199254740993}', 2)])
    assert bp.schema(0).fields["t"] == pa.float64()
    assert [v for b in res.out_batches for v in b.column("t").to_pylist()] == [20.0, 20.5]
    assert "no exact double value" in dlq_reason(res.dead_letters[0][1].headers)["dlq.error"]


def test_a_declared_float_column_rejects_integers_it_cannot_hold_exactly() -> None:
    bp = processor(schema={"t": "float64"})
    res = bp.process(0, [msg(b'{"t": 9007199254740992}', 0), msg(b'{"t": 9007199254740993}', 1)])
    assert res.rows_out == 1 and res.rows_dead == 1
    assert "declared double" in dlq_reason(res.dead_letters[0][1].headers)["dlq.error"]


# -- a learned type depends on the rows, not on the decode path or the batch cut (issue: one malformed
# -- message in a partition's first batch retyped its time column as string for good) -----------------

FLIGHT = b'{"carrier": "UA", "time_hour": "2013-01-01T05:00:00+00:00", "dep_delay": 2.0, "flight": 1545}'


def learned(bp: BatchProcessor) -> dict[str, str]:
    return {k: str(t) for k, t in bp.schema(0).fields.items()}


def test_a_malformed_message_in_the_first_batch_does_not_change_what_is_learned() -> None:
    clean, dirty = processor(), processor()
    rows = [msg(FLIGHT, i) for i in range(40)]
    clean.process(0, rows)
    res = dirty.process(0, [msg(b'{"carrier": "UA", "time_hour": ', 0), *rows[1:]])
    assert res.rows_dead == 1 and res.rows_out == 39
    assert learned(dirty) == learned(clean) and learned(clean)["time_hour"].startswith("timestamp")


def test_a_window_over_the_learned_time_keeps_working_after_a_malformed_first_message() -> None:
    bp = processor([{"op": "window_count", "key": "carrier", "time": "time_hour", "size": "1h"}])
    first = bp.process(0, [msg(b"not json", 0), *(msg(FLIGHT, i) for i in range(1, 30))])
    later = bp.process(0, [msg(FLIGHT.replace(b"05:00", b"07:00"), i) for i in range(30, 60)])
    assert first.rows_dead == 1 and later.rows_dead == 0


HOSTILE_FIRST_ROWS = [
    b'{"x": 1, "t": "2013-01-01T05:00:00Z", "s": "a"}',
    b'{"x": 123456789012345678901234567890, "t": "2013-01-01T06:00:00Z"}',  # past int64: taught nothing
    b'{"x": 2.5, "t": "2013-01-01T07:00:00Z"}',  # a fraction after x was learned int64: dead letter
    b'{"x": 3, "t": "not a time", "s": 4}',
    b"{broken",
    b'{"y": true, "x": 4}',
    b'{"x": null, "z": null}',
    b'{"x": 5, "t": "2013-01-01 08:00:00", "z": "late"}',
]


@pytest.mark.bitexact
@pytest.mark.parametrize("cuts", [[], [1], [2], [1, 2, 3, 4, 5, 6, 7], [3, 5], [4]])
@pytest.mark.parametrize("first", [0, 1, 2, 4])
def test_learned_types_and_dead_letters_do_not_depend_on_the_batch_cut(cuts: list[int], first: int) -> None:
    rows = HOSTILE_FIRST_ROWS[first:] + HOSTILE_FIRST_ROWS[:first]

    def run(edges: list[int]) -> tuple[dict[str, str], list[int], list[dict]]:
        bp = processor()
        dead: list[int] = []
        out: list[dict] = []
        bounds = [0, *edges, len(rows)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            res = bp.process(0, [msg(rows[i], i) for i in range(a, b)])
            dead += [int(dlq_reason(d[1].headers)["dlq.offset"]) for d in res.dead_letters]
            # (a batch's output has the columns known by then: later ones are absent, not null)
            out += [{k: v for k, v in r.items() if v is not None}
                    for batch in res.out_batches for r in batch.to_pylist()]
        return learned(bp), sorted(dead), out

    whole = run([])
    assert run(cuts) == whole


def test_a_row_with_ten_thousand_keys_is_a_dead_letter_and_teaches_nothing() -> None:
    bp = processor()
    wide = orjson.dumps({"x": 1, **{f"k{i}": i for i in range(10_000)}})
    res = bp.process(0, [msg(b'{"x": 1}', 0), msg(wide, 1), msg(b'{"x": 2}', 2)])
    assert res.rows_dead == 1 and res.rows_out == 2
    assert "input.max_columns" in dlq_reason(res.dead_letters[0][1].headers)["dlq.error"]
    assert list(bp.schema(0).fields) == ["x"]


def test_declared_columns_do_not_count_against_the_learned_limit_and_the_limit_is_configurable() -> None:
    bp = BatchProcessor(parse_topology({
        "name": "wide", "input": {"topic": IN, "schema": {f"d{i}": "int64" for i in range(5)}, "max_columns": 3},
        "stages": [], "output": {"topic": "test.hostile.out.v1"}}), keep_batches=True)
    ok = orjson.dumps({**{f"d{i}": i for i in range(5)}, "a": 1, "b": 2, "c": 3})
    declared = {f"d{i}": i for i in range(5)}
    res = bp.process(0, [msg(ok, 0), msg(orjson.dumps({**declared, "e": 1}), 1),
                         msg(orjson.dumps({**declared, "a": 4}), 2)])
    assert res.rows_out == 2 and res.rows_dead == 1
    assert "at most 3" in dlq_reason(res.dead_letters[0][1].headers)["dlq.error"]


def test_an_integer_past_64_bits_in_a_new_column_is_a_dead_letter_not_a_float_column() -> None:
    # orjson hands 2**70 over as 1.18e21: it must not make the column float64 for good
    bp = processor()
    res = bp.process(0, [msg(b'{"x": 1, "big": %d}' % 2**70, 0), msg(b'{"x": 2, "big": 5}', 1)])
    assert res.rows_dead == 1 and "beyond int64" in dlq_reason(res.dead_letters[0][1].headers)["dlq.error"]
    assert str(bp.schema(0).fields["big"]) == "int64"
    assert processor().process(0, [msg(b'{"x": 1, "f": 1e300}', 0)]).rows_dead == 0  # a float literal is a float
