"""Online ridge regression by Sherman–Morrison rank-one updates (one observation in O(d²)).

Keeps ``A⁻¹`` for ``A = λI + Σ x xᵀ`` and ``s = Σ x y``; the weights shrink towards a prior mean
``w̄`` instead of 0: ``w = A⁻¹ (s + λ w̄)`` minimises ``Σ (y - x·w)² + λ |w - w̄|²``. Adding ``(x, y)``:
``A⁻¹ ← A⁻¹ - (A⁻¹x)(A⁻¹x)ᵀ / (1 + xᵀA⁻¹x)`` (Sherman & Morrison 1950; ``A⁻¹`` stays symmetric).
This is Velox's online user-weight update (Crankshaw et al., CIDR'15, section 4.1).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, fastmath=False)
def sm_rank_one(a_inv: np.ndarray, x: np.ndarray, c: float) -> None:  # pragma: no cover - compiled
    """``a_inv`` (d, d) becomes the inverse of ``A + x xᵀ / c`` (Sherman-Morrison), in place: the step that
    adds one observation ``x`` (d,) of weight ``1/c`` to a least-squares or Newton system. Plain loops:
    the same sums in the same order on every CPU (no BLAS call)."""
    d = x.shape[0]
    ax = np.zeros(d)
    for i in range(d):
        acc = 0.0
        for j in range(d):
            acc += a_inv[i, j] * x[j]
        ax[i] = acc
    denom = c
    for i in range(d):
        denom += x[i] * ax[i]
    for i in range(d):
        f = ax[i] / denom
        for j in range(d):
            a_inv[i, j] -= f * ax[j]


@numba.njit(cache=True, fastmath=False)
def sm_update(a_inv: np.ndarray, s: np.ndarray, w: np.ndarray, x: np.ndarray, y: float, prior: np.ndarray,
              lam: float) -> None:  # pragma: no cover - compiled
    """Add observation ``(x, y)`` in place: ``a_inv`` (d, d), ``s`` (d,), ``w`` (d,) all float64."""
    d = x.shape[0]
    sm_rank_one(a_inv, x, 1.0)
    for i in range(d):
        s[i] += x[i] * y
    for i in range(d):
        acc = 0.0
        for j in range(d):
            acc += a_inv[i, j] * (s[j] + lam * prior[j])
        w[i] = acc


def ridge_batch(X: np.ndarray, y: np.ndarray, prior: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray,
                                                                                        np.ndarray]:
    """The same state from scratch: ``(A⁻¹, s, w)`` for rows ``X`` (n, d) and targets ``y`` (n,)."""
    d = X.shape[1]
    a_inv = np.linalg.inv(lam * np.eye(d) + X.T @ X)
    s = X.T @ y
    return a_inv, s, a_inv @ (s + lam * prior)
