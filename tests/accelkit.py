"""Hypothesis strategies for accel programs and batches, shared by the CPU and CUDA backend tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from dawnstream.accel.ir import (
    Aggregate,
    Filter,
    GroupAggregate,
    Map,
    Program,
    Quantile,
    Scan,
    TopK,
    binary,
    cast,
    col,
    param,
    unary,
    where,
)

SIZES = st.sampled_from([0, 1, 2, 10, 100, 1000])
SMALL_SIZES = st.sampled_from([0, 1, 2, 10, 33, 100])
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.5]


def values(draw, dtype: str, n: int) -> np.ndarray:
    kind = draw(st.sampled_from(["random", "special", "equal"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == "bool":
        return rng.random(n) < 0.5
    if dtype.startswith("int"):
        if kind == "equal":
            return np.full(n, int(rng.integers(-5, 5)), dtype=dtype)
        return rng.integers(-1000, 1000, n).astype(dtype)
    if kind == "special":
        return rng.choice(np.array(SPECIAL), n).astype(dtype)
    if kind == "equal":
        return np.full(n, rng.normal(), dtype=dtype)
    return (rng.normal(size=n) * 100).astype(dtype)


FLOAT_FNS = ["abs", "neg", "sqrt", "exp", "log", "log10", "floor", "ceil", "round", "isnan", "isfinite"]
CAST_TO = ["float64", "float32", "int64", "int32", "int8", "uint8", "uint64"]
BIN_FNS = ["add", "sub", "mul", "div", "lt", "ge", "eq", "ne", "max", "min", "fmax", "fmin"]


@st.composite
def expressions(draw, cols: dict[str, str], depth: int = 2):
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        if draw(st.booleans()):
            name = draw(st.sampled_from(sorted(cols)))
            return col(name, cols[name])
        return draw(st.sampled_from([cast(1.5, "float64"), cast(3, "int64"), cast(-2.0, "float32")]))
    kind = draw(st.sampled_from(["unary", "binary", "binary", "where", "cast"]))
    a = draw(expressions(cols, depth - 1))
    if kind == "unary":
        fn = draw(st.sampled_from(FLOAT_FNS))
        if a.dtype == "bool":
            return unary("not", a)
        return unary(fn, a)
    if kind == "cast":
        return cast(a, draw(st.sampled_from(CAST_TO))) if a.dtype != "bool" else a
    b = draw(expressions(cols, depth - 1))
    if kind == "where":
        c = draw(expressions(cols, depth - 1))
        cond = c if c.dtype == "bool" else binary("gt", c, 0.0)
        if "bool" in (a.dtype, b.dtype) and a.dtype != b.dtype:
            return cond
        return where(cond, a, b)
    if a.dtype == "bool" and b.dtype == "bool":
        return binary(draw(st.sampled_from(["and", "or", "eq", "ne"])), a, b)
    if "bool" in (a.dtype, b.dtype):
        a, b = (cast(a, "int64") if a.dtype == "bool" else a), (cast(b, "int64") if b.dtype == "bool" else b)
    return binary(draw(st.sampled_from(BIN_FNS)), a, b)


@st.composite
def programs(draw, sizes=SIZES, max_ops: int = 6):
    cols = {"a": draw(st.sampled_from(["float64", "float32", "int64", "int32"])),
            "b": draw(st.sampled_from(["float64", "int64", "bool"])), "k": "int64"}
    n = draw(sizes)
    data = {c: values(draw, t, n) for c, t in cols.items()}
    data["k"] = np.random.default_rng(n).integers(0, 8, n)
    ops: list = []
    avail = dict(cols)
    for i in range(draw(st.integers(1, max_ops))):
        e = draw(expressions(avail))
        kind = draw(st.sampled_from(["map", "map", "filter", "agg", "group", "scan", "quantile", "topk"]))
        num = e if e.dtype != "bool" else cast(e, "float64")
        pred = e if e.dtype == "bool" else binary("gt", e, 0.0)
        if kind == "map":
            ops.append(Map(f"m{i}", e))
            avail[f"m{i}"] = e.dtype
        elif kind == "filter":
            ops.append(Filter(f"f{i}", pred, ((f"kept{i}", num),)))
        elif kind == "agg":
            fn = draw(st.sampled_from(["count", "sum", "mean", "min", "max"]))
            where_ = pred if draw(st.booleans()) else None
            ops.append(Aggregate(f"s{i}", fn, None if fn == "count" else num, where_))
        elif kind == "group":
            fn = draw(st.sampled_from(["count", "sum", "mean", "min", "max"]))
            ops.append(GroupAggregate(f"g{i}", fn, col("k", "int64"), None if fn == "count" else num, 8,
                                      pred if draw(st.booleans()) else None))
        elif kind == "scan":
            ops.append(Scan(f"r{i}", draw(st.sampled_from(["cumsum", "running_mean", "cumcount"])), num))
        elif kind == "quantile":
            ops.append(Quantile(f"q{i}", num, draw(st.floats(0, 1)),
                                draw(st.sampled_from(["linear", "weibull", "median"]))))
            ops.append(Map(f"uq{i}", binary("sub", num, param(f"q{i}"))))
        else:
            ops.append(TopK(f"t{i}", num, draw(st.integers(1, 5))))
    return Program(ops, cols), data


def _names(e) -> set[str]:
    if e is None:
        return set()
    if e.op in ("col", "param"):
        return {e.args[0]}
    return set().union(*(_names(a) for a in e.args if hasattr(a, "op")))


def inexact_outputs(prog: Program) -> set[str]:
    """Outputs that add floats (sum, mean, cumsum, running mean: backends add in another order) and
    everything computed from them."""
    out: set[str] = set()
    for op in prog.ops:
        reads = set().union(*(_names(getattr(op, f, None)) for f in ("expr", "pred", "value", "where", "key")))
        reads |= set().union(*(_names(e) for _, e in getattr(op, "keep", ())))
        if getattr(op, "fn", None) in ("sum", "mean", "cumsum", "running_mean") or reads & out:
            out.add(op.out)
            out |= {name for name, _ in getattr(op, "keep", ())}
    return out


def assert_bits(g: np.ndarray, e: np.ndarray, name: str) -> None:
    """Bit for bit (fmath's definition): equal bits for every non-NaN value, the sign of zero
    included, and NaN exactly where ``e`` has NaN (payloads are the hardware's)."""
    assert g.dtype == e.dtype, (name, g.dtype, e.dtype)
    if e.dtype.kind != "f":
        np.testing.assert_array_equal(g, e, err_msg=name)
        return
    gn, en = np.isnan(g), np.isnan(e)
    np.testing.assert_array_equal(gn, en, err_msg=f"{name}: NaN positions")
    ints = {4: np.int32, 8: np.int64}[e.dtype.itemsize]
    bad = np.flatnonzero(g[~gn].view(ints) != e[~en].view(ints))
    assert bad.size == 0, f"{name}: {bad.size} values differ in their bits, e.g. {g[~gn][bad[:3]]} vs {e[~en][bad[:3]]}"


def assert_same(prog: Program, got: dict, exp: dict) -> None:
    """Every output of ``prog`` bit for bit, except sums and means (float additions in another order:
    within 2e-6 relative)."""
    inexact = inexact_outputs(prog)
    for name in prog.outputs:
        g, e = np.asarray(got[name]), np.asarray(exp[name])
        assert g.shape == e.shape, name
        if name in inexact:
            np.testing.assert_allclose(g.astype(np.float64), e.astype(np.float64), rtol=2e-6, atol=1e-9,
                                       equal_nan=True, err_msg=name)
        else:
            assert_bits(np.ascontiguousarray(g), np.ascontiguousarray(e), name)
