"""``benchmarks/serving.py``'s CPU accounting: what its latency ladder reports per request for the
broker, the worker and the client is read from /proc, children included."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "benchmarks" / "serving.py")
bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
spec.loader.exec_module(bench)  # type: ignore[union-attr]

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


def test_cpu_seconds_counts_the_process_and_its_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.5: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while (bench.cpu_seconds(child.pid) or 0) < 0.4 and time.monotonic() < deadline:
            time.sleep(0.1)
        own = bench.cpu_seconds(child.pid)
        assert own is not None and 0.4 <= own < 5
        mine = bench.cpu_seconds(os.getpid())
        alone = bench.cpu_seconds(os.getpid(), descendants=False)
        assert mine is not None and alone is not None and mine >= alone + own - 0.05  # its child counts too
    finally:
        child.kill()
        child.wait()
    assert bench.cpu_seconds(None) is None
    assert bench.cpu_seconds(child.pid) is None  # gone: unknown, not zero


def test_cpu_per_request_is_microseconds_per_request_where_known() -> None:
    before = {"broker": 10.0, "worker": None, "client": 1.0}
    after = {"broker": 10.5, "worker": 3.0, "client": 1.2}
    assert bench.cpu_per_request(before, after, 1000) == {"broker": 500, "client": 200}
