"""Velox's hybrid model: offline item features θ, online per-user weights.

Velox (Crankshaw et al., "The Missing Piece in Complex Analytics: Low Latency, Scalable Model
Management and Serving with Velox", CIDR'15, sections 3-4) splits a model into features f(x; θ),
retrained offline and rarely, and per-user weights w_u, updated online from each piece of feedback.
Here θ is the item side of a biased MF (:class:`~dawnstream.models.mf.BiasedMF`): ``x_i = [q_i, 1]``
and target ``r - μ - b_i``; each user's ``w_u = [p_u, b_u]`` is an online ridge regression
(:mod:`~dawnstream.operators.learning.online_ridge`) shrunk towards the population mean of the offline
users' weights, which is also the cold-start answer for a user never seen.

A new θ (a registry version) is swapped in between batches; each user's weights are rebuilt from
their rating history under the new θ the next time that user is seen, so the swap costs no pause.

>>> import numpy as np
>>> from dawnstream.models.mf import fit_als
>>> theta = fit_als(np.array([1, 1, 2, 2]), np.array([10, 20, 10, 20]), np.array([5.0, 1.0, 4.0, 2.0]), k=2)
>>> vx = VeloxModel(theta, version=1)
>>> cold = vx.predict_one(7, 10)                 # user 7 never seen: population weights
>>> vx.learn_one(7, 10, 5.0); vx.learn_one(7, 10, 5.0)
>>> vx.predict_one(7, 10) > cold
True
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from dawnstream.models.mf import BiasedMF
from dawnstream.operators.learning.online_ridge import ridge_batch, sm_update

_HEADER = struct.Struct("<4sqii")
_MAGIC = b"VXU1"


@dataclass
class UserState:
    """One user's online ridge state under θ ``version``: ``a_inv`` (d, d), ``s`` (d,), ``w`` (d,)
    float64, and the history (item ids int64, ratings float32) to rebuild them under a new θ."""

    version: int
    a_inv: np.ndarray
    s: np.ndarray
    w: np.ndarray
    items: list[int]
    ratings: list[float]

    def to_bytes(self) -> bytes:
        """Compact binary (header, ``a_inv``, ``s``, items, ratings); ``w`` is recomputed on load."""
        d, n = len(self.s), len(self.items)
        return b"".join([_HEADER.pack(_MAGIC, self.version, d, n), self.a_inv.tobytes(), self.s.tobytes(),
                         np.asarray(self.items, dtype=np.int64).tobytes(),
                         np.asarray(self.ratings, dtype=np.float32).tobytes()])

    @classmethod
    def from_bytes(cls, data: bytes, prior: np.ndarray, lam: float) -> UserState:
        """Inverse of :meth:`to_bytes`.

        Raises:
            ValueError: not a user state (wrong magic or length).
        """
        magic, version, d, n = _HEADER.unpack_from(data)
        off = _HEADER.size
        if magic != _MAGIC or len(data) != off + 8 * d * d + 8 * d + 12 * n:
            raise ValueError("not a Velox user state")
        a_inv = np.frombuffer(data, np.float64, d * d, off).reshape(d, d).copy()
        off += 8 * d * d
        s = np.frombuffer(data, np.float64, d, off).copy()
        off += 8 * d
        items = np.frombuffer(data, np.int64, n, off).tolist()
        ratings = np.frombuffer(data, np.float32, n, off + 8 * n).astype(float).tolist()
        w = a_inv @ (s + lam * prior) if len(prior) == d else np.zeros(d)
        return cls(version, a_inv, s, w, items, ratings)


class VeloxModel:
    """θ plus per-user online weights (a river-style ``learn_one`` / ``predict_one`` model).

    Args:
        theta: the offline model (only its item side, ``μ`` and the population weights are used);
            None = no θ yet: predict the running mean rating, keep histories.
        version: θ's registry version (user states remember it; a different one triggers a rebuild).
        lam: ridge penalty λ of the per-user regressions (shrinkage towards the population weights).
        max_history: ratings kept per user for rebuilds (oldest dropped first).
        rating_range: clip predictions to ``(low, high)``; None = no clipping.

    Cost: ``learn_one`` is one Sherman–Morrison update, O((k+1)²) (about 1-2 µs compiled, k=20).
    """

    def __init__(self, theta: BiasedMF | None, version: int = 0, lam: float = 8.0, max_history: int = 1000,
                 rating_range: tuple[float, float] | None = None) -> None:
        self.lam = float(lam)
        self.max_history = int(max_history)
        self.rating_range = rating_range
        self.users: dict[int, UserState] = {}
        self.dirty: set[int] = set()
        self.count = 0
        self.total = 0.0
        self.swap(theta, version)

    # -- θ ----------------------------------------------------------------------------------------
    def swap(self, theta: BiasedMF | None, version: int) -> None:
        """Use a new θ from the next call on; user weights follow lazily (see the module docstring)."""
        self.theta, self.version = theta, int(version)
        if theta is None:
            self.d = 0
            self.prior = np.zeros(0)
            return
        self.d = theta.k + 1
        self.prior = theta.population_weights()
        self._x = np.column_stack([theta.Q, np.ones(len(theta.item_ids))])
        self._x_unknown = np.zeros(self.d)
        self._x_unknown[-1] = 1.0
        self._row = {int(it): r for r, it in enumerate(theta.item_ids.tolist())}
        self._bi = theta.bi.tolist()

    def _features(self, item: int) -> tuple[np.ndarray, float]:
        row = self._row.get(item, -1)
        if row < 0:
            return self._x_unknown, 0.0
        return self._x[row], self._bi[row]

    # -- users ------------------------------------------------------------------------------------
    def user(self, user: int, load: bytes | None = None) -> UserState | None:
        """The user's state under the current θ (rebuilt from history if it was learned under
        another); ``load``: stored bytes to start from when the user is not in memory."""
        st = self.users.get(user)
        if st is None and load is not None:
            st = self.users[user] = UserState.from_bytes(load, self.prior, self.lam)
        if st is not None and self.theta is not None and (st.version != self.version or len(st.s) != self.d):
            self._rebuild(st)
        return st

    def _rebuild(self, st: UserState) -> None:
        assert self.theta is not None
        X = np.zeros((len(st.items), self.d))
        y = np.asarray(st.ratings, dtype=np.float64) - self.theta.mu
        if st.items:
            rows = self.theta.item_index(np.asarray(st.items, dtype=np.int64))
            known = rows >= 0
            X[known] = self._x[rows[known]]
            X[~known, -1] = 1.0
            y[known] -= self.theta.bi[rows[known]]
        st.a_inv, st.s, st.w = ridge_batch(X, y, self.prior, self.lam)
        st.version = self.version

    # -- predict / learn ----------------------------------------------------------------------------
    def predict_one(self, user: int, item: int, stored: bytes | None = None) -> float:
        """Predicted rating of ``item`` by ``user`` (the population weights for an unknown user)."""
        if self.theta is None:
            return self._clip(self.total / self.count if self.count else 0.0)
        x, bi = self._features(item)
        st = self.user(user, stored)
        w = st.w if st is not None else self.prior
        return self._clip(self.theta.mu + bi + float(x @ w))

    def learn_one(self, user: int, item: int, rating: float, stored: bytes | None = None) -> None:
        """Add one rating: a Sherman–Morrison update of the user's weights, and the user's history."""
        self.count += 1
        self.total += rating
        st = self.user(user, stored)
        if st is None:
            d = self.d
            st = self.users[user] = UserState(self.version, np.eye(d) / self.lam if d else np.zeros((0, 0)),
                                              np.zeros(d), self.prior.copy(), [], [])
        st.items.append(int(item))
        st.ratings.append(float(rating))
        if len(st.items) > self.max_history:
            del st.items[0], st.ratings[0]
            if self.theta is not None:
                self._rebuild(st)  # dropping an observation is no rank-one update
        elif self.theta is not None:
            x, bi = self._features(item)
            sm_update(st.a_inv, st.s, st.w, x, float(rating) - self.theta.mu - bi, self.prior, self.lam)
        self.dirty.add(int(user))

    def _clip(self, v: float) -> float:
        if self.rating_range is None:
            return v
        lo, hi = self.rating_range
        return min(max(v, lo), hi)
