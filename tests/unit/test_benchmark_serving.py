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


def test_the_ladder_tries_a_missed_rate_once_more_and_stops_a_mode_after_two_missed_rates() -> None:
    calls: list[tuple[str, int]] = []
    blips = {("aimd", 1000)}  # one late burst: the second try holds
    slow = {("aimd", 2000)}  # a slow stretch: both tries miss, the next rate holds again

    def step(mode: str, rate: int) -> dict:
        calls.append((mode, rate))
        capacity = 750 if mode == "batch1" else 4000
        miss = rate > capacity or (mode, rate) in blips or (mode, rate) in slow
        blips.discard((mode, rate))
        return {"rate": rate, "sent_per_s": rate, "lost": 0, "p99_ms": 80.0 if miss else 9.0}

    ladders, best = bench.climb(["batch1", "aimd"], step)
    assert best == {"batch1": 750, "aimd": 4000}
    assert calls[:6] == [("batch1", 250), ("aimd", 250), ("batch1", 500), ("aimd", 500), ("batch1", 750), ("aimd", 750)]
    # batching off misses 1,000 and 1,250 (both tries each): out, 1,500 is not tried
    assert calls.count(("batch1", 1000)) == 2 and calls.count(("batch1", 1250)) == 2 and ("batch1", 1500) not in calls
    assert calls.count(("aimd", 1000)) == 2 and [s["attempt"] for s in ladders["aimd"] if s["rate"] == 1000] == [1, 2]
    assert calls.count(("aimd", 2000)) == 2 and calls.count(("aimd", 2500)) == 1  # missed once, then held again
    assert calls.count(("aimd", 5000)) == 2 and calls.count(("aimd", 6000)) == 2 and ("aimd", 8000) not in calls
    assert len(ladders["batch1"]) == 7


def test_a_step_holds_only_with_every_reply_p99_within_the_slo_and_the_rate_kept() -> None:
    ok = {"rate": 1000, "sent_per_s": 990, "lost": 0, "p99_ms": bench.SLO_MS}
    assert bench.within_slo(ok)
    assert not bench.within_slo({**ok, "lost": 1})
    assert not bench.within_slo({**ok, "p99_ms": bench.SLO_MS + 0.1})
    assert not bench.within_slo({**ok, "sent_per_s": 880})
