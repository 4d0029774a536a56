"""Unfused numpy chain vs the fused CPU kernels of the accel layer.

Cases, for N = 1e4, 1e5, 1e6, 1e7 float32 rows:
  (a) ``mad``: median, MAD = median(|x - median|), |z| > 3, count of outliers per category (64),
      running mean carried across batches;
  (b) ``elementwise``: y = (x * 1.5 + 2) / (|x| + 1), keep rows where y > 0 and x < 3 (compacted y).

Memory bandwidth is measured in the same run (numpy copy of a 1 GB array: bytes read + written per
second). ``bandwidth_fraction`` = the bytes a variant must move at least (each input read once,
each output written once) / its time / that bandwidth. Compile time is reported separately.

    python benchmarks/accel.py --json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from dawnstream.accel.cpu import CpuExecutable
from dawnstream.accel.examples import mad_chain
from dawnstream.accel.ir import Filter, Map, Program, ScanState, col, const, ref


def timeit(fn: Any, budget_s: float = 1.0, min_runs: int = 3) -> float:
    """Median wall time of ``fn()`` in ms (after one warm-up run)."""
    fn()
    times = []
    t_end = time.perf_counter() + budget_s
    while len(times) < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return float(np.median(times) * 1e3)


def bandwidth_bytes_per_s(gb: float = 1.0) -> float:
    a = np.ones(int(gb * (1 << 30)) // 8)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = min(_copy_time(a, b) for _ in range(3))
    return 2 * a.nbytes / best


def _copy_time(a: np.ndarray, b: np.ndarray) -> float:
    t0 = time.perf_counter()
    np.copyto(b, a)
    return time.perf_counter() - t0


def mad_program() -> Program:
    return mad_chain(outputs=("per_cat", "rm"))


def mad_numpy(x: np.ndarray, cat: np.ndarray, state: list[float]) -> tuple[np.ndarray, np.ndarray]:
    med = np.median(x)
    d = np.abs(x - med)
    mad = np.median(d)
    z = d / mad
    per_cat = np.bincount(cat[z > 3], minlength=64)
    sums = state[1] + np.cumsum(x, dtype=np.float64)
    rm = sums / (state[0] + np.arange(1, x.size + 1))
    state[0] += x.size
    state[1] = float(sums[-1])
    return per_cat, rm


def elementwise_program() -> Program:
    x = col("x", "float32")

    def f(v: float) -> Any:
        return const(v, "float32")  # numpy keeps float32 for Python-float operands (NEP 50): so do we

    y = (x * f(1.5) + f(2.0)) / (abs(x) + f(1.0))
    return Program([Map("y", y), Filter("keep", (ref("y") > f(0.0)) & (x < f(3.0)), (("y_kept", ref("y")),))],
                   {"x": "float32"}, outputs=["y_kept"])


def elementwise_numpy(x: np.ndarray) -> np.ndarray:
    y = (x * np.float32(1.5) + 2.0) / (np.abs(x) + 1.0)
    return y[(y > 0.0) & (x < 3.0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--sizes", default="1e4,1e5,1e6,1e7")
    ap.add_argument("--bandwidth-gb", type=float, default=1.0)
    args = ap.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]

    bw = bandwidth_bytes_per_s(args.bandwidth_gb)
    t0 = time.perf_counter()
    mad_exe = CpuExecutable(mad_program())
    ew_exe = CpuExecutable(elementwise_program())
    rng = np.random.default_rng(0)
    warm = {"x": rng.normal(size=10).astype(np.float32), "cat": rng.integers(0, 64, 10)}
    mad_exe.run(warm)
    ew_exe.run({"x": warm["x"]})
    compile_s = time.perf_counter() - t0

    cases = []
    for n in sizes:
        x = rng.standard_cauchy(n).astype(np.float32)
        cat = rng.integers(0, 64, n)
        st: list[float] = [0.0, 0.0]
        state = ScanState()
        got = mad_exe.run({"x": x, "cat": cat}, state=ScanState())
        exp = mad_numpy(x, cat, [0.0, 0.0])
        assert np.array_equal(got["per_cat"], exp[0]), "fused MAD chain disagrees with numpy"
        np_ms = timeit(lambda x=x, cat=cat, st=st: mad_numpy(x, cat, st))
        fu_ms = timeit(lambda x=x, cat=cat, state=state: mad_exe.run({"x": x, "cat": cat}, state=state))
        moved = x.nbytes + cat.nbytes + n * 8  # read x and cat, write the running mean (float64)
        cases.append({"case": "mad", "n": n, "numpy_ms": round(np_ms, 3), "fused_ms": round(fu_ms, 3),
                      "speedup": round(np_ms / fu_ms, 2),
                      "bandwidth_fraction": round(moved / (fu_ms / 1e3) / bw, 3),
                      "numpy_bandwidth_fraction": round(moved / (np_ms / 1e3) / bw, 3)})
        kept = elementwise_numpy(x)
        assert np.array_equal(ew_exe.run({"x": x})["y_kept"], kept), "fused elementwise disagrees with numpy"
        np_ms = timeit(lambda x=x: elementwise_numpy(x))
        fu_ms = timeit(lambda x=x: ew_exe.run({"x": x}))
        moved = x.nbytes + kept.nbytes  # read x, write the kept values (the mask is never materialized)
        cases.append({"case": "elementwise", "n": n, "numpy_ms": round(np_ms, 3), "fused_ms": round(fu_ms, 3),
                      "speedup": round(np_ms / fu_ms, 2),
                      "bandwidth_fraction": round(moved / (fu_ms / 1e3) / bw, 3),
                      "numpy_bandwidth_fraction": round(moved / (np_ms / 1e3) / bw, 3)})
    out = {"benchmark": "accel", "memory_bandwidth_gb_s": round(bw / 1e9, 2),
           "compile_s": round(compile_s, 3), "cases": cases}
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
