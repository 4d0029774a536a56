"""``benchmarks/accel.py`` runs (both backends, tiny sizes) and prints what the README and the GPU
issue quote; its own checks (GPU == CPU bit for bit, fused == numpy) run inside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "benchmarks/accel.py", "--json", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, **(env or {})}, check=True)
    return json.loads(out.stdout)


def test_cpu_benchmark_reports_speedup_and_bandwidth() -> None:
    r = _run("--sizes", "2000", "--bandwidth-gb", "0.01")
    assert r["memory_bandwidth_gb_s"] > 0
    assert {c["case"] for c in r["cases"]} == {"mad", "elementwise"}
    assert all(c["fused_ms"] > 0 and c["speedup"] > 0 for c in r["cases"])


def test_gpu_benchmark_reports_ceilings_and_device_resident_times() -> None:
    r = _run("--backend", "gpu", "--sizes", "64", "--bandwidth-gb", "0.001", "--budget-s", "0", "--min-runs", "1",
             "--cases", "elementwise", env={"NUMBA_ENABLE_CUDASIM": os.environ.get("NUMBA_ENABLE_CUDASIM", "1")})
    assert set(r["ceilings"]) == {"device_copy_gb_s", "pinned_h2d_gb_s", "pageable_h2d_gb_s"}
    (case,) = r["cases"]
    for key in ("end_to_end_ms", "pipelined_ms", "device_resident_ms", "cpu_fused_ms",
                "device_resident_fraction_of_device_copy", "end_to_end_fraction_of_pinned_h2d"):
        assert case[key] >= 0, key
    assert case["end_to_end_ms"] > 0 and case["device_resident_ms"] > 0
