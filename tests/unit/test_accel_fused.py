"""Topology stages through the accel layer give exactly what the interpreted stages give."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.operators.fused import FusedStages
from dawnstream.operators.outliers.classify import OutlierClassifier
from dawnstream.operators.registry import build_chain

EXPRS = [
    "x * 2 + y", "x / y", "abs(x - 3)", "x > 1 and y <= 0", "not (x = 2)", "sqrt(x)", "log(y) - x",
    "if(x > y, x, y)", "greatest(x, y)", "least(x, 0.5)", "floor(x) + ceil(y)", "round(x / 3)",
    "-x", "x in (1, 2, 3)", "x is not null", "small + small", "coalesce(x, y)", "x >= 0 or flag",
]
PREDS = ["x > 0", "y < x", "flag", "not flag and x != 2", "abs(y) > 1"]


def batch(draw, n: int) -> pa.RecordBatch:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0, 1.0])
    y = np.where(rng.random(n) < 0.2, rng.choice(specials, n), rng.normal(size=n) * 10)
    x_kind = draw(st.sampled_from(["int64", "float64", "float32", "int32"]))
    x = rng.integers(-5, 5, n).astype(x_kind)
    return pa.record_batch({
        "x": pa.array(x), "y": pa.array(y), "small": pa.array(rng.integers(-128, 127, n).astype(np.int8)),
        "flag": pa.array(rng.random(n) < 0.5), "name": pa.array([f"r{i}" for i in range(n)]),
    })


@st.composite
def chains(draw):
    stages = []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["filter", "derive", "derive", "select"]))
        if kind == "filter":
            stages.append(("filter", {"expr": draw(st.sampled_from(PREDS))}, f"f{i}"))
        elif kind == "derive":
            target = draw(st.sampled_from(["z", "w", "x", "y"]))
            stages.append(("derive", {"columns": {target: draw(st.sampled_from(EXPRS))}}, f"d{i}"))
        else:
            stages.append(("select", {"columns": ["name", "x", "y", "small", "flag"]}, f"s{i}"))
    n = draw(st.sampled_from([0, 1, 2, 10, 1000]))
    return stages, batch(draw, n)


def same(a: list[pa.RecordBatch], b: list[pa.RecordBatch]) -> None:
    ta, tb = pa.Table.from_batches(a) if a else None, pa.Table.from_batches(b) if b else None
    if ta is None or tb is None:
        assert sum(x.num_rows for x in a) == sum(x.num_rows for x in b) == 0
        return
    assert ta.schema == tb.schema
    for name in ta.column_names:
        ca, cb = ta[name].to_numpy(zero_copy_only=False), tb[name].to_numpy(zero_copy_only=False)
        if ca.dtype.kind == "f":
            # Bit-identical, NaN included.
            np.testing.assert_array_equal(ca.view(np.uint8).size, cb.view(np.uint8).size)
            np.testing.assert_array_equal(ca, cb, err_msg=name)
        else:
            assert ca.tolist() == cb.tolist(), name


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains())
def test_fused_stages_equal_the_interpreted_stages(case) -> None:
    stages, b = case
    try:
        expected = build_chain(stages, accel="off").process(b)
    except (TypeError, pa.ArrowException):
        return  # the interpreter rejects this combination (e.g. a non-boolean filter)
    chain = build_chain(stages, accel="cpu")
    assert any(isinstance(op, FusedStages) for op in chain.operators)
    same(chain.process(b), expected)


def test_the_fused_plan_compiles_numeric_expressions_and_keeps_strings_as_arrow_columns() -> None:
    chain = build_chain([("filter", {"expr": "x > 1"}, None), ("derive", {"columns": {"z": "x * 2"}}, None),
                         ("select", {"columns": ["name", "z"]}, None)], accel="cpu")
    (fused,) = chain.operators
    b = pa.record_batch({"x": pa.array([0.0, 2.0, 5.0]), "name": ["a", "b", "c"]})
    text = fused.explain(b.schema)
    assert "fused" in text and "filter __mask" in text, text
    out = fused.process(b)[0]
    assert out.to_pydict() == {"name": ["b", "c"], "z": [4.0, 10.0]}


def test_nulls_and_strings_fall_back_to_the_interpreter() -> None:
    chain = build_chain([("filter", {"expr": "x > 1"}, None)], accel="cpu")
    (fused,) = chain.operators
    with_nulls = pa.record_batch({"x": pa.array([0.0, None, 5.0])})
    assert fused.process(with_nulls)[0].to_pydict() == {"x": [5.0]}
    strings = pa.record_batch({"x": pa.array(["a", "b"])})
    assert "interpreted" in fused.explain(pa.schema([("origin", pa.string())]))
    with pytest.raises((TypeError, pa.ArrowException)):
        fused.process(strings)


def classify_stream(accel: str) -> tuple[list[float], list[bool]]:
    op = OutlierClassifier(metrics="v", classifier="mad", warmup=500, period=2000, reservoir=1000)
    op.accel = accel
    rng = np.random.default_rng(7)
    scores: list[float] = []
    flags: list[bool] = []
    for _ in range(6):
        v = rng.standard_cauchy(3000)
        v[rng.random(3000) < 0.01] = np.nan
        out = op.process(pa.record_batch({"v": v}))[0]
        scores += out.column("score").to_pylist()
        flags += out.column("is_outlier").to_pylist()
    return scores, flags


def test_mad_classifier_outputs_are_identical_with_and_without_accel() -> None:
    s_off, f_off = classify_stream("off")
    s_on, f_on = classify_stream("cpu")
    assert f_on == f_off and sum(f_on) > 0
    np.testing.assert_array_equal(np.array(s_on, dtype=float), np.array(s_off, dtype=float))


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2]), st.sampled_from([0, 50, 500]),
       st.lists(st.sampled_from([0, 1, 7, 300]), min_size=1, max_size=4))
def test_window_count_is_identical_with_the_compiled_count(seed, nkeys, lateness, sizes) -> None:
    from dawnstream.operators.window_count import WindowCount

    rng = np.random.default_rng(seed)
    ops = []
    for accel in ("off", "cpu"):
        op = WindowCount(key=["k", "j"][:nkeys], time="t", size="100ms", lateness=lateness)
        op.accel = accel
        ops.append(op)
    outs: list[list] = [[], []]
    t0 = 0
    for n in sizes:
        keys = [None if v == 0 else f"k{v}" for v in rng.integers(0, 6, n)]
        t = t0 + np.cumsum(rng.integers(-30, 60, n))  # out of order: some rows are late
        t0 = int(t[-1]) if n else t0
        b = pa.record_batch({"k": pa.array(keys, pa.string()), "j": pa.array(rng.integers(0, 3, n)),
                             "t": pa.array(t, pa.int64())})
        for out, op in zip(outs, ops, strict=True):
            out += [r for x in op.process(b) for r in x.to_pylist()]
    for out, op in zip(outs, ops, strict=True):
        out += [r for x in op.flush() for r in x.to_pylist()]
    assert outs[0] == outs[1]
    assert ops[0].late_rows == ops[1].late_rows
    assert bool(ops[1]._exes) == (sum(sizes) > 0)  # the compiled count did the counting


def test_percentile_classifier_flags_are_identical_with_and_without_accel() -> None:
    outs = []
    for accel in ("off", "cpu"):
        op = OutlierClassifier(metrics="v", classifier="percentile", percentile=95.0, warmup=500, period=2000)
        op.accel = accel
        rng = np.random.default_rng(11)
        flags: list[bool] = []
        for _ in range(4):
            v = rng.normal(size=3000)
            v[rng.random(3000) < 0.01] = np.nan
            flags += op.process(pa.record_batch({"v": v}))[0].column("is_outlier").to_pylist()
        outs.append(flags)
        assert (op._pct_exe is not None) == (accel == "cpu")
    assert outs[0] == outs[1] and 0.05 < sum(outs[0]) / len(outs[0]) < 0.15
