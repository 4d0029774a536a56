"""The CUDA backend against the numpy reference interpreter.

Without a GPU these run the generated kernels in numba's CUDA simulator (``tests/conftest.py``
sets ``NUMBA_ENABLE_CUDASIM=1``), so sizes stay small; tile edges with 32-thread blocks are covered
explicitly (0, 31 and 65 rows in the simulator; 0, 1, 31, 33 and 65 on a GPU). The ``gpu``-marked
test runs real kernels on a GPU.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from accelkit import SMALL_SIZES, assert_same, programs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import config
from propkit import examples

from dawnstream.accel.backends import build, gpu_available
from dawnstream.accel.cuda import CudaExecutable
from dawnstream.accel.examples import mad_chain
from dawnstream.accel.ir import (
    Aggregate,
    Filter,
    GroupAggregate,
    Map,
    Program,
    Quantile,
    Scan,
    ScanState,
    TopK,
    col,
    ref,
)
from dawnstream.accel.reference import run_reference

pytestmark = pytest.mark.skipif(not gpu_available(), reason="no CUDA device and the simulator is off")


@settings(max_examples=examples(8 if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else 12), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs(sizes=SMALL_SIZES, max_ops=4))
def test_cuda_backend_matches_the_reference(case) -> None:
    prog, data = case
    s1, s2 = ScanState(), ScanState()
    ex = CudaExecutable(prog)
    assert_same(prog, ex.run(data, state=s1), run_reference(prog, data, state=s2))
    assert_same(prog, ex.run(data, state=s1), run_reference(prog, data, state=s2))


def _edge_program() -> Program:
    x, k = col("x", "float64"), col("k", "int64")
    return Program([
        Map("y", x * 2.0 + 1.0),
        Filter("pos", ref("y") > 0.0, (("kept", ref("y")), ("kept_k", k))),
        Aggregate("mx", "max", x),
        Aggregate("mn", "min", x, where=x > -1.0),
        Aggregate("s", "sum", x),
        Aggregate("c", "count", None, where=ref("pos")),
        GroupAggregate("gmax", "max", k, x, 4),
        GroupAggregate("gmean", "mean", k, x, 4),
        Scan("cs", "cumsum", x),
        Scan("rm", "running_mean", ref("y")),
        Scan("cc", "cumcount"),
        Map("after", ref("cs") - ref("rm")),  # reads scans: the next pass on the GPU
        Quantile("q", ref("y"), 0.3),
        TopK("top", x, 3),
    ], {"x": "float64", "k": "int64"})


SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


# 65: three tiles of 32, so a carry crosses two tile edges (in the simulator, where a row costs ~0.2 s of CI:
# no row, a part tile and three tiles; every size on a GPU)
@pytest.mark.parametrize("n", [0, 31, 65] if SIMULATED else [0, 1, 31, 33, 65])
def test_tile_edges_nan_and_state_carry(n: int) -> None:
    prog = _edge_program()
    rng = np.random.default_rng(n)
    s1, s2 = ScanState(), ScanState()
    ex = CudaExecutable(prog)
    for batch in range(2):
        x = rng.normal(size=n)
        if batch == 1 and n:
            x[n // 2] = np.nan  # NaN reaches max/min/gmax/sum/scans
        data = {"x": x, "k": rng.integers(0, 4, n)}
        assert_same(prog, ex.run(data, state=s1), run_reference(prog, data, state=s2))
    assert s1.get("cc") == s2.get("cc")


def test_compaction_keeps_row_order_across_tiles() -> None:
    n = 200
    x = np.arange(n, dtype=np.float64)
    prog = Program([Filter("f", col("x", "float64") > 0.0, (("kx", col("x", "float64")),))], {"x": "float64"})
    got = CudaExecutable(prog).run({"x": x - 100.0})
    np.testing.assert_array_equal(got["kx"], np.arange(1.0, 100.0))


def test_group_key_outside_the_domain_raises() -> None:
    prog = Program([GroupAggregate("g", "count", col("k", "int64"), None, 4)], {"k": "int64"})
    with pytest.raises(ValueError, match="domain"):
        CudaExecutable(prog).run({"k": np.array([0, 1, 4])})


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64", "int32", "int8", "bool"])
def test_device_radix_select_equals_numpy(dtype: str) -> None:
    rng = np.random.default_rng(1)
    if dtype == "bool":
        x = rng.random(90) < 0.3
    elif dtype.startswith("int"):
        x = rng.integers(-100, 100, 90).astype(dtype)
    else:
        with np.errstate(over="ignore"):  # 1e300 becomes inf in float32, on purpose
            x = np.concatenate([rng.standard_cauchy(80), [np.nan, np.inf, -np.inf, 0.0, -0.0, 5.0, 5.0, 5.0,
                                                          np.nan, 1e300]]).astype(dtype)
    prog = Program([Quantile("med", col("x", dtype), method="median"),
                    Quantile("w", col("x", dtype), 0.9, method="weibull"),
                    Quantile("lin", col("x", dtype), 0.25), TopK("top", col("x", dtype), 4)], {"x": dtype})
    got = CudaExecutable(prog).run({"x": x})
    v = x.astype(np.float64)
    v = v[~np.isnan(v)]
    with np.errstate(all="ignore"):
        assert got["med"] == np.median(v)
        assert got["w"] == np.quantile(v, 0.9, method="weibull")
        assert got["lin"] == np.quantile(v, 0.25)
    np.testing.assert_array_equal(got["top"], np.sort(v)[::-1][:4])


# In the simulator each dtype costs ~15 s of CI: one there (ints and floats share the key code), all four on a GPU.
@pytest.mark.parametrize("dtype", ["float64"] if SIMULATED else ["float64", "float32", "int64", "int32"])
def test_radix_select_finishes_on_the_device_when_one_bucket_holds_everything(dtype: str) -> None:
    """Values that share their top 16 key bits: the first pass puts all of them in one bucket; with
    ``max_host`` low the select goes on digit by digit on the device instead of copying it back."""
    rng = np.random.default_rng(5)
    if dtype.startswith("float"):
        x = (1.0 + rng.random(120) * 1e-3).astype(dtype)
        x[:3] = [np.nan, x[5], x[5]]  # NaN and ties
    else:
        x = (1_000_000 + rng.integers(0, 40, 120)).astype(dtype)
    prog = Program([Quantile("med", col("x", dtype), method="median"), Quantile("lin", col("x", dtype), 0.37),
                    TopK("top", col("x", dtype), 3)], {"x": dtype})
    for max_host in (1, 7, 1 << 16):
        ex = CudaExecutable(prog)
        ex.select.max_host = max_host
        got = ex.run({"x": x})
        v = x.astype(np.float64)
        v = v[~np.isnan(v)]
        assert got["med"] == np.median(v) and got["lin"] == np.quantile(v, 0.37), max_host
        np.testing.assert_array_equal(got["top"], np.sort(v)[::-1][:3])


def test_accel_gpu_wires_into_the_fused_stages_and_the_mad_classifier() -> None:
    from dawnstream.operators.outliers.classify import OutlierClassifier
    from dawnstream.operators.registry import build_chain

    rng = np.random.default_rng(2)
    n = 70
    b = pa.record_batch({"x": pa.array(rng.normal(size=n)), "y": pa.array(rng.integers(-3, 3, n))})
    stages = [("filter", {"expr": "x > -1"}, "f"), ("derive", {"columns": {"z": "x * 2 + y"}}, "d")]
    off, gpu = build_chain(stages, accel="off"), build_chain(stages, accel="gpu")
    got, exp = pa.Table.from_batches(gpu.process(b)), pa.Table.from_batches(off.process(b))
    assert got.schema == exp.schema and got.num_rows == exp.num_rows
    np.testing.assert_allclose(got["z"].to_numpy(), exp["z"].to_numpy(), rtol=1e-15)
    ops = []
    for accel in ("off", "gpu"):
        op = OutlierClassifier(metrics="v", classifier="mad", warmup=40, period=80, reservoir=60)
        op.accel = accel
        ops.append(op)
    for _ in range(3):
        v = rng.standard_cauchy(90)
        a, g = (pa.Table.from_batches(op.process(pa.record_batch({"v": v}))) for op in ops)
        assert a.schema == g.schema
        for name in a.column_names:  # NaN scores (rows before the first model) compare equal here
            np.testing.assert_array_equal(a[name].to_numpy(), g[name].to_numpy(), err_msg=name)


def test_auto_never_picks_the_simulator() -> None:
    if config.ENABLE_CUDASIM:
        assert build(mad_chain(), "auto").backend == "cpu"
    assert build(mad_chain(), "gpu").backend == "gpu"


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(simulator_ok=False), reason="needs an NVIDIA GPU")
def test_real_kernels_match_the_cpu_on_a_million_rows() -> None:
    from dawnstream.accel.cpu import CpuExecutable

    rng = np.random.default_rng(3)
    n = 1_000_000
    data = {"x": rng.standard_cauchy(n).astype(np.float32), "cat": rng.integers(0, 64, n)}
    got, exp = CudaExecutable(mad_chain()).run(data), CpuExecutable(mad_chain()).run(data)
    assert got["med"] == exp["med"] and got["mad"] == exp["mad"]
    np.testing.assert_array_equal(got["z"], exp["z"])
    np.testing.assert_array_equal(got["per_cat"], exp["per_cat"])
    np.testing.assert_allclose(got["rm"], exp["rm"], rtol=1e-9)
    prog = _float32_maps_program()  # fmath rules 1-3 on the real device: no FMA, saturating casts
    x = (rng.normal(size=n) * 3).astype(np.float32)
    x[:5] = [np.nan, np.inf, -np.inf, 1e30, -1e30]
    with np.errstate(all="ignore"):
        assert_same(prog, CudaExecutable(prog).run({"x": x}), CpuExecutable(prog).run({"x": x}))


def _float32_maps_program() -> Program:
    from dawnstream.accel.ir import cast, const, unary

    x = col("x", "float32")

    def f(v: float):  # type: ignore[no-untyped-def]
        return const(v, "float32")

    return Program([
        Map("y", (x * f(1.5) + f(2.0)) / (abs(x) + f(1.0))),  # the benchmark's map: FMA-prone
        Map("e", unary("exp", x) * f(3.0) + unary("log10", abs(x))),
        Map("i", cast(x * f(1e9), "int64")),  # saturates at +-inf and huge values, NaN -> 0
        Filter("keep", (ref("y") > f(0.0)) & (x < f(3.0)), (("y_kept", ref("y")),)),
    ], {"x": "float32"})


def test_float32_maps_and_casts_match_the_reference_bit_for_bit() -> None:
    rng = np.random.default_rng(4)
    n = 20_000 if not config.ENABLE_CUDASIM else 300
    x = (rng.normal(size=n) * 3).astype(np.float32)
    x[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, np.float32(-4 / 3)]
    prog = _float32_maps_program()
    with np.errstate(all="ignore"):
        assert_same(prog, CudaExecutable(prog).run({"x": x}), run_reference(prog, {"x": x}))


@given(st.integers(1, 5))
@settings(max_examples=examples(3), deadline=None)
def test_no_recompile_when_the_batch_length_changes(seed: int) -> None:
    ex = CudaExecutable(Program([Map("y", col("x", "float64") + 1.0)], {"x": "float64"}))
    rng = np.random.default_rng(seed)
    for n in (3, 40, 7):
        np.testing.assert_array_equal(ex.run({"x": rng.normal(size=n)})["y"].size, n)
    if not config.ENABLE_CUDASIM:  # the simulator does not compile, so it has no signatures
        assert len(ex.module.pipeline_0_a.overloads) == 1


def test_run_batches_equals_one_run_per_batch_and_carries_scans() -> None:
    prog = _edge_program()
    rng = np.random.default_rng(6)
    batches = [{"x": rng.normal(size=n), "k": rng.integers(0, 4, n)} for n in (33, 0, 35)]
    s1, s2 = ScanState(), ScanState()
    got = list(CudaExecutable(prog).run_batches(batches, state=s1))
    assert len(got) == len(batches)
    for g, b in zip(got, batches, strict=True):
        assert_same(prog, g, run_reference(prog, b, state=s2))
    assert s1.get("cs") == pytest.approx(s2.get("cs")) and s1.get("cc") == s2.get("cc")


def test_device_columns_chain_programs_without_host_copies() -> None:
    """Program A's column outputs stay on the device (device_outputs) and feed program B as inputs."""
    from numba import cuda

    from dawnstream.accel.ir import const

    x = col("x", "float32")
    a = Program([Map("y", x * const(2.0, "float32") + const(1.0, "float32")),
                 Filter("pos", ref("y") > const(0.0, "float32"), (("kept", ref("y")),))], {"x": "float32"})
    b = Program([Quantile("med", col("y", "float32"), method="median"), Map("d", abs(col("y", "float32")))],
                {"y": "float32"})
    v = np.random.default_rng(7).normal(size=90).astype(np.float32)
    first = CudaExecutable(a).run({"x": v}, device_outputs=True)
    assert hasattr(first["y"], "copy_to_host") and hasattr(first["kept"], "copy_to_host")
    second = CudaExecutable(b).run({"y": first["y"]})
    ref_a = run_reference(a, {"x": v})
    assert_same(b, second, run_reference(b, {"y": ref_a["y"]}))
    np.testing.assert_array_equal(first["kept"].copy_to_host(), ref_a["kept"])
    with pytest.raises(ValueError, match="device column 'y' is float64"):
        CudaExecutable(b).run({"y": cuda.to_device(v.astype(np.float64))})


