"""Fixed CUDA kernels of the GPU backend: the tile prefix scan, dtype casts, and device-wide radix
select for quantiles and top-k (data stays on the device; only 2**16-bucket histograms and at most
``max_host`` candidate keys come back to the host).

Radix select: Alabi et al., "Fast k-selection algorithms for graphics processing units" (JEA 2012,
sec. 3.2): histogram the top 16 bits of the order-preserving key (global atomics), pick the bucket
holding the rank from the histogram; a small bucket's keys are gathered (atomic cursor) and selected
among, a large one is narrowed one 16-bit digit per pass under its prefix (MSD radix select) until
it is small or every bit is known. The key transform and the interpolation are those of
:mod:`dawnstream.accel.radix`, so results equal ``np.quantile`` / ``np.median`` bit for bit, as on
the CPU.
"""

from __future__ import annotations

import functools
from typing import Any

import numba
import numpy as np
from numba import cuda

from dawnstream.accel import radix
from dawnstream.accel.cpu import BufferPool
from dawnstream.accel.cuda_device import block_scan


@functools.cache
def kernels(tpb: int) -> dict[str, Any]:
    """The fixed kernels for blocks of ``tpb`` threads (compiled lazily per argument types)."""

    @cuda.jit(device=True, inline=True)
    def block_share(tid, m):  # pragma: no cover - compiled
        """[lo, hi): thread ``tid``'s contiguous share of ``m`` items, one block doing them all."""
        chunk = (m + tpb - 1) // tpb
        # Conditional expressions, not min(): numba's CUDA target fails to type min(int64, int64).
        lo = tid * chunk
        lo = lo if lo < m else m
        hi = lo + chunk
        hi = hi if hi < m else m
        return lo, hi

    @cuda.jit(device=True, inline=True)
    def share_prefix(sh, tid, vals, lo, hi):  # pragma: no cover - compiled
        """(sum of vals[lo:hi], sum of the shares of the threads before, inclusive sum) over the block."""
        s = 0.0
        for j in range(lo, hi):
            s += vals[j]
        x = block_scan(sh, tid, s)
        # The neighbour's inclusive sum, not x - s: inf - inf would turn a running inf into NaN.
        return s, (sh[tid - 1] if tid > 0 else 0.0), x

    @cuda.jit
    def exclusive_scan(vals, out, total):  # pragma: no cover - compiled
        """One block: ``out[j] = sum(vals[:j])`` and ``total[0] = sum(vals)`` (float64)."""
        tid = cuda.threadIdx.x
        sh = cuda.shared.array(tpb, numba.float64)
        lo, hi = block_share(tid, vals.size)
        s, run, x = share_prefix(sh, tid, vals, lo, hi)
        for j in range(lo, hi):
            out[j] = run
            run += vals[j]
        if tid == tpb - 1:
            total[0] = x

    @cuda.jit
    def find_ranks(hist, r0, r1, out):  # pragma: no cover - compiled
        """One block, for rank r0 then r1: the bucket b with sum(hist[:b]) <= r < sum(hist[:b + 1]), that
        sum and hist[b], in out[0:3] and out[3:6] (so only 48 bytes, not the histogram, go back)."""
        tid = cuda.threadIdx.x
        sh = cuda.shared.array(tpb, numba.float64)
        lo, hi = block_share(tid, hist.size)
        s, start, _ = share_prefix(sh, tid, hist, lo, hi)  # counts are exact in float64 up to 2**53
        for k in range(2):
            r = r0 if k == 0 else r1
            if start <= r and r < start + s:
                acc = start
                for j in range(lo, hi):
                    c = hist[j]
                    if r < acc + c:
                        out[3 * k] = j
                        out[3 * k + 1] = np.int64(acc)
                        out[3 * k + 2] = c
                        break
                    acc += c

    @cuda.jit
    def fill(dst, value):  # pragma: no cover - compiled
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < dst.size:
            dst[i] = value
            i += stride

    @cuda.jit
    def cast(src, dst):  # pragma: no cover - compiled
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < src.size:
            dst[i] = src[i]
            i += stride

    @cuda.jit(device=True, inline=True)
    def sort_key(b, top, is_float):  # pragma: no cover - compiled
        """The order-preserving unsigned key of bit pattern ``b`` (radix._key)."""
        if is_float:
            return ~b if b & top else b | top
        return b ^ top

    @cuda.jit
    def histogram(u, top, nan_above, is_float, pmask, prefix, shift, hist, nans):  # pragma: no cover
        """Counts of the 16-bit digit at ``shift`` of the keys whose bits under ``pmask`` equal ``prefix``
        (``pmask`` 0: every key), and of the NaNs."""
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        absmask = ~top
        while i < u.size:
            b = u[i]
            if is_float and (b & absmask) > nan_above:
                cuda.atomic.add(nans, 0, 1)
            else:
                key = sort_key(b, top, is_float)
                if (key & pmask) == prefix:
                    cuda.atomic.add(hist, np.int64((key >> shift) & 0xFFFF), 1)
            i += stride

    @cuda.jit
    def gather(u, top, nan_above, is_float, pmask, prefix, shift, d0, d1, out, cursor):  # pragma: no cover
        """The keys under ``prefix`` whose digit at ``shift`` is in [d0, d1], appended at ``cursor``."""
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        absmask = ~top
        while i < u.size:
            b = u[i]
            if not (is_float and (b & absmask) > nan_above):
                key = sort_key(b, top, is_float)
                d = np.int64((key >> shift) & 0xFFFF)
                if (key & pmask) == prefix and d0 <= d and d <= d1:
                    out[cuda.atomic.add(cursor, 0, 1)] = key
            i += stride

    @cuda.jit
    def gather_above(v, cut, out, cursor):  # pragma: no cover - compiled
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < v.size:
            if v[i] > cut:
                out[cuda.atomic.add(cursor, 0, 1)] = v[i]
            i += stride

    return {"exclusive_scan": exclusive_scan, "find_ranks": find_ranks, "fill": fill, "cast": cast,
            "histogram": histogram, "gather": gather, "gather_above": gather_above}


