"""Label matrices and their mergeable sufficient statistics.

A label matrix ``L`` is ``(n, m)`` int8: row *i*, labeling function *j*, value in ``0..k-1`` or
:data:`ABSTAIN` (-1). Its one-hot form ``U`` is ``(n, m·k)`` with ``U[i, j·k + y] = 1`` when LF *j*
voted *y* on row *i* (an abstain is a row of zeros in LF *j*'s block): snorkel's ``_create_L_ind``
(``snorkel/labeling/model/label_model.py``). Everything the label models need is the Gram matrix
``S = Uᵀ U`` and the row count *n*: both are sums over rows, so partitions add them up, and scaling
them down forgets old rows for drift.
"""

from __future__ import annotations

import numpy as np

ABSTAIN = -1
"""The vote of a labeling function that does not label the row."""
CHUNK_ROWS = 1 << 16


def one_hot(L: np.ndarray, k: int) -> np.ndarray:
    """``(n, m)`` votes -> ``(n, m·k)`` float64 indicators (abstains: zeros).

    Raises:
        ValueError: a vote outside ``-1..k-1``.
    """
    L = np.asarray(L)
    n, m = L.shape
    if L.size and (L.min() < ABSTAIN or L.max() >= k):
        raise ValueError(f"votes must be in -1..{k - 1}; found {int(L.min())}..{int(L.max())}")
    U = np.zeros((n, m * k))
    rows = np.repeat(np.arange(n), m)
    cols = (np.arange(m) * k)[None, :] + L
    voted = (L != ABSTAIN).ravel()
    U[rows[voted], cols.ravel()[voted]] = 1.0
    return U


class VoteStats:
    """``S = Uᵀ U`` (``(m·k, m·k)`` float64) and ``n`` rows, summed as batches arrive.

    The rows since the last :meth:`scale` are kept as exact int64 counts and added to the (decayed,
    so fractional) sums of the rows before only when read or scaled: float additions in batch-sized
    steps would round differently for each way of cutting the stream, and a replay after a crash
    would fit another model. ``S`` and ``n`` therefore depend on the rows alone, bit for bit.

    Args:
        m: number of labeling functions.
        k: number of classes (cardinality).
        n: rows already summed (float: decayed rows count fractionally).
        S: their ``(m·k, m·k)`` sums; ``None``: zeros.
    """

    def __init__(self, m: int, k: int, n: float = 0.0, S: np.ndarray | None = None) -> None:
        self.m, self.k = int(m), int(k)
        d = self.m * self.k
        self._past_n = float(n)
        self._past_S = np.zeros((d, d)) if S is None or np.size(S) == 0 else np.asarray(S, np.float64).copy()
        if self._past_S.shape != (d, d):
            raise ValueError(f"S must be ({d}, {d}) for {m} LFs x {k} classes, got {self._past_S.shape}")
        self._new_n = 0
        self._new_S = np.zeros((d, d), np.int64)

    @property
    def n(self) -> float:
        """Rows summed (decayed rows count fractionally)."""
        return self._past_n + self._new_n

    @property
    def S(self) -> np.ndarray:  # noqa: N802 - the papers' name
        """The sums ``Uᵀ U``, ``(m·k, m·k)`` float64 (a new array each read)."""
        return self._past_S + self._new_S

    def add(self, L: np.ndarray) -> None:
        """Add a batch of votes, ``(rows, m)`` int8 (in chunks of :data:`CHUNK_ROWS`: the one-hot form
        of a million rows would take hundreds of MB)."""
        if len(L) == 0:
            return
        for start in range(0, len(L), CHUNK_ROWS):
            # 0/1 products summed in float32 are exact integers (counts below 2**24 per chunk) in any order
            U = one_hot(L[start:start + CHUNK_ROWS], self.k).astype(np.float32)
            self._new_S += np.rint(U.T @ U).astype(np.int64)
        self._new_n += len(L)

    def add_counts(self, S: np.ndarray, n: int) -> None:  # noqa: N803 - the papers' name
        """Add the exact counts of rows summed elsewhere (another partition's block, :meth:`counts`):
        ``S`` ``(m·k, m·k)`` int64 and ``n`` rows. Integer sums: the order of partitions does not matter."""
        self._new_S += np.asarray(S, np.int64)
        self._new_n += int(n)

    def counts(self) -> tuple[np.ndarray, int]:
        """The exact sums of the rows added since the last :meth:`scale`: ``(S (m·k, m·k) int64 copy, n)``."""
        return self._new_S.copy(), int(self._new_n)

    def scale(self, factor: float) -> None:
        """Multiply the sums by ``factor`` (``1 - decay``: old rows weigh less, for drift)."""
        self._past_S = self.S * factor
        self._past_n = self.n * factor
        self._new_S[:] = 0
        self._new_n = 0

    def merge(self, other: VoteStats) -> VoteStats:
        """The statistics of both sets of rows (partitions), as one."""
        if (other.m, other.k) != (self.m, self.k):
            raise ValueError(f"cannot merge statistics of {other.m} LFs x {other.k} classes into {self.m} x {self.k}")
        return VoteStats(self.m, self.k, self.n + other.n, self.S + other.S)

    @property
    def moments(self) -> np.ndarray:
        """``S / n``: the observed second moments (snorkel's ``O``)."""
        return self.S / max(self.n, 1e-12)

    def coverage(self) -> np.ndarray:
        """Per LF, the share of rows it labels, ``(m,)``."""
        d = np.diag(self.S).reshape(self.m, self.k).sum(axis=1)
        return d / max(self.n, 1e-12)

    def state(self) -> dict:
        return {"m": self.m, "k": self.k, "n": self._past_n, "S": self._past_S.ravel().tolist(),
                "new_n": self._new_n, "new_S": self._new_S.ravel().tolist()}

    @classmethod
    def from_state(cls, s: dict) -> VoteStats:
        m, k = int(s["m"]), int(s["k"])
        out = cls(m, k, float(s["n"]), np.asarray(s["S"], float).reshape(m * k, m * k))
        if "new_S" in s:  # snapshots written before exact counts have everything in S
            out._new_n = int(s["new_n"])
            out._new_S = np.asarray(s["new_S"], np.int64).reshape(m * k, m * k)
        return out
