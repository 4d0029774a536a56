"""Exact percentiles with MacroBase's estimator.

MacroBase uses Apache commons-math ``Percentile`` in its default (legacy) mode: position
``p (n + 1) / 100``, linear interpolation, clamped to the ends. That is numpy's
``method="weibull"`` (Hyndman & Fan type 6). Using it reproduces MacroBase's published cutoffs
exactly (e.g. 12.2233 on ``sensor10k`` power_drain).
"""

from __future__ import annotations

import numpy as np


def percentile(x: np.ndarray, q: float | np.ndarray) -> np.ndarray:
    """``q``-th percentile(s) (0..100) of the finite values of 1-D ``x``; NaN when there are none."""
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)] if not np.isfinite(v).all() else v
    if v.size == 0:
        return np.full(np.shape(q), np.nan)
    return np.asarray(np.percentile(v, np.asarray(q, dtype=np.float64), method="weibull"))


def tail_cuts(x: np.ndarray, pct: float) -> tuple[float, float]:
    """(low, high) cut values of a percentile classifier that flags both tails.

    ``pct`` >= 50 is the upper percentile (99 flags the lowest 1% and highest 1%); ``pct`` < 50 is
    the tail size itself (1.0 means the same thing, MacroBase's ``setPercentile(1.0)``).
    """
    tail = 100.0 - pct if pct >= 50 else pct
    lo, hi = percentile(x, np.array([tail, 100.0 - tail]))
    return float(lo), float(hi)