def grid(n: int, tpb: int, max_blocks: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride loop over ``n`` items (at least one block)."""
    return max(1, min((n + tpb - 1) // tpb, max_blocks)), tpb


class DeviceScratch:
    """Pooled device buffers and launches on one stream, for one executable: arrays come from a
    :class:`dawnstream.accel.cpu.BufferPool` (no allocation once warm), zeroing is a kernel, small
    results come back with one stream sync each.

    Args:
        tpb: threads per block (a power of two).
        max_blocks: grid size cap of the grid-stride kernels.
        stream: the CUDA stream every launch and copy goes on (the default stream if None).
    """

    def __init__(self, tpb: int, max_blocks: int, stream: Any = None) -> None:
        self.k = kernels(tpb)
        self.tpb = tpb
        self.max_blocks = max_blocks
        self.stream = stream if stream is not None else 0
        self.simulated = bool(getattr(numba.config, "ENABLE_CUDASIM", 0))
        self.pool = BufferPool(lambda size, dtype: cuda.device_array(size, dtype=dtype))

    def launch(self, name: str, n: int, *args: Any) -> None:
        """Fixed kernel ``name`` over ``n`` items (grid-stride) on the stream."""
        self.k[name][grid(n, self.tpb, self.max_blocks) + (self.stream,)](*args)

    def buf(self, name: str, dtype: Any, size: int) -> Any:
        """The pooled device array ``name`` of ``size`` items (contents undefined)."""
        return self.pool.get(name, np.dtype(dtype).name, size)

    def fill(self, d: Any, value: float) -> None:
        """Set ``d`` to ``value`` on the stream (a kernel: no host buffer, no sync). The simulator runs each
        thread in Python, so there a large array is filled by a copy instead."""
        if not d.size:
            return
        if self.simulated and d.size > 256:
            d.copy_to_device(np.full(d.size, value, dtype=d.dtype), stream=self.stream)
        else:
            self.launch("fill", d.size, d, value)

    def zeros(self, name: str, dtype: Any, size: int, value: float = 0.0) -> Any:
        """The pooled device array ``name`` set to ``value``."""
        d = self.buf(name, dtype, size)
        self.fill(d, value)
        return d

    def host(self, d: Any) -> np.ndarray:
        """A device array's values (waits for the stream)."""
        h = d.copy_to_host(stream=self.stream)
        if not isinstance(self.stream, int):  # 0 is the default stream, synchronous already
            self.stream.synchronize()
        return h


class DeviceSelect:
    """Radix select over device arrays for one executable (``tpb`` threads per block).

    A bucket of the first pass holding more than ``max_host`` keys is not copied to the host: the
    select goes on digit by digit on the device (a histogram of the next 16 bits of the keys under the
    bucket's prefix, pick the digit holding the rank) until the bucket is small or every bit of the
    key is known: at most 2 passes for 32-bit keys, 4 for 64-bit ones, whatever the data's spread.

    Args:
        scratch: the executable's :class:`DeviceScratch` (its stream and pool).
        max_host: the most candidate keys copied back and finished by ``np.partition`` (default 2**16).
    """

    def __init__(self, scratch: DeviceScratch, max_host: int = 1 << 16) -> None:
        self.scratch = scratch
        self.k = scratch.k
        self.tpb = scratch.tpb
        self.stream = scratch.stream
        self.max_host = max_host
        self._launch = scratch.launch
        self._host = scratch.host

    def _buf(self, name: str, dtype: Any, size: int) -> Any:
        return self.scratch.buf(f"select:{name}", dtype, size)

    def _zeros(self, name: str, size: int) -> Any:
        return self.scratch.zeros(f"select:{name}", np.int64, size)

    def as_bits(self, d: Any) -> tuple[Any, Any, Any, bool, np.dtype]:
        """(bit view, sign bit, largest non-NaN magnitude bits, is_float, value dtype) of a device column;
        narrow ints and bools are widened to int64 on the device first."""
        dt = np.dtype(d.dtype)
        if dt == np.float64:
            return d.view(np.uint64), np.uint64(1 << 63), np.uint64(0x7FF0000000000000), True, dt
        if dt == np.float32:
            return d.view(np.uint32), np.uint32(1 << 31), np.uint32(0x7F800000), True, dt
        if dt == np.int32:
            return d.view(np.uint32), np.uint32(1 << 31), np.uint32(0), False, dt
        if dt != np.int64:
            d = self.cast(d, np.int64)
        return d.view(np.uint64), np.uint64(1 << 63), np.uint64(0), False, np.dtype(np.int64)

    def cast(self, d: Any, dtype: Any) -> Any:
        """A device copy of ``d`` converted to ``dtype``."""
        out = self._buf(f"cast:{np.dtype(dtype).name}", dtype, d.size)
        if d.size:
            self._launch("cast", d.size, d, out)
        return out

    def select_ranks(self, d: Any, r0: int, r1: int) -> tuple[float, float, int]:
        """Like :func:`dawnstream.accel.radix.select_ranks` on a device column."""
        if d.size == 0:
            return float("nan"), float("nan"), 0
        u, top, nan_above, is_float, dtype = self.as_bits(d)
        shift = np.uint64(np.dtype(u.dtype).itemsize * 8 - radix.BITS)
        hist = self._zeros("hist", 1 << radix.BITS)
        nans = self._zeros("nans", 1)
        ut = np.dtype(u.dtype).type
        self._launch("histogram", u.size, u, top, nan_above, is_float, ut(0), ut(0), shift, hist, nans)
        m = int(u.size - self._host(nans)[0])
        if m == 0:
            return float("nan"), float("nan"), 0
        r0, r1 = min(r0, m - 1), min(r1, m - 1)
        b0, before, _c0, b1, before1, c1 = self._find(hist, r0, r1)
        size = before1 + c1 - before
        if size > self.max_host:
            k0 = self._refine(u, top, nan_above, is_float, int(shift), b0, r0 - before)
            k1 = k0 if r1 == r0 else self._refine(u, top, nan_above, is_float, int(shift), b1, r1 - before1)
            return (radix._value(k0, top, is_float, dtype), radix._value(k1, top, is_float, dtype), m)
        out = self._buf("cand", u.dtype, size)
        cursor = self._zeros("cursor", 1)
        self._launch("gather", u.size, u, top, nan_above, is_float, ut(0), ut(0), shift, np.int64(b0), np.int64(b1),
                     out, cursor)
        cand = self._host(out)
        k0, k1 = r0 - before, r1 - before
        cand = np.partition(cand, (k0, k1)) if k1 != k0 else np.partition(cand, k0)
        return (radix._value(cand[k0], top, is_float, dtype), radix._value(cand[k1], top, is_float, dtype), m)

    def _find(self, hist: Any, r0: int, r1: int) -> list[int]:
        """[bucket, count before it, its count] for rank r0, then for r1, found on the device."""
        out = self._buf("found", np.int64, 6)
        self.k["find_ranks"][1, self.tpb, self.stream](hist, np.int64(r0), np.int64(r1), out)
        return [int(v) for v in self._host(out)]

    def _refine(self, u: Any, top: Any, nan_above: Any, is_float: bool, shift: int, bucket: int, rank: int) -> Any:
        """The key of local ``rank`` among the keys whose top 16 bits are ``bucket`` (MSD radix select,
        one 16-bit digit per pass, all on the device)."""
        ut = np.dtype(u.dtype).type
        bits = np.dtype(u.dtype).itemsize * 8
        prefix = bucket << shift
        pmask = ((1 << bits) - 1) ^ ((1 << shift) - 1)
        nans = self._zeros("nans", 1)  # counted again, unused
        while shift > 0:
            shift -= radix.BITS
            hist = self._zeros("hist", 1 << radix.BITS)
            self._launch("histogram", u.size, u, top, nan_above, is_float, ut(pmask), ut(prefix), np.uint64(shift),
                         hist, nans)
            digit, before, size, *_ = self._find(hist, rank, rank)
            rank -= before
            if size <= self.max_host and shift > 0:
                out = self._buf("cand", u.dtype, size)
                cursor = self._zeros("cursor", 1)
                self._launch("gather", u.size, u, top, nan_above, is_float, ut(pmask), ut(prefix), np.uint64(shift),
                             np.int64(digit), np.int64(digit), out, cursor)
                return np.partition(self._host(out), rank)[rank]
            prefix |= digit << shift
            pmask |= 0xFFFF << shift
        return ut(prefix)  # every bit known: all keys under it are equal

    def quantile(self, d: Any, q: float, method: str) -> float:
        """Exact quantile of a device column, equal to :func:`dawnstream.accel.radix.quantile`."""
        m = d.size
        if m == 0:
            return float("nan")
        lo, hi, t = radix._positions(m, q, method)
        v0, v1, m_true = self.select_ranks(d, lo, hi)
        if m_true == 0:
            return float("nan")
        if m_true != m:
            lo, hi, t = radix._positions(m_true, q, method)
            v0, v1, _ = self.select_ranks(d, lo, hi)
        if method == "median":
            return float(v0) if lo == hi else float((v0 + v1) / 2.0)
        return float(radix._lerp(v0, v1, t))

    def top_k(self, d: Any, k: int) -> np.ndarray:
        """The ``k`` largest non-NaN values, descending, float64 (== :func:`radix.top_k`)."""
        v = d if np.dtype(d.dtype) == np.float64 else self.cast(d, np.float64)
        n = v.size
        if n == 0:
            return np.empty(0)
        cut, _, m = self.select_ranks(v, max(n - k, 0), max(n - k, 0))
        if m == 0:
            return np.empty(0)
        if k >= m:
            h = self._host(v)
            return -np.sort(-h[~np.isnan(h)])
        if m != n:
            cut, _, _ = self.select_ranks(v, m - k, m - k)
        out = self._buf("above", np.float64, k)
        cursor = self._zeros("cursor", 1)
        self._launch("gather_above", n, v, np.float64(cut), out, cursor)
        above = self._host(out)[: int(self._host(cursor)[0])]
        ties = np.full(k - above.size, cut)
        return -np.sort(-np.concatenate([above, ties]))
