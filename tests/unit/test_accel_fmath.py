"""The IR's defined arithmetic (dawnstream.accel.fmath): accuracy against numpy's libm, the special
values, saturating casts against a plain-Python reference, and the CPU kernels against the numpy
bindings bit for bit (the GPU's are checked by test_accel_cuda under the simulator and for FMA-free
PTX by tests/tools/cuda_ptx_check.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from accelkit import assert_bits
from hypothesis import given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.accel import fmath
from dawnstream.accel.cpu import CpuExecutable
from dawnstream.accel.ir import Map, Program, cast, col, unary
from dawnstream.accel.reference import run_reference


def _ulps(got: np.ndarray, exp: np.ndarray) -> float:
    ok = np.isfinite(exp) & (exp != 0)
    return float(np.max(np.abs(got[ok] - exp[ok]) / np.spacing(np.abs(exp[ok]))))


def test_exp_and_log_are_within_two_ulp_of_libm() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-745, 709.7, 200_000), rng.normal(size=200_000), rng.uniform(-1e-8, 1e-8, 10_000)])
    assert _ulps(fmath.exp64(x), np.exp(x)) <= 1.0
    y = np.concatenate([np.exp(rng.uniform(-700, 700, 200_000)), rng.uniform(0.5, 2, 200_000),
                        1 + rng.uniform(-1e-6, 1e-6, 10_000), [5e-324, 1e-310, 2.2e-308]])
    assert _ulps(fmath.log64(y), np.log(y)) <= 1.0
    assert _ulps(fmath.log10_64(y), np.log10(y)) <= 2.0


def test_float32_results_are_the_correctly_rounded_ones() -> None:
    rng = np.random.default_rng(1)
    x = (rng.normal(size=200_000) * 5).astype(np.float32)
    a = np.abs(x) + np.float32(1e-3)
    assert np.array_equal(fmath.math_array("exp", x, "float32"), np.exp(x.astype(np.float64)).astype(np.float32))
    assert np.array_equal(fmath.math_array("log", a, "float32"), np.log(a.astype(np.float64)).astype(np.float32))


def test_powers_of_ten_have_exact_log10() -> None:
    k = np.arange(-300, 301)
    assert np.array_equal(fmath.log10_64(10.0 ** k.astype(np.float64)), k.astype(np.float64))


def test_special_values() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 710.0, -746.0, -745.0, 0.0, -0.0])
    e = fmath.exp64(x)
    assert np.isnan(e[0]) and e[1] == np.inf and e[2] == 0.0 and e[3] == np.inf and e[4] == 0.0
    assert e[5] == 5e-324 and e[6] == 1.0 and e[7] == 1.0
    v = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, 1.0])
    for fn in (fmath.log64, fmath.log10_64):
        y = fn(v)
        assert np.isnan(y[[0, 2, 5]]).all() and y[1] == np.inf and y[3] == y[4] == -np.inf and y[6] == 0.0


def _cast_reference(v: float, dtype: str) -> int:
    info = np.iinfo(dtype)
    if math.isnan(v):
        return 0
    if math.isinf(v):
        return int(info.max if v > 0 else info.min)
    return max(int(info.min), min(int(info.max), math.trunc(v)))


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from(
    [2.0**63, -(2.0**63), 2.0**63 - 1024, 2.0**64, 2.0**31, -(2.0**31) - 0.5, 127.9, -128.9, 255.5, -0.5])


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(FLOATS, min_size=1, max_size=20), st.sampled_from(fmath.INT_DTYPES), st.booleans())
def test_float_to_int_casts_truncate_saturate_and_send_nan_to_zero(vals: list[float], dtype: str, f32: bool) -> None:
    a = np.array(vals, dtype=np.float32 if f32 else np.float64)
    want = np.array([_cast_reference(float(v), dtype) for v in a], dtype=dtype)
    assert np.array_equal(fmath.cast_array(a, dtype), want)
    prog = Program([Map("y", cast(col("x", str(a.dtype)), dtype))], {"x": str(a.dtype)})
    assert np.array_equal(CpuExecutable(prog).run({"x": a})["y"], want)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fn", ["exp", "log", "log10"])
def test_cpu_kernels_compute_the_reference_bits(fn: str, dtype: str) -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=20_000) * 50, np.exp(rng.uniform(-700, 700, 20_000)),
                        [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-310, -3.0]]).astype(dtype)
    prog = Program([Map("y", unary(fn, col("x", dtype)))], {"x": dtype})
    with np.errstate(all="ignore"):
        assert_bits(CpuExecutable(prog).run({"x": x})["y"], run_reference(prog, {"x": x})["y"], fn)


def test_float32_maps_round_every_operation() -> None:
    """(x * 1.5 + 2) / (|x| + 1) in float32: a fused multiply-add or float64 intermediates would differ
    near x = -4/3, where the numerator cancels."""
    from dawnstream.accel.ir import const

    x = col("x", "float32")
    f = lambda v: const(v, "float32")  # noqa: E731
    prog = Program([Map("y", (x * f(1.5) + f(2.0)) / (abs(x) + f(1.0)))], {"x": "float32"})
    v = (np.float32(-4.0 / 3.0) + np.arange(-2000, 2000, dtype=np.float32) * np.float32(1e-7)).astype(np.float32)
    want = (v * np.float32(1.5) + np.float32(2.0)) / (np.abs(v) + np.float32(1.0))
    assert want.dtype == np.float32
    assert_bits(run_reference(prog, {"x": v})["y"], want, "reference")
    assert_bits(CpuExecutable(prog).run({"x": v})["y"], want, "cpu")
    fused = ((v.astype(np.float64) * 1.5 + 2.0) / (np.abs(v.astype(np.float64)) + 1.0)).astype(np.float32)
    assert not np.array_equal(fused, want)  # the test can tell the two apart