def test_batches_after_the_first_two_allocate_no_device_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from numba import cuda

    prog = _edge_program()
    ex = CudaExecutable(prog)
    rng = np.random.default_rng(8)
    batch = {"x": rng.normal(size=20), "k": rng.integers(0, 4, 20)}
    ex.run(batch)
    ex.run(batch)  # the second staging slot's buffers
    calls: list[int] = []
    real = cuda.device_array
    monkeypatch.setattr(cuda, "device_array", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setattr(cuda, "to_device", lambda *a, **kw: calls.append(1) or real(1))
    ex.run(batch)
    assert calls == []


@pytest.mark.parametrize("chunk_bytes", [64, 1 << 20, 8 << 20])
def test_staging_in_chunks_and_threads_copies_every_value(chunk_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from numba import cuda

    from dawnstream.accel import cuda as accel_cuda

    monkeypatch.setattr(accel_cuda, "UPLOAD_CHUNK_BYTES", chunk_bytes)
    ex = CudaExecutable(Program([Map("y", col("x", "float64") + 1.0)], {"x": "float64"}))
    h = np.random.default_rng(9).normal(size=300_001 if chunk_bytes > 64 else 1001)
    buf, d = cuda.pinned_array(h.size, dtype=np.float64), cuda.device_array(h.size)
    ex._upload(h, buf, d)
    ex.copy_stream.synchronize()
    np.testing.assert_array_equal(d.copy_to_host(), h)
    small = np.arange(70.0)
    np.testing.assert_array_equal(ex.run({"x": small})["y"], small + 1.0)  # chunked through run as well
