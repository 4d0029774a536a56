"""AMC: the amortized maintenance counter (MacroBase, SIGMOD 2017, sec. 5.2).

A heavy-hitters sketch with exponentially decayed counts:

- updates are O(1) amortised: an item's count grows by its increment; an item not held enters
  at the largest count ever evicted (``floor``) plus its increment, as in SpaceSaving, so counts
  never underestimate;
- decay is lazy: instead of multiplying every count by (1 - r) each period, the weight of *new*
  increments is divided by (1 - r) (``scale``); reading divides by ``scale``. Counts and the floor
  live in the same scaled units, so the evicted floor decays with everything else (MacroBase's
  legacy AMC forgot to rescale it on reset);
- the size is stable: :meth:`maintain` (once per period) keeps the ``size`` largest items.

Keys are int64 (callers encode items); a batch update is one ``np.unique`` plus a sorted merge.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_RENORMALISE_AT = 1e200
_DENSE_KEYS = 1 << 16


class AMC:
    """Decayed heavy-hitter counts over int64 keys.

    Args:
        size: items kept after maintenance (the stable size k, >= 1).

    >>> s = AMC(size=2)
    >>> s.update(np.array([1, 1, 2, 3, 3, 3]))
    >>> s.maintain(); sorted(s.items().items())
    [(1, 2.0), (3, 3.0)]
    >>> s.decay(0.5); s.update(np.array([4])); s.count(4)  # enters at the decayed evicted floor 0.5, + 1
    1.5
    """

    def __init__(self, size: int = 10_000) -> None:
        if size < 1:
            raise ValueError("AMC size must be >= 1")
        self.size = size
        self.keys = np.empty(0, dtype=np.int64)  # sorted
        self.counts = np.empty(0, dtype=np.float64)  # scaled units
        self.scale = 1.0
        self.floor = 0.0  # largest evicted count, scaled units

    def update(self, keys: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Add 1 (or ``weights``) for each key in ``keys`` (int64 array, any order, repeats allowed)."""
        if keys.size == 0:
            return
        if weights is None and keys.min() >= 0 and keys.max() < _DENSE_KEYS:
            cnt = np.bincount(keys)  # small dense keys (single attribute codes): no sort needed
            uk = np.flatnonzero(cnt)
            inc = cnt[uk].astype(np.float64) * self.scale
        elif weights is None:
            uk, cnt = np.unique(keys, return_counts=True)
            inc = cnt.astype(np.float64) * self.scale
        else:
            uk, inv = np.unique(keys, return_inverse=True)
            inc = np.bincount(inv, weights=weights, minlength=uk.size).astype(np.float64) * self.scale
        pos = np.searchsorted(self.keys, uk)
        hit = pos < self.keys.size
        hit[hit] = self.keys[pos[hit]] == uk[hit]
        if hit.any():
            self.counts[pos[hit]] += inc[hit]
        if not hit.all():
            # uk is sorted, so the new keys can be inserted at their positions without a re-sort.
            at = pos[~hit]
            self.keys = np.insert(self.keys, at, uk[~hit])
            self.counts = np.insert(self.counts, at, inc[~hit] + self.floor)

    def maintain(self) -> None:
        """Keep the ``size`` largest items; remember the largest evicted count as the floor."""
        if self.keys.size <= self.size:
            return
        cut = np.argpartition(-self.counts, self.size - 1)
        keep, drop = cut[: self.size], cut[self.size:]
        self.floor = max(self.floor, float(self.counts[drop].max()))
        keep = np.sort(keep)
        self.keys, self.counts = self.keys[keep], self.counts[keep]

    def decay(self, rate: float) -> None:
        """End of a period: older counts lose ``rate`` of their weight relative to new ones."""
        self.scale /= 1.0 - rate
        if self.scale > _RENORMALISE_AT:
            self.counts /= self.scale
            self.floor /= self.scale
            self.scale = 1.0

    def count(self, key: int) -> float:
        """Decayed count of ``key`` (0 when not held)."""
        i = int(np.searchsorted(self.keys, key))
        if i < self.keys.size and self.keys[i] == key:
            return float(self.counts[i] / self.scale)
        return 0.0

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``keys`` are held (one binary search each)."""
        if self.keys.size == 0:
            return np.zeros(keys.size, dtype=bool)
        pos = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        return np.asarray(self.keys[pos] == keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Decayed counts of ``keys`` (0 where not held)."""
        pos = np.searchsorted(self.keys, keys)
        pos_c = np.minimum(pos, max(self.keys.size - 1, 0))
        ok = (pos < self.keys.size) & (self.keys[pos_c] == keys) if self.keys.size else np.zeros(keys.size, bool)
        return np.where(ok, self.counts[pos_c] / self.scale if self.keys.size else 0.0, 0.0)

    def items(self) -> dict[int, float]:
        """``{key: decayed count}`` of every held item."""
        return dict(zip(self.keys.tolist(), (self.counts / self.scale).tolist(), strict=True))

    def merge(self, other: AMC) -> None:
        """Add another sketch's decayed counts (mergeable summaries across partitions)."""
        if other.keys.size:
            self.update(other.keys, other.counts / other.scale)

    def to_state(self) -> dict[str, Any]:
        return {"size": self.size, "keys": self.keys.tolist(), "counts": self.counts.tolist(),
                "scale": self.scale, "floor": self.floor}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> AMC:
        s = cls(int(st["size"]))
        s.keys = np.asarray(st["keys"], dtype=np.int64)
        s.counts = np.asarray(st["counts"], dtype=np.float64)
        s.scale, s.floor = float(st["scale"]), float(st["floor"])
        return s
