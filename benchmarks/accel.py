"""Unfused numpy chain vs the fused CPU kernels of the accel layer.

Cases, for N = 1e4, 1e5, 1e6, 1e7 float32 rows:
  (a) ``mad``: median, MAD = median(|x - median|), |z| > 3, count of outliers per category (64),
      running mean carried across batches;
  (b) ``elementwise``: y = (x * 1.5 + 2) / (|x| + 1), keep rows where y > 0 and x < 3 (compacted y).

Memory bandwidth is measured in the same run (numpy copy of a 1 GB array: bytes read + written per
second). ``bandwidth_fraction`` = the bytes a variant must move at least (each input read once,
each output written once) / its time / that bandwidth. Compile time is reported separately.

``--backend gpu`` runs the same programs on the CUDA backend and also measures, in the same run,
the device-to-device copy bandwidth and the host-to-device bandwidth from pinned and from pageable
memory (``ceilings``). Per case: ``end_to_end_ms`` (host arrays in, host results out, through
:meth:`CudaExecutable.run`), ``pipelined_ms`` (per batch, when 8 batches stream through
``run_batches``: the next batch's copy overlaps this one's kernels), ``device_resident_ms`` (inputs
already on the device and column outputs left there: the kernels, radix passes and their small
result copies), ``cpu_fused_ms`` (the CPU backend on one core, same data) and the fractions the GPU
issue targets: device-resident vs the device copy bandwidth, end to end vs pinned host-to-device.
Results are checked against the CPU backend bit for bit (sums within 1e-9) before timing.

    python benchmarks/accel.py --json
    python benchmarks/accel.py --backend gpu --sizes 1e6,1e7,1e8 --json
"""

from __future__ import annotations

import argparse
import functools
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


def gpu_ceilings(gb: float) -> dict[str, float]:
    """Device copy, pinned and pageable host-to-device bandwidth in GB/s (best of 3, same run)."""
    from numba import cuda

    n = int(gb * (1 << 30)) // 8
    host = np.ones(n)
    pinned = cuda.pinned_array(n, dtype=np.float64)
    pinned[:] = 1.0
    a, b = cuda.to_device(host), cuda.device_array(n)

    def best(fn: Any) -> float:
        fn()
        cuda.synchronize()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    d2d = best(lambda: b.copy_to_device(a))
    h2d_pinned = best(lambda: a.copy_to_device(pinned))
    h2d_pageable = best(lambda: a.copy_to_device(host))
    return {"device_copy_gb_s": round(2 * host.nbytes / d2d / 1e9, 1),  # read + write
            "pinned_h2d_gb_s": round(host.nbytes / h2d_pinned / 1e9, 2),
            "pageable_h2d_gb_s": round(host.nbytes / h2d_pageable / 1e9, 2)}


def _same(got: dict, exp: dict, exact: tuple[str, ...], close: tuple[str, ...]) -> None:
    for k in exact:
        g, e = np.asarray(got[k]), np.asarray(exp[k])
        assert g.dtype == e.dtype and np.array_equal(g.view(np.uint8), e.view(np.uint8)), f"gpu {k} differs"
    for k in close:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(exp[k]), rtol=1e-9, err_msg=k)


_timeit = timeit


def gpu_main(args: argparse.Namespace, sizes: list[int]) -> dict[str, Any]:
    """The ``--backend gpu`` run (see the module docstring)."""
    from numba import cuda

    from dawnstream.accel.cuda import CudaExecutable

    ceil = gpu_ceilings(args.bandwidth_gb)
    dev_bw, h2d_bw = ceil["device_copy_gb_s"] * 1e9, ceil["pinned_h2d_gb_s"] * 1e9
    t0 = time.perf_counter()
    progs = {k: p for k, p in (("mad", mad_program()), ("elementwise", elementwise_program())) if k in args.cases}
    gpu = {k: CudaExecutable(p) for k, p in progs.items()}
    cpu = {k: CpuExecutable(p) for k, p in progs.items()}
    rng = np.random.default_rng(0)
    w = 40 if next(iter(gpu.values())).simulated else 1000  # the simulator runs every thread in Python
    warm = {"x": rng.normal(size=w).astype(np.float32), "cat": rng.integers(0, 64, w)}
    for k in progs:
        gpu[k].run(warm)
        cpu[k].run(warm)
    compile_s = time.perf_counter() - t0
    cases = []
    for n in sizes:
        x = rng.standard_cauchy(n).astype(np.float32)
        cat = rng.integers(0, 64, n)
        for case, cols, exact, close in (("mad", {"x": x, "cat": cat}, ("per_cat",), ("rm",)),
                                         ("elementwise", {"x": x}, ("y_kept",), ())):
            if case not in progs:
                continue
            g, c = gpu[case], cpu[case]
            timeit = functools.partial(_timeit, budget_s=args.budget_s, min_runs=args.min_runs)
            _same(g.run(cols, state=ScanState()), c.run(cols, state=ScanState()), exact, close)
            dev = {k: cuda.to_device(v) for k, v in cols.items()}
            e2e = timeit(lambda g=g, cols=cols: g.run(cols))
            res = timeit(lambda g=g, dev=dev: g.run(dev, device_outputs=True))
            cpu_ms = timeit(lambda c=c, cols=cols: c.run(cols))
            parts = 2 if g.simulated else 8
            chunks = [{k: v[i * n // parts:(i + 1) * n // parts] for k, v in cols.items()} for i in range(parts)]
            piped = timeit(lambda g=g, chunks=chunks: list(g.run_batches(chunks)))  # all parts: n rows
            out_bytes = n * 8 if case == "mad" else int(np.asarray(c.run(cols)["y_kept"]).nbytes)
            moved = sum(v.nbytes for v in cols.values()) + out_bytes
            cases.append({
                "case": case, "n": n, "end_to_end_ms": round(e2e, 3), "pipelined_ms": round(piped, 3),
                "device_resident_ms": round(res, 3), "cpu_fused_ms": round(cpu_ms, 3),
                "speedup_vs_cpu_end_to_end": round(cpu_ms / e2e, 2),
                "speedup_vs_cpu_device_resident": round(cpu_ms / res, 2),
                "device_resident_fraction_of_device_copy": round(moved / (res / 1e3) / dev_bw, 4),
                "end_to_end_fraction_of_pinned_h2d": round(moved / (e2e / 1e3) / h2d_bw, 4),
                "pipelined_fraction_of_pinned_h2d": round(moved / (piped / 1e3) / h2d_bw, 4)})
    return {"benchmark": "accel", "backend": "gpu", "simulated": next(iter(gpu.values())).simulated, "ceilings": ceil,
            "compile_s": round(compile_s, 3), "cases": cases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--sizes", default="1e4,1e5,1e6,1e7")
    ap.add_argument("--bandwidth-gb", type=float, default=1.0)
    ap.add_argument("--backend", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--cases", default="mad,elementwise", help="gpu: which programs")
    ap.add_argument("--budget-s", type=float, default=1.0, help="gpu: seconds of timed runs per variant")
    ap.add_argument("--min-runs", type=int, default=3, help="gpu: timed runs per variant at least")
    args = ap.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    if args.backend == "gpu":
        result = gpu_main(args, sizes)
        print(json.dumps(result) if args.json else json.dumps(result, indent=2))
        return

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
