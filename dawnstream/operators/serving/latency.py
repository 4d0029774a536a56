"""The recent reply latencies of a serving stage, for its p50/p99 gauges and its dashboard panel.

Only what the stage itself spends counts (ms from the moment a request's batch reaches the stage to
its answer), the span ``slo_ms`` bounds; queueing in Kafka before the batch is read is the consumer
lag's to show. Live numbers only: never part of a snapshot, so restores and replays are unaffected.
"""

from __future__ import annotations

import numpy as np


class RecentLatencies:
    """A ring of the last ``size`` request latencies (ms, float64).

    >>> r = RecentLatencies(size=4)
    >>> r.add(5.0, 3); r.add(40.0, 3)  # the ring keeps the last 4: one 5 ms request, three 40 ms
    >>> r.percentiles()
    {'latency_p50_ms': 40.0, 'latency_p99_ms': 40.0}

    Args:
        size: how many of the latest requests the percentiles cover (default 4,096).
    """

    def __init__(self, size: int = 4096) -> None:
        self._buf = np.zeros(size, np.float64)
        self._at = 0
        self._filled = 0

    def add(self, ms: float, count: int = 1) -> None:
        """Record ``count`` requests answered in ``ms`` milliseconds (one batch segment)."""
        size = self._buf.size
        count = min(count, size)
        idx = (self._at + np.arange(count)) % size
        self._buf[idx] = ms
        self._at = (self._at + count) % size
        self._filled = min(self._filled + count, size)

    def percentiles(self) -> dict[str, float]:
        """``latency_p50_ms`` and ``latency_p99_ms`` of the recorded requests (empty before the first)."""
        if not self._filled:
            return {}
        p50, p99 = np.percentile(self._buf[: self._filled], [50, 99])
        return {"latency_p50_ms": float(p50), "latency_p99_ms": float(p99)}
