"""Operators against simple reference implementations (hypothesis), plus snapshot/restore."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.errors import ConfigError
from dawnstream.operators.base import Chain
from dawnstream.operators.derive import Derive
from dawnstream.operators.filter import Filter
from dawnstream.operators.registry import build_chain
from dawnstream.operators.select import Select
from dawnstream.operators.window_count import WindowCount, parse_duration_ms

row = st.fixed_dictionaries({
    "k": st.sampled_from(["a", "b", "c", None]),
    "x": st.one_of(st.none(), st.integers(-100, 100)),
    "t": st.integers(0, 10_000),
})
SCHEMA = pa.schema([("k", pa.string()), ("x", pa.int64()), ("t", pa.int64())])


def batches_of(rows: list[dict], cuts: list[int]) -> list[pa.RecordBatch]:
    bounds = sorted({0, len(rows), *[c % (len(rows) + 1) for c in cuts]})
    return [pa.RecordBatch.from_pylist(rows[a:b], schema=SCHEMA) for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(row, max_size=60), st.integers(-100, 100))
def test_filter_matches_reference(rows: list[dict], c: int) -> None:
    out = Filter(expr=f"x > {c} and k != 'c'").process(pa.RecordBatch.from_pylist(rows, schema=SCHEMA))[0]
    expected = [r for r in rows if r["x"] is not None and r["x"] > c and r["k"] is not None and r["k"] != "c"]
    assert out.to_pylist() == expected


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(row, max_size=60))
def test_derive_matches_reference(rows: list[dict]) -> None:
    out = Derive(columns={"y": "x * 3 - t", "pos": "y > 0", "x": "coalesce(x, 0)"}).process(
        pa.RecordBatch.from_pylist(rows, schema=SCHEMA))[0]
    exp_y = [None if r["x"] is None else r["x"] * 3 - r["t"] for r in rows]
    assert out.column("y").to_pylist() == exp_y
    assert out.column("pos").to_pylist() == [None if y is None else y > 0 for y in exp_y]
    assert out.column("x").to_pylist() == [r["x"] or 0 for r in rows]
    assert out.schema.names == ["k", "x", "t", "y", "pos"]


def test_select_and_rename() -> None:
    b = pa.record_batch({"a": [1, 2], "b": ["x", "y"], "c": [0.5, 0.25]})
    out = Select(columns=["c", "a"], rename={"c": "ratio"}).process(b)[0]
    assert out.schema.names == ["ratio", "a"] and out.column("ratio").to_pylist() == [0.5, 0.25]
    with pytest.raises(KeyError):
        Select(columns=["zzz"]).process(b)


def ref_window_counts(rows: list[dict], size: int) -> Counter:
    return Counter((r["t"] // size * size, r["k"]) for r in rows)


@pytest.mark.bitexact
@settings(max_examples=examples(150), deadline=None)
@given(st.lists(row, max_size=80), st.lists(st.integers(0, 80), max_size=4), st.sampled_from([1, 7, 100, 2500]))
def test_window_count_matches_reference_in_order(rows: list[dict], cuts: list[int], size: int) -> None:
    rows = sorted(rows, key=lambda r: r["t"])  # in-order stream: nothing is late
    op = WindowCount(key="k", time="t", size=size)
    out = [b for batch in batches_of(rows, cuts) for b in op.process(batch)] + op.flush()
    got = Counter()
    for b in out:
        for r in b.to_pylist():
            key = (round(r["window_start"].timestamp() * 1000), r["k"])
            assert key not in got, "a window was emitted twice"
            got[key] = r["count"]
    assert got == ref_window_counts(rows, size)


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(row, min_size=1, max_size=80), st.integers(1, 79), st.sampled_from([10, 500]))
def test_window_count_snapshot_restore_is_transparent(rows: list[dict], cut: int, size: int) -> None:
    rows = sorted(rows, key=lambda r: r["t"])
    cut = cut % len(rows)
    first = pa.RecordBatch.from_pylist(rows[:cut], schema=SCHEMA)
    second = pa.RecordBatch.from_pylist(rows[cut:], schema=SCHEMA)
    straight = WindowCount(key="k", time="t", size=size)
    a = straight.process(first) + straight.process(second) + straight.flush()
    left = WindowCount(key="k", time="t", size=size)
    b = left.process(first)
    right = WindowCount(key="k", time="t", size=size)
    right.restore(left.snapshot())
    b += right.process(second) + right.flush()
    flat = lambda bs: [r for x in bs for r in x.to_pylist()]  # noqa: E731
    assert flat(a) == flat(b)


def test_window_count_late_rows_are_dropped_and_counted() -> None:
    op = WindowCount(key="k", time="t", size=10)
    op.process(pa.record_batch({"k": ["a"], "t": [5]}))
    out = op.process(pa.record_batch({"k": ["a"], "t": [25]}))  # closes [0,10) and [10,20)
    assert [r["count"] for b in out for r in b.to_pylist()] == [1]
    op.process(pa.record_batch({"k": ["a"], "t": [3]}))
    assert op.late_rows == 1


def test_window_count_accepts_timestamps_and_iso_strings() -> None:
    ts = pa.array([0, 3_600_000, 7_200_001], pa.timestamp("ms", tz="UTC"))
    for col in (ts, pa.array(["1970-01-01T00:00:00", "1970-01-01T01:00:00", "1970-01-01T02:00:00.001"])):
        op = WindowCount(key="k", time="t", size="1h")
        out = op.process(pa.record_batch({"k": ["x", "x", "x"], "t": col})) + op.flush()
        assert [r["count"] for b in out for r in b.to_pylist()] == [1, 1, 1]


def test_restore_rejects_other_kinds() -> None:
    with pytest.raises(ValueError, match="cannot restore"):
        WindowCount(key="k", time="t", size=10).restore(Filter(expr="x > 1").snapshot())


@pytest.mark.parametrize("text, ms", [("500ms", 500), ("30s", 30_000), ("15m", 900_000), ("1h", 3_600_000),
                                      ("1d", 86_400_000), (250, 250)])
def test_durations(text: object, ms: int) -> None:
    assert parse_duration_ms(text) == ms  # type: ignore[arg-type]


def test_chain_required_columns_follow_scoping() -> None:
    chain = build_chain([("derive", {"columns": {"y": "x + 1"}}, None), ("filter", {"expr": "y > z"}, None),
                         ("select", {"columns": ["y"]}, None), ("filter", {"expr": "y > 0"}, None)])
    assert chain.required_columns() == {"x", "z"}
    assert chain.numeric_columns() == {"x"}


def test_chain_stats_and_unique_names() -> None:
    chain = Chain([Filter(expr="x > 0", name="pos"), Derive(columns={"y": "x * 2"})])
    stats: dict = {}
    out = chain.process(pa.record_batch({"x": [-1, 1, 2]}), stats)
    assert out[0].column("y").to_pylist() == [2, 4]
    assert stats["pos"][1:] == [3, 2] and stats["derive"][1:] == [2, 2]
    with pytest.raises(ValueError, match="unique"):
        Chain([Filter(expr="x > 0"), Filter(expr="x > 1")])


def test_unknown_operator_and_parameters_fail_with_path() -> None:
    with pytest.raises(ConfigError, match=r"stages\.0\.op: unknown operator 'filtr'"):
        build_chain([("filtr", {}, None)])
    with pytest.raises(ConfigError, match=r"stages\.0\.expr: required parameter"):
        build_chain([("filter", {}, None)])
    with pytest.raises(ConfigError, match=r"stages\.1\.size"):
        build_chain([("filter", {"expr": "x > 1"}, None),
                     ("window_count", {"key": "k", "time": "t", "size": "soon"}, None)])
