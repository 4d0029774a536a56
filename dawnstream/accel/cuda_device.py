"""Device functions the generated CUDA kernels call: block reductions and scans, NaN-aware min/max,
unfusable multiplies, and math with numpy's IEEE results (NaN/inf, never an exception - also under
the simulator, where ``math.sqrt(-1)`` would raise). exp/log/log10 and float -> int casts are
:mod:`dawnstream.accel.fmath`'s, pasted into each generated module.

Block reduction: tree reduction in shared memory (Harris, "Optimizing Parallel Reduction in
CUDA", NVIDIA 2007). Block scan: Hillis & Steele, "Data parallel algorithms" (CACM 1986), the
inclusive scan with one barrier pair per step. ``sh`` is a float64 shared array of the block's size
(a power of two); every thread of the block must call these functions (they hold barriers).
Counts up to 2**53 are exact in float64, so masks and tile counts share the float scratch.
"""

from __future__ import annotations

import math

import numpy as np
from numba import config, cuda

_dev = cuda.jit(device=True, inline=True)
dev = _dev
"""The decorator of every device function here and in generated modules."""

if getattr(config, "ENABLE_CUDASIM", 0):
    # The simulator has no libdevice; Python multiplies round once, like __dmul_rn / __fmul_rn.
    def dmul_rn(a, b):  # pragma: no cover - simulator only
        return np.float64(a) * np.float64(b)

    def fmul_rn(a, b):  # pragma: no cover - simulator only
        return np.float32(np.float32(a) * np.float32(b))
else:
    from numba.cuda.libdevice import dmul_rn, fmul_rn  # noqa: F401 - the multiplies NVVM never fuses into an FMA


SUM, NMAX, NMIN = 0, 1, 2  # block_reduce kinds


@_dev
def block_reduce(sh, tid, x, kind):  # pragma: no cover - compiled
    """``kind`` (SUM, NMAX: NaN-propagating max, NMIN) of ``x`` over the block, returned to every thread."""
    cuda.syncthreads()  # earlier readers of sh are done
    sh[tid] = x
    cuda.syncthreads()
    s = sh.size // 2
    while s > 0:
        if tid < s:
            if kind == SUM:
                sh[tid] += sh[tid + s]
            elif kind == NMAX:
                sh[tid] = nmax(sh[tid], sh[tid + s])
            else:
                sh[tid] = nmin(sh[tid], sh[tid + s])
        cuda.syncthreads()
        s //= 2
    return sh[0]


@_dev
def block_scan(sh, tid, x):  # pragma: no cover - compiled
    """Inclusive prefix sum of ``x`` over the block's threads (thread order)."""
    cuda.syncthreads()
    sh[tid] = x
    cuda.syncthreads()
    off = 1
    while off < sh.size:
        y = sh[tid - off] if tid >= off else 0.0
        cuda.syncthreads()
        sh[tid] += y
        cuda.syncthreads()
        off *= 2
    return sh[tid]


@_dev
def nmax(a, b):  # pragma: no cover - compiled
    return a if (a != a or a > b) else b


@_dev
def nmin(a, b):  # pragma: no cover - compiled
    return a if (a != a or a < b) else b


@_dev
def nfmax(a, b):  # pragma: no cover - compiled
    return b if (a != a or b > a) else a


@_dev
def nfmin(a, b):  # pragma: no cover - compiled
    return b if (a != a or b < a) else a


@_dev
def isfinite(x):  # pragma: no cover - compiled
    return x == x and x - x == 0.0


@_dev
def sqrt(x):  # pragma: no cover - compiled
    return np.float64(math.sqrt(x)) if x >= 0.0 else np.float64(np.nan)





@_dev
def _signed_zero(x):  # pragma: no cover - compiled
    """The zero numpy's floor/ceil/rint return for ``x``: -0.0 when x < 0 or x is -0.0 (NVVM has no copysign)."""
    if x < 0.0:
        return np.float64(-0.0)
    return np.float64(x) if x == 0.0 else np.float64(0.0)


@_dev
def floor(x):  # pragma: no cover - compiled
    if not (x == x and x - x == 0.0) or abs(x) >= 4503599627370496.0:
        return np.float64(x)  # NaN, inf, and values already whole (|x| >= 2**52)
    f = np.float64(np.int64(x))  # truncation
    if f > x:
        f -= 1.0
    return _signed_zero(x) if f == 0.0 else f  # floor(-0.0) is -0.0


@_dev
def ceil(x):  # pragma: no cover - compiled
    if not (x == x and x - x == 0.0) or abs(x) >= 4503599627370496.0:
        return np.float64(x)
    f = np.float64(np.int64(x))
    if f < x:
        f += 1.0
    return _signed_zero(x) if f == 0.0 else f  # ceil(-0.3) is -0.0


@_dev
def rint(x):  # pragma: no cover - compiled
    """Round half to even, like ``np.rint``."""
    if not (x == x and x - x == 0.0) or abs(x) >= 4503599627370496.0:
        return np.float64(x)
    f = np.float64(np.int64(x))
    if f > x:
        f -= 1.0  # f = floor(x)
    d = x - f
    if d > 0.5 or (d == 0.5 and f - 2.0 * np.float64(np.int64(f / 2.0)) != 0.0):
        f += 1.0
    return _signed_zero(x) if f == 0.0 else f
