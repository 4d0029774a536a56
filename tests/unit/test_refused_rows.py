"""A row a stage refuses costs that row's message only, before any stage moves its state: the batch's
other rows are processed and the state equals a run without the bad message (window_count's event times,
the label stage's gold labels)."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from dawnstream.sources import rotten_tomatoes
from dawnstream.streams.config import parse_topology
from dawnstream.streams.processor import BatchProcessor
from dawnstream.topics import Message
from dawnstream.topics.dlq import dlq_reason

IN = "test.refused.rows.v1"
WINDOW = [{"op": "window_count", "key": "k", "time": "t", "size": "1h"}]


def processor(stages: list, codec: str = "json") -> BatchProcessor:
    return BatchProcessor(parse_topology({
        "name": "refused", "input": {"topic": IN, "codec": codec}, "stages": stages,
        "output": {"topic": "test.refused.out.v1"}}), keep_batches=True)


def msg(row: dict | bytes, offset: int) -> Message:
    return Message(row if isinstance(row, bytes) else orjson.dumps(row), None, [], IN, 0, offset)


def rows(n: int, start_hour: int = 0) -> list[dict]:
    return [{"k": "ab"[i % 2], "t": f"2013-01-01T{(start_hour + i // 10) % 24:02d}:{i % 60:02d}:00"} for i in range(n)]


def counts(bp: BatchProcessor) -> list[dict]:
    return [r for b in bp.flush().out_batches for r in b.to_pylist()]


@pytest.mark.parametrize("bad", [
    {"k": "a", "t": "9999-12-31T23:59:59"},  # the watermark would jump to year 9999
    {"k": "a", "t": "2099-01-01T00:00:00"},
    {"k": "a", "t": "not a time"},
])
def test_an_event_time_far_in_the_future_or_not_a_time_is_a_dead_letter_and_later_rows_count(bad: dict) -> None:
    good = rows(60)
    clean, dirty = processor(WINDOW), processor(WINDOW)
    clean.process(0, [msg(r, i) for i, r in enumerate(good)])
    res = dirty.process(0, [msg(r, i) for i, r in enumerate(good[:30])] + [msg(bad, 30)]
                        + [msg(r, i + 31) for i, r in enumerate(good[30:])])
    assert res.rows_dead == 1
    reason = dlq_reason(res.dead_letters[0][1].headers)
    assert reason["dlq.offset"] == "30" and reason["dlq.stage"] in ("window_count", "decode")
    assert "max_skew" in reason["dlq.error"] or "does not convert to timestamp" in reason["dlq.error"]
    later = [msg(r, 100 + i) for i, r in enumerate(rows(20, start_hour=6))]
    assert dirty.process(0, later).rows_dead == clean.process(0, later).rows_dead == 0
    assert dirty.chain(0).operators[0].late_rows == 0
    assert counts(dirty) == counts(clean)


@pytest.mark.parametrize("t", [2**63 - 1, -(2**63), 1e300, 9.3e18])
def test_a_numeric_time_past_the_int64_range_of_ms_is_a_dead_letter_not_a_silent_drop(t: float) -> None:
    stages = [{"op": "window_count", "key": "k", "time": "t", "size": "1h", "time_unit": "s"}]
    bp = processor(stages)
    res = bp.process(0, [msg({"k": "a", "t": 1_356_998_400}, 0), msg({"k": "a", "t": t}, 1),
                         msg({"k": "a", "t": 1_356_998_460}, 2)])
    assert res.rows_dead == 1 and dlq_reason(res.dead_letters[0][1].headers)["dlq.offset"] == "1"
    assert [r["count"] for r in counts(bp)] == [2]


def test_max_skew_is_a_setting_and_null_turns_it_off() -> None:
    bp = processor([{**WINDOW[0], "max_skew": None}])
    assert bp.process(0, [msg({"k": "a", "t": "2099-01-01T00:00:00"}, 0)]).rows_dead == 0
    with pytest.raises(Exception, match="max_skew"):
        processor([{**WINDOW[0], "max_skew": "soon"}])


def test_an_arrow_message_with_one_refused_row_is_dead_lettered_whole_with_the_row_named() -> None:
    bp = processor(WINDOW, codec="arrow")
    table = pa.table({"k": ["a", "b", "a"], "t": ["2013-01-01T00:00:00", "9999-01-01T00:00:00", "2013-01-01T00:01:00"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    good = pa.table({"k": ["a"], "t": ["2013-01-01T00:02:00"]})
    sink2 = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink2, good.schema) as w:
        w.write_table(good)
    res = bp.process(0, [msg(sink.getvalue().to_pybytes(), 0), msg(sink2.getvalue().to_pybytes(), 1)])
    assert res.rows_dead == 3 and "row 1 of 3" in dlq_reason(res.dead_letters[0][1].headers)["dlq.error"]
    assert [r["count"] for r in counts(bp)] == [1]


@pytest.fixture(scope="module")
def reviews() -> list[dict]:
    t = rotten_tomatoes().slice(0, 900).to_pylist()
    return [{"id": r["id"], "text": r["text"], "gold": ["rotten", "fresh"][r["label"]] if i % 9 == 0 else None}
            for i, r in enumerate(t)]


def test_a_gold_label_that_is_no_class_dead_letters_its_row_only_and_teaches_nothing(reviews) -> None:
    stages = [{"op": "label", "lfs": ["dawnstream.operators.labeling.lfs.sentiment"], "classes": ["rotten", "fresh"],
               "gold": "gold", "refit_every": 100, "class_balance": "estimate"}]
    clean, dirty = processor(stages), processor(stages)
    bad = {**reviews[450], "gold": "maybe"}
    out_clean = [r for k in range(0, 900, 300)
                 for b in clean.process(0, [msg(r, i) for i, r in enumerate(reviews[k:k + 300], k)]).out_batches
                 for r in b.to_pylist()]
    out_dirty, dead = [], 0
    for k in range(0, 900, 300):
        batch = [msg(r, i) for i, r in enumerate(reviews[k:k + 300], k)]
        if k == 300:
            batch.insert(150, msg(bad, 10_000))
        res = dirty.process(0, batch)
        dead += res.rows_dead
        out_dirty += [r for b in res.out_batches for r in b.to_pylist()]
    assert dead == 1
    assert [r["probs"] for r in out_dirty] == [r["probs"] for r in out_clean]
    assert dirty.chain(0).snapshot() == clean.chain(0).snapshot()


# -- window_count's open windows live in the keyed store (one record per (window, key)) --------------------

def _checkpoint(bp: BatchProcessor, offset: int) -> tuple[bytes, dict[bytes, bytes | None]]:
    blob = bp.snapshot(0, offset)
    return blob, dict(bp.keyed_changes(0))


def test_open_windows_past_one_message_checkpoint_key_by_key_and_restore_exactly() -> None:
    stages = [{"op": "window_count", "key": "k", "time": "t", "size": "1h", "max_skew": None}]
    first = [{"k": f"key-{i}", "t": "2013-01-01T00:10:00"} for i in range(120_000)]
    bp = processor(stages)
    bp.process(0, [msg(r, i) for i, r in enumerate(first)])
    blob, records = _checkpoint(bp, 120_000)
    assert len(blob) < 2_000 and len(records) == 120_000 and max(len(v or b"") for v in records.values()) < 16
    later = [msg({"k": "key-7", "t": "2013-01-01T00:20:00"}, 120_000), msg({"k": "x", "t": "2013-01-01T02:00:00"},
                                                                             120_001)]
    resumed = processor(stages)
    assert resumed.restore(0, blob) == 120_000
    resumed.apply_keyed(0, records)
    got = resumed.process(0, later)
    want = bp.process(0, later)
    assert got.out_batches[0].to_pylist() == want.out_batches[0].to_pylist()
    assert {r["k"]: r["count"] for r in got.out_batches[0].to_pylist()}["key-7"] == 2
    _, after = _checkpoint(resumed, 120_002)  # the closed window's records are deleted, the open one's written
    assert sum(v is None for v in after.values()) == 120_000 and after[b'p0/window_count/[1357005600000,"x"]'] == b"1"


def test_counts_from_a_blob_without_a_store_move_into_the_store_at_the_next_checkpoint() -> None:
    import pyarrow as pa

    from dawnstream.operators.window_count import WindowCount
    from dawnstream.streams.store import KeyedStore

    old = WindowCount(key="k", time="t", size="1h", max_skew=None)  # no store: counts travel in the blob
    old.process(pa.record_batch({"k": ["a", "b", "a"], "t": [1_000, 2_000, 3_000]}))
    assert old._changed == set()  # nothing tracked without a store
    new = WindowCount(key="k", time="t", size="1h", max_skew=None)
    new.store = KeyedStore()
    new.restore(old.snapshot())
    blob = new.snapshot()
    assert b"counts" not in blob and dict(new.store.changes()) == {b'[0,"a"]': b"2", b'[0,"b"]': b"1"}
