"""Per-row arithmetic whose result for a row depends on that row's values only, bit for bit.

Why not ``A @ B`` or ``X.sum(axis=1)``: a BLAS product (OpenBLAS picks its kernel by CPU, and its
blocking by the matrix shape) and numpy's reductions along an axis (the iterator may reorder axes by
shape, and pairwise summation groups terms by 8) can sum a row's terms in an order that depends on
how many rows came with it. Under the Nehalem kernel a label probability moved in its last bits when
its batch was cut at another row, which breaks the promise of batch-cut independence and replay
equality. The functions here use only gathers and elementwise IEEE-754 operations (``+ - * /``,
each correctly rounded on every CPU), applied one column at a time in a fixed order, so a row's
result is the same whatever the batch around it and whichever BLAS kernel the machine loads.

Costs: one numpy call per column (or per pair of columns for :func:`quadratic_form`), so they are
meant for narrow arrays (classes, LFs, metrics, latent factors: up to a few hundred columns).
"""

from __future__ import annotations

import numpy as np


def row_sum(X: np.ndarray) -> np.ndarray:
    """``(n, c)`` -> ``(n,)`` float64: ``X[:, 0] + X[:, 1] + ... + X[:, c-1]``, left to right.

    >>> row_sum(np.array([[1.0, 2.0, 3.0], [0.5, 0.25, 0.0]])).tolist()
    [6.0, 0.75]
    """
    X = np.asarray(X, np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {X.shape}")
    out = np.zeros(X.shape[0])
    for j in range(X.shape[1]):
        out += X[:, j]
    return out


def row_dot(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``(n, c)``, ``(n, c)`` -> ``(n,)`` float64: ``Σ_j A[i, j]·B[i, j]`` summed in column order.

    Raises:
        ValueError: the shapes differ.

    >>> row_dot(np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])).tolist()
    [11.0]
    """
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    if A.shape != B.shape or A.ndim != 2:
        raise ValueError(f"expected two 2-D arrays of one shape, got {A.shape} and {B.shape}")
    out = np.zeros(A.shape[0])
    for j in range(A.shape[1]):
        out += A[:, j] * B[:, j]
    return out


def quadratic_form(D: np.ndarray, P: np.ndarray) -> np.ndarray:
    """``(n, d)`` rows, ``(d, d)`` matrix -> ``(n,)`` float64: ``D[i] P D[i]ᵀ`` (a squared Mahalanobis
    distance when ``P`` is a precision matrix), as ``Σ_j D[i, j]·(Σ_k P[j, k]·D[i, k])`` in index order.

    Raises:
        ValueError: the shapes do not fit.

    >>> quadratic_form(np.array([[1.0, 2.0]]), np.eye(2)).tolist()
    [5.0]
    """
    D, P = np.asarray(D, np.float64), np.asarray(P, np.float64)
    if D.ndim != 2 or P.shape != (D.shape[1], D.shape[1]):
        raise ValueError(f"expected (n, d) rows and a (d, d) matrix, got {D.shape} and {P.shape}")
    out = np.zeros(D.shape[0])
    for j in range(D.shape[1]):
        inner = np.zeros(D.shape[0])
        for k in range(D.shape[1]):
            inner += P[j, k] * D[:, k]
        out += D[:, j] * inner
    return out


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """``(n, c)`` logits -> ``(n, c)`` float64 probabilities, ``exp(z - max z) / Σ exp(z - max z)`` per row
    (the max is exact; the sum is :func:`row_sum`). The input is not modified.

    >>> softmax_rows(np.array([[0.0, 0.0]])).tolist()
    [[0.5, 0.5]]
    """
    z = np.array(logits, np.float64)  # a copy, C-contiguous: np.exp takes one code path for every row
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / row_sum(e)[:, None]


__all__ = ["quadratic_form", "row_dot", "row_sum", "softmax_rows"]
