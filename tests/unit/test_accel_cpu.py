"""The CPU backend against the numpy reference interpreter, on random chains and batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dawnstream.accel import radix
from dawnstream.accel.cpu import CpuExecutable
from dawnstream.accel.examples import mad_chain
from dawnstream.accel.ir import (
    Aggregate,
    Filter,
    GroupAggregate,
    IRError,
    Map,
    Program,
    Quantile,
    Scan,
    ScanState,
    TopK,
    binary,
    cast,
    col,
    param,
    ref,
    unary,
    where,
)
from dawnstream.accel.plan import plan
from dawnstream.accel.reference import run_reference

SIZES = st.sampled_from([0, 1, 2, 10, 100, 1000])
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


FLOAT_FNS = ["abs", "neg", "sqrt", "log", "floor", "ceil", "round", "isnan", "isfinite"]
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
        return cast(a, draw(st.sampled_from(["float64", "int64", "float32"]))) if a.dtype != "bool" else a
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
def programs(draw):
    cols = {"a": draw(st.sampled_from(["float64", "float32", "int64", "int32"])),
            "b": draw(st.sampled_from(["float64", "int64", "bool"])), "k": "int64"}
    n = draw(SIZES)
    data = {c: values(draw, t, n) for c, t in cols.items()}
    data["k"] = np.random.default_rng(n).integers(0, 8, n)
    ops: list = []
    avail = dict(cols)
    for i in range(draw(st.integers(1, 6))):
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


def assert_same(prog: Program, got: dict, exp: dict) -> None:
    for name in prog.outputs:
        g, e = np.asarray(got[name]), np.asarray(exp[name])
        assert g.shape == e.shape, name
        if e.dtype.kind in "biu" and g.dtype.kind in "biu":
            np.testing.assert_array_equal(g, e, err_msg=name)
        else:
            # Maps are IEEE-exact but libm and numpy's SIMD transcendental functions may differ in the
            # last bits; sums are reassociated (see dawnstream.accel.cpu).
            np.testing.assert_allclose(g.astype(np.float64), e.astype(np.float64), rtol=2e-6, atol=1e-9,
                                       equal_nan=True, err_msg=name)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs())
def test_cpu_backend_matches_the_reference(case) -> None:
    prog, data = case
    s1, s2 = ScanState(), ScanState()
    exp = run_reference(prog, data, state=s2)
    got = CpuExecutable(prog).run(data, state=s1)
    assert_same(prog, got, exp)
    # Scan state carries across batches: a second batch continues where the first ended.
    assert_same(prog, CpuExecutable(prog).run(data, state=s1), run_reference(prog, data, state=s2))


def test_mad_chain_is_fused_into_two_passes_after_the_medians() -> None:
    p = plan(mad_chain())
    text = p.explain()
    kernels = [pp for pp in p.pipelines if pp.ops]
    assert len(kernels) == 2, text
    assert [type(b).__name__ for pp in p.pipelines for b in pp.breakers] == ["Quantile", "Quantile"]
    last = kernels[-1]
    assert {type(op).__name__ for op in last.ops} == {"Map", "GroupAggregate", "Scan"}, text


def test_mad_chain_matches_numpy_exactly_on_a_million_rows() -> None:
    rng = np.random.default_rng(3)
    n = 1_000_000
    data = {"x": rng.standard_cauchy(n).astype(np.float32), "cat": rng.integers(0, 64, n)}
    got = CpuExecutable(mad_chain()).run(data)
    x = data["x"].astype(np.float64)
    med = np.median(x)
    assert got["med"] == med
    assert got["mad"] == np.median(np.abs(x - med))
    np.testing.assert_array_equal(got["z"], np.abs(x - med) / got["mad"])
    np.testing.assert_array_equal(got["per_cat"], np.bincount(data["cat"][got["z"] > 3], minlength=64))


def test_no_recompile_when_the_batch_length_changes() -> None:
    ex = CpuExecutable(mad_chain())
    rng = np.random.default_rng(0)
    for n in (10, 1000, 5, 20_000):
        ex.run({"x": rng.normal(size=n).astype(np.float32), "cat": rng.integers(0, 64, n)})
    assert all(len(d.signatures) == 1 for d in ex.dispatchers())


def test_group_key_outside_the_domain_raises_in_both() -> None:
    prog = Program([GroupAggregate("g", "count", col("k", "int64"), None, 4)], {"k": "int64"})
    data = {"k": np.array([0, 1, 4])}
    with pytest.raises(ValueError, match="domain"):
        run_reference(prog, data)
    with pytest.raises(ValueError, match="domain"):
        CpuExecutable(prog).run(data)


def test_column_names_never_reach_the_generated_source() -> None:
    evil = "x'); import os; os.system('touch /tmp/pwned'); ('"
    prog = Program([Map("y", col(evil, "float64") * 2.0)], {evil: "float64"})
    ex = CpuExecutable(prog)
    assert "import os" not in ex.source and "pwned" not in ex.source
    np.testing.assert_array_equal(ex.run({evil: np.arange(3.0)})["y"], [0.0, 2.0, 4.0])


def test_ir_errors_name_the_problem() -> None:
    with pytest.raises(IRError, match="unknown column 'nope'"):
        Program([Map("y", ref("nope") + 1.0)], {"x": "float64"})
    with pytest.raises(IRError, match="compacted"):
        Program([Filter("f", col("x", "float64") > 0.0, (("kx", col("x", "float64")),)),
                 Map("y", ref("kx") + 1.0)], {"x": "float64"})
    with pytest.raises(IRError, match="group key must be an integer"):
        Program([GroupAggregate("g", "count", col("x", "float64"))], {"x": "float64"})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                          st.sampled_from([0.0, -0.0, 1.0, 1.0, 2.0])), max_size=60),
       st.floats(0, 1), st.sampled_from(["linear", "weibull", "median"]))
def test_radix_select_equals_numpy_quantile(xs, q, method) -> None:
    x = np.array(xs, dtype=np.float64)
    v = x[~np.isnan(x)]
    with np.errstate(all="ignore"):
        if v.size == 0:
            exp = np.nan
        elif method == "median":
            exp = float(np.median(v))
        else:
            exp = float(np.quantile(v, q, method=method))
    got = radix.quantile(x, q, method)
    assert got == exp or (np.isnan(got) and np.isnan(exp))


@given(st.lists(st.integers(-2**40, 2**40), min_size=1, max_size=50), st.integers(1, 60))
def test_top_k_of_integers(xs, k) -> None:
    x = np.array(xs, dtype=np.int64)
    np.testing.assert_array_equal(radix.top_k(x, k), np.sort(x.astype(np.float64))[::-1][:k])
