"""CPU backend: generated numba kernels, cached on disk, run pipeline by pipeline.

A program compiles to one Python module (``<cache>/accel/k<program key>.py``) holding one
``@numba.njit(cache=True)`` kernel per pipeline. numba stores the machine code beside it, keyed by
argument types (dtype, ndim, layout) - never by batch length, so a new batch size reuses the same
code. The key of the module is the hash of the typed program, so equal programs in other workers
and later runs load instead of compiling. Intermediate columns come from a buffer pool; outputs
are fresh arrays (callers keep them, e.g. zero-copy inside Arrow batches).

Exactness: maps, masks, counts, kept columns, min/max and quantiles equal the numpy reference bit for
bit (the rules of :mod:`dawnstream.accel.fmath`; no kernel carries fast-math flags). Float
``sum``/``mean`` add row by row in float64, where numpy adds pairwise: equal within
n * 2**-53 of the sum of magnitudes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dawnstream.accel import radix
from dawnstream.accel.codegen import Kernel, generate, module_source
from dawnstream.accel.ir import Program, Quantile, ScanState, TopK
from dawnstream.accel.plan import Plan, plan

_LOCK = threading.Lock()
_MODULES: dict[str, ModuleType] = {}


def cache_dir() -> Path:
    """Where generated modules and numba's cache live (``$DAWNSTREAM_CACHE/accel``)."""
    base = Path(os.environ.get("DAWNSTREAM_CACHE", Path.home() / ".cache" / "dawnstream"))
    d = base / "accel"
    d.mkdir(parents=True, exist_ok=True)
    return d


def load_module(key: str, source: str) -> ModuleType:
    """Write ``source`` to ``k<key>.py`` (atomically, once) and import it."""
    with _LOCK:
        if key in _MODULES:
            return _MODULES[key]
        path = cache_dir() / f"k{key}.py"
        if not path.exists() or path.read_text() != source:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(source)
            os.replace(tmp, path)
        name = f"dawnstream_accel_k{key}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        _MODULES[key] = mod
        return mod


def aggregate_value(fn: str, s: float, cnt: int, nan_seen: bool = False) -> Any:
    """An aggregate's result from its accumulated value ``s`` and row count: count -> int; mean, min and
    max of no rows -> NaN; ``nan_seen`` (GPU min/max, whose atomics skip NaN) -> NaN."""
    if fn == "count":
        return cnt
    if fn == "mean":
        return s / cnt if cnt else float("nan")
    if fn in ("min", "max"):
        return float("nan") if (nan_seen or not cnt) else float(s)
    return float(s)


def group_values(fn: str, vals: np.ndarray, cnts: np.ndarray, nan_seen: np.ndarray | None = None) -> np.ndarray:
    """A group aggregate's per-key results (like :func:`aggregate_value`, per key; ``vals`` is reused)."""
    if fn == "count":
        return cnts
    if fn == "mean":
        with np.errstate(all="ignore"):
            return vals / cnts
    if fn in ("min", "max"):
        vals[(cnts == 0) | (nan_seen > 0 if nan_seen is not None else False)] = np.nan
    return vals


class BufferPool:
    """Reusable scratch arrays by (name, dtype): grown when a batch is larger, never shrunk.

    Args:
        alloc: ``alloc(size, dtype) -> array`` (``np.empty``; the GPU backend passes
            ``numba.cuda.device_array``)."""

    def __init__(self, alloc: Any = None) -> None:
        self._alloc = alloc or (lambda size, dtype: np.empty(size, dtype=dtype))
        self._bufs: dict[tuple[str, str], Any] = {}

    def get(self, name: str, dtype: str, n: int) -> Any:
        buf = self._bufs.get((name, dtype))
        if buf is None or buf.size < n:
            buf = self._alloc(max(n, 1024), dtype)
            self._bufs[(name, dtype)] = buf
        return buf[:n]


