"""GPU backend: the program's pipelines as generated numba.cuda kernels, data kept on the device.

Inputs are copied to the device once per batch; every intermediate column, mask, per-tile total and
breaker input stays there; only outputs (and the small radix histograms and candidate sets of
quantiles) come back. Kernels are generated per program (:mod:`dawnstream.accel.cuda_codegen`),
written to ``<cache>/accel/k<key>_cuda<tpb>.py`` and imported from there, like the CPU backend;
numba compiles them per argument types, never per batch length.

Float tolerance: maps are IEEE (math in float64, then cast to the IR dtype: float32 math may
differ from numpy's float32 ufuncs in the last bit); sums, means and scans are combined in tile and
block order (relative error <= n * 2**-53 of the sum of magnitudes, as the CPU's reassociation).
Integer and boolean results are exact. Under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in
numba's simulator (blocks of 32 threads), which is how the tests check them without a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dawnstream.accel.cpu import BufferPool, aggregate_value, group_values, load_module
from dawnstream.accel.cuda_codegen import CudaKernel, generate_cuda, module_source
from dawnstream.accel.cuda_kernels import DeviceSelect, grid, kernels
from dawnstream.accel.ir import Program, Quantile, ScanState, TopK
from dawnstream.accel.plan import Plan, plan


class CudaExecutable:
    """A program compiled for a CUDA device (or numba's CUDA simulator).

    Args:
        program: the typed program.
        tpb: threads per block, a power of two (default 256 on a GPU, 32 in the simulator).
        max_blocks: cap on the grid of the per-row kernels (blocks walk tiles grid-stride).

    Call :meth:`run` per batch; same contract as :class:`dawnstream.accel.cpu.CpuExecutable`.
    Raises ``ValueError`` (from numba) when no CUDA device or simulator is available.
    """

    backend = "gpu"

    def __init__(self, program: Program, tpb: int | None = None, max_blocks: int = 1024) -> None:
        from numba import config

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
        self.select = DeviceSelect(self.tpb, self.max_blocks)
        self.fixed = kernels(self.tpb)
        from numba import cuda

        self.pool = BufferPool(lambda size, dtype: cuda.device_array(size, dtype=dtype))

    def run(self, columns: dict[str, np.ndarray], params: dict[str, float] | None = None,
            state: ScanState | None = None, n: int | None = None) -> dict[str, Any]:
        """Run over one batch (host arrays in, host values out; see ``CpuExecutable.run``).

        Raises:
            ValueError: a group key outside its domain, or columns of different lengths.
        """
        from numba import cuda

        prog = self.program
        arrays: dict[str, Any] = {}
        rows, n = n, -1
        for name, dt in prog.inputs.items():
            a = np.ascontiguousarray(columns[name], dtype=dt)
            if n >= 0 and a.size != n:
                raise ValueError(f"column {name!r} has {a.size} rows, others {n}")
            n = a.size
            arrays[name] = cuda.to_device(a)
        n = rows if rows is not None and not prog.inputs else max(n, 0)
        scalars: dict[str, Any] = {k: float(v) if prog.runtime_params[k].startswith("float") else int(v)
                                   for k, v in (params or {}).items()}
        state = state if state is not None else ScanState()
        results: dict[str, Any] = {}
        outputs = set(prog.outputs)
        err = cuda.to_device(np.zeros(1, dtype=np.int64))
        for pipe, k in zip(self.plan.pipelines, self.kernels, strict=True):
            if k is not None:
                self._run_kernel(k, n, arrays, scalars, state, results, outputs, err)
                if k.groups and err.copy_to_host()[0]:
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
            out[name] = v.copy_to_host() if hasattr(v, "copy_to_host") else v
        return out

    def _run_kernel(self, k: CudaKernel, n: int, arrays: dict[str, Any], scalars: dict[str, Any],
                    state: ScanState, results: dict[str, Any], outputs: set[str], err: Any) -> None:
        from numba import cuda

        ntiles = (n + self.tpb - 1) // self.tpb
        launch = grid(n, self.tpb, self.max_blocks)
        args: list[Any] = [n, ntiles, *(arrays[c] for c in k.inputs), *(scalars[p] for p in k.params)]
        for c, dt in k.writes:
            a = cuda.device_array(n, dtype=dt) if c in outputs else self.pool.get(c, dt, n)
            arrays[c] = a
            args.append(a)
        cells = []
        for agg in k.aggs:
            init = {"min": np.inf, "max": -np.inf}.get(agg.fn, 0.0)
            cells.append(cuda.to_device(np.array([init, 0.0, 0.0])))
        args += cells
        groups = []
        for g in k.groups:
            init = {"min": np.inf, "max": -np.inf}.get(g.fn, 0.0)
            arrs = (cuda.to_device(np.full(g.domain, init)), cuda.to_device(np.zeros(g.domain, dtype=np.int64)),
                    cuda.to_device(np.zeros(g.domain)))
            groups.append(arrs)
            args += arrs
        tiles = [self.pool.get(f"tile:{t}", "float64", max(ntiles, 1)) for t in k.tiled]
        args += [*tiles, err]
        getattr(self.module, f"{k.name}_a")[launch](*args)
        if k.has_b:
            prefixes, totals = [], []
            for t, tt in zip(k.tiled, tiles, strict=True):
                p = self.pool.get(f"prefix:{t}", "float64", max(ntiles, 1))
                total = cuda.to_device(np.zeros(1))
                if ntiles:
                    self.fixed["exclusive_scan"][1, self.tpb](tt[:ntiles], p[:ntiles], total)
                prefixes.append(p)
                totals.append(total)
            total_of = {t: float(tot.copy_to_host()[0]) for t, tot in zip(k.tiled, totals, strict=True)}
            kept = [cuda.device_array(n, dtype=dt) for _f, _c, dt in k.keeps]
            scan_out = [cuda.device_array(n, dtype="int64" if s.fn == "cumcount" else "float64") for s in k.scans]
            states = [cuda.to_device(np.array(state.get(s.out), dtype=np.float64)) for s in k.scans]
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
            s, cnt, nan = cell.copy_to_host()
            results[agg.out] = scalars[agg.out] = aggregate_value(agg.fn, s, int(cnt), bool(nan))
        for g, (dv, dc, dn) in zip(k.groups, groups, strict=True):
            results[g.out] = group_values(g.fn, dv.copy_to_host(), dc.copy_to_host(), dn.copy_to_host())
