"""The CPU backend against the numpy reference interpreter, on random chains and batches."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from accelkit import assert_same, programs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.accel import radix
from dawnstream.accel.cpu import CpuExecutable
from dawnstream.accel.examples import mad_chain
from dawnstream.accel.ir import (
    Filter,
    GroupAggregate,
    IRError,
    Map,
    Program,
    ScanState,
    col,
    ref,
)
from dawnstream.accel.plan import plan
from dawnstream.accel.reference import run_reference


@settings(max_examples=examples(120), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
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


@settings(max_examples=examples(200), deadline=None)
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


@pytest.mark.parametrize("fn", ["count", "sum", "max"])
def test_a_key_outside_the_domain_raises_only_on_rows_the_where_keeps(fn: str) -> None:
    k, x = col("k", "int64"), col("x", "float64")
    prog = Program([GroupAggregate("g", fn, k, None if fn == "count" else x, 4, where=x > 0.0)],
                   {"k": "int64", "x": "float64"})
    ignored = {"k": np.array([0, 9, 3, -1]), "x": np.array([1.0, -1.0, 2.0, -5.0])}
    np.testing.assert_array_equal(CpuExecutable(prog).run(ignored)["g"], run_reference(prog, ignored)["g"])
    kept = {"k": np.array([0, 9, 3]), "x": np.array([1.0, 1.0, 2.0])}
    for run in (run_reference, CpuExecutable(prog).run):
        with pytest.raises(ValueError, match="domain"):
            run(prog, kept) if run is run_reference else run(kept)


@pytest.mark.parametrize("cause", ["unwritable", "no space"])
def test_a_kernel_cache_that_cannot_be_written_runs_the_program_uncompiled(cause, tmp_path, monkeypatch,
                                                                          caplog) -> None:
    import errno

    import dawnstream.accel.cpu as cpu
    from dawnstream.accel.backends import ReferenceExecutable, build
    from dawnstream.operators.window_count import WindowCount

    if cause == "unwritable":
        (tmp_path / "file").write_text("")
        monkeypatch.setenv("DAWNSTREAM_CACHE", str(tmp_path / "file" / "cache"))  # mkdir: not a directory
    else:
        def full(key: str, source: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / f"k{key}.py"))

        monkeypatch.setattr(cpu, "load_module", full)
    monkeypatch.setattr(cpu, "_MODULES", {})  # as in a fresh worker: nothing compiled yet
    prog = mad_chain()
    exe = build(prog, "cpu")
    assert isinstance(exe, ReferenceExecutable)
    rng = np.random.default_rng(1)
    data = {"x": rng.normal(size=1000).astype(np.float32), "cat": rng.integers(0, 64, 1000)}
    np.testing.assert_array_equal(exe.run(data)["z"], run_reference(prog, data)["z"])
    assert any("accel.uncompiled" in r.getMessage() for r in caplog.records)
    w = WindowCount(key="k", time="t", size="10ms")  # a stage built on build() keeps working
    w.accel = "cpu"
    out = w.process(pa.record_batch({"k": ["a", "a", "b", "a"], "t": [1, 2, 3, 11]}))
    assert out[0].to_pydict()["count"] == [2, 1]