class CpuExecutable:
    """A program compiled for the CPU.

    Args:
        program: the typed program.

    Call :meth:`run` per batch. Not thread-safe (one per operator instance).
    """

    backend = "cpu"

    def __init__(self, program: Program) -> None:
        self.program = program
        self.plan: Plan = plan(program)
        key = program.key()
        self.kernels: list[Kernel | None] = []
        for p in self.plan.pipelines:
            self.kernels.append(generate(p, f"pipeline_{p.index}", key) if p.ops else None)
        self.source = module_source([k for k in self.kernels if k is not None], key)
        self.module = load_module(key, self.source)
        self.pool = BufferPool()

    def dispatchers(self) -> list[Any]:
        """The numba dispatchers (``.signatures`` shows what was compiled)."""
        return [getattr(self.module, k.name) for k in self.kernels if k is not None]

    def run(self, columns: dict[str, np.ndarray], params: dict[str, float] | None = None,
            state: ScanState | None = None, n: int | None = None) -> dict[str, Any]:
        """Run over one batch.

        Args:
            columns: every program input as a 1-D numpy array (one length ``n``).
            params: runtime scalar params.
            state: scan state, updated in place (a fresh one if None).
            n: the batch length, needed only when the program reads no column.
        Returns:
            ``{output: value}`` like :func:`dawnstream.accel.reference.run_reference`.
        Raises:
            ValueError: a group key outside its domain, or columns of different lengths.
        """
        prog = self.program
        arrays: dict[str, np.ndarray] = {}
        rows = n
        n = -1
        for name, dt in prog.inputs.items():
            a = np.ascontiguousarray(columns[name], dtype=dt)
            if n >= 0 and a.size != n:
                raise ValueError(f"column {name!r} has {a.size} rows, others {n}")
            n = a.size
            arrays[name] = a
        n = rows if rows is not None and not prog.inputs else max(n, 0)
        scalars: dict[str, Any] = {k: float(v) if prog.runtime_params[k].startswith("float") else v
                                   for k, v in (params or {}).items()}
        state = state if state is not None else ScanState()
        results: dict[str, Any] = {}
        outputs = set(prog.outputs)
        for pipe, k in zip(self.plan.pipelines, self.kernels, strict=True):
            if k is not None:
                self._run_kernel(k, n, arrays, scalars, state, results, outputs)
            for b in pipe.breakers:
                col = arrays[b.value.args[0]]
                if isinstance(b, Quantile):
                    scalars[b.out] = results[b.out] = radix.quantile(col, b.q, b.method)
                elif isinstance(b, TopK):
                    results[b.out] = radix.top_k(col, b.k)
        return {k: results[k] if k in results else arrays[k] for k in prog.outputs}

    def _run_kernel(self, k: Kernel, n: int, arrays: dict[str, np.ndarray], scalars: dict[str, Any],
                    state: ScanState, results: dict[str, Any], outputs: set[str]) -> None:
        args: list[Any] = [n]
        args += [arrays[c] for c in k.inputs]
        args += [scalars[p] for p in k.params]
        written = []
        for c, dt in k.writes:
            a = np.empty(n, dtype=dt) if c in outputs else self.pool.get(c, dt, n)
            arrays[c] = a
            written.append(a)
        args += written
        kept = []
        for _f, _c, dt in k.keeps:
            a = np.empty(n, dtype=dt)
            kept.append(a)
        args += kept
        cells = [np.zeros(2) for _ in k.aggs]
        args += cells
        groups = []
        for g in k.groups:
            init = {"min": np.inf, "max": -np.inf}.get(g.fn, 0.0)
            vals, cnts = np.full(g.domain, init), np.zeros(g.domain, dtype=np.int64)
            groups.append((vals, cnts))
            args += [vals, cnts]
        scans = []
        for s in k.scans:
            st = np.array(state.get(s.out), dtype=np.float64)
            scans.append(st)
            args.append(st)
        counts = np.zeros(max(len(k.filters), 1), dtype=np.int64)
        args.append(counts)
        getattr(self.module, k.name)(*args)
        for (f, name, _dt), a in zip(k.keeps, kept, strict=True):
            results[name] = a[: counts[k.filters.index(f)]]
        for agg, cell in zip(k.aggs, cells, strict=True):
            results[agg.out] = scalars[agg.out] = aggregate_value(agg.fn, cell[0], int(cell[1]))
        for g, (vals, cnts) in zip(k.groups, groups, strict=True):
            results[g.out] = group_values(g.fn, vals, cnts)
        for s, st in zip(k.scans, scans, strict=True):
            state.values[s.out] = [float(st[0]), float(st[1])]
