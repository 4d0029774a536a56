"""One worker's scrape: its ``/metrics`` text parsed into series, and Prometheus' histogram quantile.

Parsing is prometheus_client's (``text_string_to_metric_families``); the quantile follows
Prometheus' ``histogram_quantile`` (linear interpolation inside the bucket that holds the rank).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """The samples of one ``/metrics`` answer: ``series[name][labels] = value`` (labels sorted (key, value)
    pairs; histogram samples keep their ``_bucket``/``_sum``/``_count`` names) and when it was taken (Unix s)."""

    at: float
    series: dict[str, dict[Labels, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, at: float) -> Scrape:
        """Parse Prometheus text exposition.

        >>> s = Scrape.parse('# TYPE x_total counter\\nx_total{a="1"} 3.0\\nx_total{a="2"} 4.0\\n', 0.0)
        >>> s.sum("x_total"), s.sum("x_total", a="2")
        (7.0, 4.0)

        Raises:
            ValueError: the text is not Prometheus exposition format.
        """
        out = cls(at)
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                out.series.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = float(sample.value)
        return out

    def rows(self, metric: str, /, **match: str) -> Iterable[tuple[dict[str, str], float]]:
        """``(labels, value)`` of every sample of ``metric`` whose labels include ``match``."""
        for labels, v in self.series.get(metric, {}).items():
            d = dict(labels)
            if all(d.get(k) == want for k, want in match.items()):
                yield d, v

    def sum(self, metric: str, /, **match: str) -> float:
        """Sum of the matching samples (0 when there are none)."""
        return sum(v for _, v in self.rows(metric, **match))

    def buckets(self, metric: str, /, **match: str) -> dict[float, float]:
        """A histogram's cumulative bucket counts ``{le: count}`` summed over the matching series."""
        out: dict[float, float] = {}
        for labels, v in self.rows(metric + "_bucket", **match):
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + v
        return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile (0..1) of a histogram given as cumulative counts per upper bound ``le`` (s), as
    Prometheus computes it; None when it holds no observations. Ranks in the ``+Inf`` bucket answer the
    largest finite bound.

    >>> histogram_quantile(0.5, {0.1: 5.0, 0.2: 10.0, math.inf: 10.0})
    0.1
    >>> round(histogram_quantile(0.75, {0.1: 5.0, 0.2: 10.0, math.inf: 10.0}), 3)
    0.15
    """
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return prev_bound
            if c == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (c - prev_count)
        prev_bound, prev_count = b, c
    return prev_bound


def bucket_delta(now: dict[float, float], before: dict[float, float] | None) -> dict[float, float]:
    """Bucket counts observed between two scrapes (``now`` alone when ``before`` is missing or the worker
    restarted and its counters went back)."""
    if not before or any(now.get(le, 0.0) < c for le, c in before.items()):
        return now
    return {le: c - before.get(le, 0.0) for le, c in now.items()}


def json_safe(x: Any) -> Any:
    """NaN and infinities as None, recursively (JSON has no such numbers)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x
