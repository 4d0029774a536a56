"""GPU backend: the program's pipelines as generated numba.cuda kernels, data kept on the device.

Inputs are copied to the device once per batch, from pinned staging buffers, on a copy stream that
overlaps the previous batch's kernels (:meth:`CudaExecutable.run_batches`); device arrays are taken
in place. Every intermediate column, mask, per-tile total and breaker input stays there; only
outputs (and the small radix histograms and candidate sets of quantiles) come back. Kernels are
generated per program (:mod:`dawnstream.accel.cuda_codegen`), written to
``<cache>/accel/k<key>_cuda<tpb>.py`` and imported from there, like the CPU backend; numba compiles
them per argument types, never per batch length.

Exactness: maps, masks, kept columns, counts, min/max, quantiles and top-k equal the numpy reference
bit for bit (the rules of :mod:`dawnstream.accel.fmath`: float32 maps in float32, multiplies NVVM
cannot fuse, the IR's own exp/log/log10, saturating casts); sums, means and scans are combined in
tile and block order (relative error <= n * 2**-53 of the sum of magnitudes). Under
``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in numba's simulator (blocks of 32 threads), which
is how the tests check them without a GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from dawnstream.accel.cpu import BufferPool, aggregate_value, group_values, load_module
from dawnstream.accel.cuda_codegen import CudaKernel, generate_cuda, module_source
from dawnstream.accel.cuda_kernels import DeviceScratch, DeviceSelect, grid, kernels
from dawnstream.accel.ir import Program, Quantile, ScanState, TopK
from dawnstream.accel.plan import Plan, plan

UPLOAD_CHUNK_BYTES = 8 << 20
"""Host-to-device staging goes in chunks of this size, so copying into pinned memory overlaps the DMA."""
COPY_THREADS = 4
"""Threads copying a chunk into pinned memory (one thread's memcpy is below a PCIe 5 link's rate)."""


@functools.cache
def _copier() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="accel-staging")


class CudaExecutable:
    """A program compiled for a CUDA device (or numba's CUDA simulator).

    Args:
        program: the typed program.
        tpb: threads per block, a power of two (default 256 on a GPU, 32 in the simulator).
        max_blocks: cap on the grid of the per-row kernels (blocks walk tiles grid-stride).

    Call :meth:`run` per batch (same contract as :class:`dawnstream.accel.cpu.CpuExecutable`), or
    :meth:`run_batches` over a stream of batches, which copies batch i+1 to the device while batch i
    computes. Inputs may be host arrays (copied once through pinned staging buffers) or device
    arrays (used in place: a chain of programs keeps its columns on the device with
    ``device_outputs=True``). Every scratch buffer comes from a pool: after the first two batches
    (one per staging slot) of a size, a run allocates device memory only for the outputs it hands
    back as device arrays.
    Not thread-safe (one per operator instance). Raises ``ValueError`` (from numba) when no CUDA
    device or simulator is available.
    """

    backend = "gpu"

    def __init__(self, program: Program, tpb: int | None = None, max_blocks: int = 1024) -> None:
        from numba import config, cuda

        self.simulated = bool(getattr(config, "ENABLE_CUDASIM", 0))
        self.tpb = tpb or (32 if self.simulated else 256)
        if self.tpb & (self.tpb - 1):
            raise ValueError(f"tpb must be a power of two, got {self.tpb}")
        self.max_blocks = 4 if self.simulated else max_blocks
        self.program = program
        self.plan: Plan = plan(program)
        key = program.key()
        self.kernels: list[CudaKernel | None] = [
            generate_cuda(p, f"pipeline_{p.index}") if p.ops else None for p in self.plan.pipelines]
        self.source = module_source([k for k in self.kernels if k is not None], key, self.tpb)
        self.module = load_module(f"{key}_cuda{self.tpb}", self.source)
        self.fixed = kernels(self.tpb)
        self.scratch = DeviceScratch(self.tpb, self.max_blocks, cuda.stream())  # kernels and result copies
        self.stream: Any = self.scratch.stream
        self.pool = self.scratch.pool
        self.copy_stream = cuda.stream()  # input copies, so the next batch's copy overlaps this one's kernels
        self.pinned = BufferPool(lambda size, dtype: cuda.pinned_array(size, dtype=dtype))
        self.select = DeviceSelect(self.scratch)
        # Per staging slot: its last input copy is done. (Kernels reading a slot are done when run_staged
        # returns: it ends with a stream sync.)
        self._copied = [cuda.event(), cuda.event()]
        self._slot = 0

    def stage(self, columns: dict[str, Any], slot: int | None = None) -> tuple[dict[str, Any], int, int]:
        """Start copying ``columns`` to the device (asynchronously, on ``copy_stream``).

        Host arrays go through a pinned buffer of ``slot`` (0 or 1; alternate by default) into a pooled
        device buffer; device arrays are used in place. Returns (device columns, rows, slot) for
        :meth:`run_staged`.

        Raises:
            ValueError: columns of different lengths, or a device array of the wrong dtype."""
        from numba import cuda

        if slot is None:
            slot, self._slot = self._slot, 1 - self._slot
        arrays: dict[str, Any] = {}
        n = -1
        waited = False
        for name, dt in self.program.inputs.items():
            a = columns[name]
            if not hasattr(a, "copy_to_host") and hasattr(a, "__cuda_array_interface__"):
                a = cuda.as_cuda_array(a)  # CuPy, PyTorch, ...: zero-copy view
            if hasattr(a, "copy_to_host"):  # numba device array (or the simulator's)
                if np.dtype(a.dtype) != np.dtype(dt):
                    raise ValueError(f"device column {name!r} is {a.dtype}, the program reads {dt}")
                d = a
            else:
                h = np.ascontiguousarray(a, dtype=dt)
                if not waited:  # this slot's pinned buffers may still feed an earlier copy
                    self._copied[slot].synchronize()
                    waited = True
                buf = self.pinned.get(f"{slot}:{name}", dt, h.size)
                d = self.pool.get(f"in{slot}:{name}", dt, h.size)
                self._upload(h, buf, d)
            if n >= 0 and d.size != n:
                raise ValueError(f"column {name!r} has {d.size} rows, others {n}")
            n = d.size
            arrays[name] = d
        self._copied[slot].record(self.copy_stream)
        return arrays, n, slot

    def _upload(self, h: np.ndarray, buf: np.ndarray, d: Any) -> None:
        """Host ``h`` -> pinned ``buf`` -> device ``d``, chunk by chunk: the DMA of a chunk (async, on the
        copy stream) runs while the CPU copies the next one into pinned memory, with ``COPY_THREADS``
        threads (numpy's copy releases the GIL), so staging costs about the slower of the two, not both."""
        step = max(UPLOAD_CHUNK_BYTES // max(h.itemsize, 1), 1)
        for lo in range(0, h.size, step):
            hi = min(lo + step, h.size)
            k = min(COPY_THREADS, max((hi - lo) // 65536, 1))
            edges = [lo + (hi - lo) * j // k for j in range(k + 1)]
            bounds = list(zip(edges[:-1], edges[1:], strict=True))
            if k > 1:
                list(_copier().map(lambda b: np.copyto(buf[b[0]:b[1]], h[b[0]:b[1]]), bounds))
            else:
                np.copyto(buf[lo:hi], h[lo:hi])
            d[lo:hi].copy_to_device(buf[lo:hi], stream=self.copy_stream)

    def run(self, columns: dict[str, Any], params: dict[str, float] | None = None,
            state: ScanState | None = None, n: int | None = None, device_outputs: bool = False) -> dict[str, Any]:
        """Run over one batch (see ``CpuExecutable.run``); ``columns`` may be host or device arrays.

        With ``device_outputs`` the column outputs stay on the device (fresh arrays the caller owns);
        scalars and group results are host values either way.

        Raises:
            ValueError: a group key outside its domain, or columns of different lengths.
        """
        arrays, rows, slot = self.stage(columns)
        return self.run_staged(arrays, rows, slot, params, state, n, device_outputs)

    def run_batches(self, batches: Iterable[dict[str, Any]], params: dict[str, float] | None = None,
                    state: ScanState | None = None, device_outputs: bool = False) -> Iterator[dict[str, Any]]:
        """Run over consecutive batches, copying batch i+1 in while batch i computes (two staging
        slots, two streams); yields each batch's outputs in order. Scan state carries across."""
        state = state if state is not None else ScanState()
        it = iter(batches)
        cur = next(it, None)
        staged = self.stage(cur) if cur is not None else None
        while staged is not None:
            nxt = next(it, None)
            ahead = self.stage(nxt) if nxt is not None else None
            yield self.run_staged(*staged, params=params, state=state, device_outputs=device_outputs)
            staged = ahead

    def run_staged(self, arrays: dict[str, Any], rows: int, slot: int, params: dict[str, float] | None = None,
                   state: ScanState | None = None, n: int | None = None,
                   device_outputs: bool = False) -> dict[str, Any]:
        """Run over columns :meth:`stage` put on the device."""
        prog = self.program
        stream = self.stream
        self._copied[slot].wait(stream)
        arrays = dict(arrays)
        n = n if n is not None and not prog.inputs else max(rows, 0)
        scalars: dict[str, Any] = {k: float(v) if prog.runtime_params[k].startswith("float") else int(v)
                                   for k, v in (params or {}).items()}
        state = state if state is not None else ScanState()
        results: dict[str, Any] = {}
        outputs = set(prog.outputs) if device_outputs else set()
        err = self.scratch.zeros("err", "int64", 1)
        for pipe, k in zip(self.plan.pipelines, self.kernels, strict=True):
            if k is not None:
                self._run_kernel(k, n, arrays, scalars, state, results, outputs, err)
                if k.groups and self.scratch.host(err)[0]:
                    raise ValueError("group key outside its domain")
            for b in pipe.breakers:
                col = arrays[b.value.args[0]]
                if isinstance(b, Quantile):
                    scalars[b.out] = results[b.out] = self.select.quantile(col, b.q, b.method)
                elif isinstance(b, TopK):
                    results[b.out] = self.select.top_k(col, b.k)
        out = {}
        for name in prog.outputs:
            v = results[name] if name in results else arrays[name]
            if hasattr(v, "copy_to_host") and not device_outputs:
                v = v.copy_to_host(stream=stream)
            elif device_outputs and name in prog.inputs:  # a staging buffer: the caller gets its own copy
                from numba import cuda

                c = cuda.device_array(v.size, dtype=v.dtype, stream=stream)
                c.copy_to_device(v, stream=stream)
                v = c
            out[name] = v
        stream.synchronize()
        return out

    def _run_kernel(self, k: CudaKernel, n: int, arrays: dict[str, Any], scalars: dict[str, Any],
                    state: ScanState, results: dict[str, Any], outputs: set[str], err: Any) -> None:
        from numba import cuda

        stream = self.stream
        ntiles = (n + self.tpb - 1) // self.tpb
        launch = grid(n, self.tpb, self.max_blocks) + (stream,)
        args: list[Any] = [n, ntiles, *(arrays[c] for c in k.inputs), *(scalars[p] for p in k.params)]
        for c, dt in k.writes:
            a = cuda.device_array(n, dtype=dt, stream=stream) if c in outputs else self.pool.get(c, dt, n)
            arrays[c] = a
            args.append(a)
        cells = []
        for agg in k.aggs:
            cell = self.scratch.zeros(f"cell:{agg.out}", "float64", 3)
            if agg.fn in ("min", "max"):
                self.scratch.fill(cell[:1], np.inf if agg.fn == "min" else -np.inf)
            cells.append(cell)
        args += cells
        groups = []
        for g in k.groups:
            init = {"min": np.inf, "max": -np.inf}.get(g.fn, 0.0)
            z = self.scratch.zeros
            arrs = (z(f"gv:{g.out}", "float64", g.domain, init), z(f"gc:{g.out}", "int64", g.domain),
                    z(f"gn:{g.out}", "float64", g.domain))
            groups.append(arrs)
            args += arrs
        tiles = [self.pool.get(f"tile:{t}", "float64", max(ntiles, 1)) for t in k.tiled]
        args += [*tiles, err]
        getattr(self.module, f"{k.name}_a")[launch](*args)
        if k.has_b:
            prefixes, totals = [], []
            for t, tt in zip(k.tiled, tiles, strict=True):
                p = self.pool.get(f"prefix:{t}", "float64", max(ntiles, 1))
                total = self.scratch.zeros(f"total:{t}", "float64", 1)
                if ntiles:
                    self.fixed["exclusive_scan"][1, self.tpb, stream](tt[:ntiles], p[:ntiles], total)
                prefixes.append(p)
                totals.append(total)
            total_of = {t: float(self.scratch.host(tot)[0]) for t, tot in zip(k.tiled, totals, strict=True)}
            kept = [cuda.device_array(n, dtype=dt, stream=stream) if name in outputs
                    else self.pool.get(f"kept:{name}", dt, n) for _f, name, dt in k.keeps]
            scan_out = [cuda.device_array(n, dtype=dt, stream=stream) if s.out in outputs
                        else self.pool.get(f"scan:{s.out}", dt, n)
                        for s, dt in ((s, "int64" if s.fn == "cumcount" else "float64") for s in k.scans)]
            states = []
            for s in k.scans:
                st = self.pool.get(f"state:{s.out}", "float64", 2)
                st.copy_to_device(np.array(state.get(s.out), dtype=np.float64), stream=stream)
                states.append(st)
            args_b: list[Any] = [n, ntiles, *(arrays[c] for c in k.inputs_b), *(scalars[p] for p in k.params_b),
                                 *kept, *scan_out, *prefixes, *states, err]
            getattr(self.module, f"{k.name}_b")[launch](*args_b)
            for (f, name, _dt), a in zip(k.keeps, kept, strict=True):
                results[name] = a[: int(total_of[f"filter:{f}"])]
            for s, a in zip(k.scans, scan_out, strict=True):
                arrays[s.out] = a
                c0, s0 = state.get(s.out)
                state.values[s.out] = [c0 + n, s0 + total_of.get(f"scan:{s.out}", 0.0)]
        for agg, cell in zip(k.aggs, cells, strict=True):
            s, cnt, nan = self.scratch.host(cell)
            results[agg.out] = scalars[agg.out] = aggregate_value(agg.fn, s, int(cnt), bool(nan))
        for g, (dv, dc, dn) in zip(k.groups, groups, strict=True):
            results[g.out] = group_values(g.fn, self.scratch.host(dv), self.scratch.host(dc), self.scratch.host(dn))
