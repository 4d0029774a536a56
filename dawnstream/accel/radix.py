"""Exact quantiles by radix select (CPU, numba).

Values are mapped to unsigned keys whose integer order is the numeric order (IEEE floats: flip all
bits of negatives, set the sign bit of positives; signed ints: flip the sign bit). One pass
histograms the top 16 key bits (NaNs counted apart); a second gathers the bucket(s) holding the wanted ranks;
``np.partition`` finishes on those candidates. Two streaming passes and no data movement: O(n),
against numpy's introselect that partitions the whole copy. (Values packed in one narrow range share
a bucket; then the final partition does the work, still exact.)

Radix select: Alabi et al., "Fast k-selection algorithms for graphics processing units" (JEA 2012,
sec. 3.2 "radix select"); the key transform is the standard one for radix sorting IEEE floats
(Terdiman, "Radix Sort Revisited", 2000).

Interpolation between the two neighbouring order statistics reproduces numpy's ``_lerp`` bit for
bit, so results equal ``np.quantile(v, q, method=...)`` / ``np.median`` exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
BITS = 16


@_inline
def _key(u, top, is_float):  # pragma: no cover - compiled
    if not is_float:
        return u ^ top
    return ~u if u & top else u | top


@_jit
def _hist_pass(u, top, nan_above, is_float, shift):  # pragma: no cover - compiled
    """Histogram of the top 16 key bits and the NaN count."""
    hist = np.zeros(1 << BITS, dtype=np.int64)
    absmask = ~top
    nans = 0
    for i in range(u.size):
        b = u[i]
        if is_float and (b & absmask) > nan_above:
            nans += 1
            continue
        hist[np.uint64(_key(b, top, is_float)) >> shift] += 1
    return hist, nans


@_jit
def _gather_pass(u, top, nan_above, is_float, shift, b0, b1, size):  # pragma: no cover - compiled
    """Keys whose top-16-bit bucket is in [b0, b1]."""
    # Branch-free: always store, advance only on a match (one spare slot at the end).
    out = np.empty(size + 1, dtype=u.dtype)
    j = 0
    absmask = ~top
    width = b1 - b0
    for i in range(u.size):
        b = u[i]
        k = _key(b, top, is_float)
        out[j] = k
        ok = ((np.uint64(k) >> shift) - b0) <= width
        if is_float:
            ok = ok and (b & absmask) <= nan_above
        j += 1 if ok else 0
    return out[:j]


@_jit
def select_keys(u, top, nan_above, is_float, shift, r0, r1):  # pragma: no cover - compiled
    """The keys of rank r0 and r1 (0-based, r0 <= r1, clamped to m - 1) among the non-NaN values
    whose bit patterns are ``u``; returns (key r0, key r1, m = number of non-NaN values).

    Two passes over ``u`` (histogram of the top 16 key bits, then gather of the bucket(s) holding
    the ranks); ``np.partition`` selects among the gathered candidates."""
    hist, nans = _hist_pass(u, top, nan_above, is_float, shift)
    m = u.size - nans
    if m == 0:
        return top ^ top, top ^ top, 0
    # Ranks were chosen before NaNs were counted: clamp them (the caller asks again with the true m).
    r0 = min(r0, m - 1)
    r1 = min(r1, m - 1)
    b0 = -1
    b1 = -1
    before0 = 0
    acc = 0
    for b in range(hist.size):
        c = hist[b]
        if b0 < 0 and acc + c > r0:
            b0 = b
            before0 = acc
        if acc + c > r1:
            b1 = b
            break
        acc += c
    size = 0
    for b in range(b0, b1 + 1):
        size += hist[b]
    cand = _gather_pass(u, top, nan_above, is_float, shift, np.uint64(b0), np.uint64(b1), size)
    k0 = r0 - before0
    k1 = r1 - before0
    cand = np.partition(cand, k0)
    v0 = cand[k0]
    if k1 == k0:
        return v0, v0, m
    rest = cand[k0 + 1:]
    v1 = np.partition(rest, k1 - k0 - 1)[k1 - k0 - 1]
    return v0, v1, m


def _as_bits(x: np.ndarray) -> tuple[np.ndarray, Any, Any, bool, np.dtype]:
    """(bit view, sign bit, largest non-NaN magnitude bits, is_float, value dtype) of a column."""
    a = np.ascontiguousarray(x)
    if a.dtype == np.float64:
        return a.view(np.uint64), np.uint64(1 << 63), np.uint64(0x7FF0000000000000), True, a.dtype
    if a.dtype == np.float32:
        return a.view(np.uint32), np.uint32(1 << 31), np.uint32(0x7F800000), True, a.dtype
    if a.dtype.kind == "f":
        return _as_bits(a.astype(np.float64))
    if a.dtype in (np.int32, np.uint32):
        a = a.astype(np.int64) if a.dtype == np.uint32 else a
        if a.dtype == np.int32:
            return a.view(np.uint32), np.uint32(1 << 31), np.uint32(0), False, a.dtype
    if a.dtype == np.uint64:
        return a, np.uint64(0), np.uint64(0), False, a.dtype
    if a.dtype != np.int64:
        a = a.astype(np.int64)
    return a.view(np.uint64), np.uint64(1 << 63), np.uint64(0), False, a.dtype


def _value(key: Any, top: Any, is_float: bool, dtype: np.dtype) -> float:
    k = np.array([key], dtype=top.dtype)
    bits = (k ^ top) if not is_float else np.where(k & top, k ^ top, ~k)
    return float(bits.astype(top.dtype).view(dtype)[0])


def select_ranks(x: np.ndarray, r0: int, r1: int) -> tuple[float, float, int]:
    """The r0-th and r1-th smallest non-NaN values of 1-D numeric ``x`` (ranks clamped to m - 1),
    as float64, and m, the number of non-NaN values; (nan, nan, 0) when there are none."""
    u, top, nan_above, is_float, dtype = _as_bits(x)
    if u.size == 0:
        return float("nan"), float("nan"), 0
    shift = np.uint64(u.dtype.itemsize * 8 - BITS)
    k0, k1, m = select_keys(u, top, nan_above, is_float, shift, r0, r1)
    if m == 0:
        return float("nan"), float("nan"), 0
    return _value(k0, top, is_float, dtype), _value(k1, top, is_float, dtype), int(m)


@_jit
def _lerp(a, b, t):  # pragma: no cover - compiled
    # numpy.lib._function_base_impl._lerp, including its t >= 0.5 branch (and so its NaN for inf - inf).
    d = b - a
    r = a + d * t
    if t >= 0.5:
        r = b - d * (1.0 - t)
    return r


def _positions(m: int, q: float, method: str) -> tuple[int, int, float]:
    if method == "median":
        lo = (m - 1) // 2
        return lo, (lo if m % 2 else lo + 1), 0.5
    if method == "linear":
        h = (m - 1) * q
    else:  # weibull, in the operation order of numpy's _compute_virtual_index (alpha = beta = 0)
        h = m * q + (0.0 + q * 1.0) - 1.0
    # numpy's _get_indexes: outside [0, m - 1) both neighbours are the end value (then lerp(a, a, t)).
    if h >= m - 1:
        return m - 1, m - 1, 0.0
    if h < 0:
        return 0, 0, 0.0
    lo = int(math.floor(h))
    return lo, lo + 1, h - lo


def quantile(x: np.ndarray, q: float, method: str = "linear") -> float:
    """Exact quantile ``q`` (0..1) of the non-NaN values of 1-D numeric ``x``; NaN if there are none.

    ``method``: ``linear`` (== ``np.quantile``), ``weibull`` (== ``np.quantile(method="weibull")``),
    ``median`` (== ``np.median``). int64 beyond 2**53 is compared as float64.
    """
    a = np.asarray(x)
    m = a.size
    if m == 0:
        return float("nan")
    # The count of non-NaN values is only known after the first pass: ask for the ranks of the
    # largest possible m, then re-ask when NaNs shrank it (rare: NaNs are dropped before scoring).
    lo, hi, t = _positions(max(m, 1), q, method)
    v0, v1, m_true = select_ranks(a, lo, hi)
    if m_true == 0:
        return float("nan")
    if m_true != m:
        lo, hi, t = _positions(m_true, q, method)
        v0, v1, _ = select_ranks(a, lo, hi)
    if method == "median":
        return float(v0) if lo == hi else float((v0 + v1) / 2.0)
    return float(_lerp(v0, v1, t))


def top_k(x: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest non-NaN values of ``x``, descending, as float64 (radix select of rank m-k)."""
    a = np.ascontiguousarray(x)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    v = a.astype(np.float64, copy=False)
    v = v[~np.isnan(v)]
    m = v.size
    if m == 0:
        return np.empty(0)
    if k >= m:
        return -np.sort(-v)
    cut, _, _ = select_ranks(v, m - k, m - k)
    above = v[v > cut]
    ties = np.full(k - above.size, cut)
    return -np.sort(-np.concatenate([above, ties]))
