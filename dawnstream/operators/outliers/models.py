"""Robust scoring models: MAD (one metric) and MCD (several metrics).

- MAD: score = |x - median| / MAD with MAD = median(|x - median|) (no 1.4826 factor, as in
  MacroBase's ``MAD`` classifier). When MAD is 0 (more than half the values equal), or so small
  that the largest training deviation divided by it overflows, the mean absolute deviation is used
  instead, and 1.0 if that is 0 too, so the training rows' scores stay finite.
- MCD: score = sqrt of the Mahalanobis distance under the Minimum Covariance Determinant
  estimate (Rousseeuw & Van Driessen's FAST-MCD, via ``sklearn.covariance.MinCovDet``).
- Percentile: score = percentile rank (0..100) of the value among the training sample.

Models are fit on a reservoir sample (n x d float64) and score any n x d float64 array;
``to_dict``/``from_dict`` serialise them as JSON-safe dicts (never pickle).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dawnstream.accel.radix import quantile
from dawnstream.operators.outliers.percentile import tail_cuts
from dawnstream.operators.rowwise import quadratic_form


class MADModel:
    """Median and MAD of one metric."""

    kind = "mad"

    def __init__(self, median: float = 0.0, mad: float = 1.0) -> None:
        self.median = median
        self.mad = mad

    def fit(self, x: np.ndarray) -> MADModel:
        """Fit on ``x`` (n x 1 or n); NaNs ignored. Raises ValueError on an empty sample."""
        v = np.asarray(x, dtype=np.float64).reshape(-1)
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise ValueError("cannot fit MAD on an empty sample")
        # Exact medians by radix select (== np.median, bit for bit; 3-4x faster).
        self.median = quantile(v, 0.5, "median")
        dev = np.abs(v - self.median)
        mad = quantile(dev, 0.5, "median")
        with np.errstate(over="ignore", divide="ignore"):
            # A MAD so small (subnormal) that a training value's score overflows is a zero scale too: an
            # infinite score would leave the percentile cutoff undefined.
            degenerate = not (mad > 0 and np.isfinite(dev.max() / mad))
        if degenerate:
            mad = float(dev.mean()) or 1.0
        self.mad = mad
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        """|x - median| / MAD, float64 of length n (NaN where x is NaN)."""
        v = np.asarray(x, dtype=np.float64).reshape(len(x), -1)[:, 0]
        return np.abs(v - self.median) / self.mad

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "median": self.median, "mad": self.mad}


class MCDModel:
    """Robust location and covariance of d metrics (FAST-MCD)."""

    kind = "mcd"

    def __init__(self, location: np.ndarray | None = None, precision: np.ndarray | None = None,
                 seed: int = 0) -> None:
        self.location = location
        self.precision = precision
        self.seed = seed

    def fit(self, x: np.ndarray) -> MCDModel:
        """Fit on ``x`` (n x d), rows with NaN dropped. Raises ValueError with fewer than d+2 rows."""
        from sklearn.covariance import MinCovDet

        X = np.asarray(x, dtype=np.float64)
        X = X[np.isfinite(X).all(axis=1)]
        if X.shape[0] < X.shape[1] + 2:
            raise ValueError(f"MCD needs at least {X.shape[1] + 2} complete rows, got {X.shape[0]}")
        mcd = MinCovDet(random_state=self.seed).fit(X)
        self.location = mcd.location_
        self.precision = mcd.get_precision()
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        """sqrt((x - mu)^T S^-1 (x - mu)) per row, float64 of length n (a row's score depends on that row
        only, bit for bit: :func:`~dawnstream.operators.rowwise.quadratic_form`, not einsum/BLAS)."""
        assert self.location is not None and self.precision is not None, "fit the model first"
        d = np.asarray(x, dtype=np.float64).reshape(len(x), -1) - self.location
        m2 = quadratic_form(d, self.precision)
        return np.sqrt(np.maximum(m2, 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed,
                "location": None if self.location is None else self.location.tolist(),
                "precision": None if self.precision is None else self.precision.tolist()}


class PercentileModel:
    """Tail cuts of one metric: rows below ``low`` or above ``high`` are outliers."""

    kind = "percentile"

    def __init__(self, pct: float = 99.0, sample: np.ndarray | None = None) -> None:
        self.pct = pct
        self.sorted = np.sort(sample) if sample is not None else np.empty(0)
        self.low, self.high = (tail_cuts(self.sorted, pct) if self.sorted.size else (np.nan, np.nan))

    def fit(self, x: np.ndarray) -> PercentileModel:
        v = np.asarray(x, dtype=np.float64).reshape(-1)
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise ValueError("cannot fit a percentile classifier on an empty sample")
        self.sorted = np.sort(v)
        self.low, self.high = tail_cuts(self.sorted, self.pct)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        """Percentile rank 0..100 of each value among the training sample."""
        v = np.asarray(x, dtype=np.float64).reshape(len(x), -1)[:, 0]
        n = self.sorted.size
        lo = np.searchsorted(self.sorted, v, side="left")
        hi = np.searchsorted(self.sorted, v, side="right")
        rank = (lo + hi) / 2.0 / max(n, 1) * 100.0
        return np.where(np.isnan(v), np.nan, rank)

    def flag(self, x: np.ndarray) -> np.ndarray:
        v = np.asarray(x, dtype=np.float64).reshape(len(x), -1)[:, 0]
        return (v < self.low) | (v > self.high)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "pct": self.pct, "sample": self.sorted.tolist()}


def model_from_dict(d: dict[str, Any]) -> MADModel | MCDModel | PercentileModel:
    """Inverse of ``to_dict``. Raises ValueError for an unknown kind."""
    kind = d.get("kind")
    if kind == "mad":
        return MADModel(float(d["median"]), float(d["mad"]))
    if kind == "mcd":
        loc = None if d["location"] is None else np.asarray(d["location"], dtype=np.float64)
        prec = None if d["precision"] is None else np.asarray(d["precision"], dtype=np.float64)
        return MCDModel(loc, prec, int(d.get("seed", 0)))
    if kind == "percentile":
        return PercentileModel(float(d["pct"]), np.asarray(d["sample"], dtype=np.float64))
    raise ValueError(f"unknown model kind {kind!r}")
