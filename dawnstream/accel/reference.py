"""The numpy reference interpreter: one numpy call per IR node, every intermediate materialised.

This is the semantics every backend is tested against (and the unfused baseline of the
benchmarks). Maps follow the rules of :mod:`dawnstream.accel.fmath` (float32 in float32, the IR's
own exp/log/log10, saturating float -> int casts), so every backend's maps, masks, counts and kept
columns must equal the reference bit for bit; sums and means within the tolerance each backend
documents (they are added in another order).

>>> import numpy as np
>>> from dawnstream.accel.ir import Aggregate, Map, Program, Quantile, col, param
>>> x = col("x", "float64")
>>> p = Program([Quantile("med", x, method="median"), Map("d", abs(x - param("med")))], {"x": "float64"})
>>> out = run_reference(p, {"x": np.array([1.0, 2.0, 9.0])})
>>> float(out["med"]), out["d"].tolist()
(2.0, [1.0, 0.0, 7.0])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dawnstream.accel import fmath
from dawnstream.accel.ir import (
    Aggregate,
    Expr,
    Filter,
    GroupAggregate,
    Map,
    Program,
    Quantile,
    Scan,
    ScanState,
    TopK,
)

_UFUNC = {"sqrt": np.sqrt, "floor": np.floor, "ceil": np.ceil, "round": np.rint, "abs": np.abs, "neg": np.negative}
_BIN = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide, "lt": np.less,
        "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal, "eq": np.equal, "ne": np.not_equal,
        "and": np.logical_and, "or": np.logical_or}


def eval_expr(e: Expr, cols: dict[str, np.ndarray], scalars: dict[str, Any], n: int) -> np.ndarray:
    """Evaluate a typed expression to an array of ``n`` values of ``e.dtype``."""
    dt = np.dtype(e.dtype)
    with np.errstate(all="ignore"):
        if e.op == "col":
            return np.asarray(cols[e.args[0]])
        if e.op == "param":
            return np.full(n, scalars[e.args[0]], dtype=dt)
        if e.op == "const":
            return np.full(n, e.args[0], dtype=dt)
        a = [eval_expr(x, cols, scalars, n) for x in e.args]
        if e.op == "cast":
            return fmath.cast_array(a[0], e.dtype)
        if e.op == "where":
            return np.where(a[0], a[1].astype(dt), a[2].astype(dt))
        if e.op == "not":
            return np.logical_not(a[0])
        if e.op == "isnan":
            return np.isnan(a[0]) if a[0].dtype.kind == "f" else np.zeros(n, dtype=bool)
        if e.op == "isfinite":
            return np.isfinite(a[0]) if a[0].dtype.kind == "f" else np.ones(n, dtype=bool)
        if e.op in fmath.MATH:
            return fmath.math_array(e.op, a[0], e.dtype)
        if e.op in _UFUNC:
            x = a[0].astype(dt) if a[0].dtype != dt else a[0]
            return _UFUNC[e.op](x).astype(dt, copy=False)
        if e.op in ("max", "min", "fmax", "fmin"):
            return fmath.max_array(e.op, a[0].astype(dt), a[1].astype(dt))
        if e.op in ("add", "sub", "mul", "div"):
            return _BIN[e.op](a[0].astype(dt), a[1].astype(dt)).astype(dt, copy=False)
        return _BIN[e.op](a[0], a[1])


def quantile_reference(v: np.ndarray, q: float, method: str) -> float:
    """Quantile of the non-NaN values of ``v`` (numpy's definitions); NaN if none."""
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan")
    if method == "median":
        return float(np.median(v))
    return float(np.quantile(v, q, method=method))  # type: ignore[call-overload]


def run_reference(program: Program, columns: dict[str, np.ndarray], params: dict[str, float] | None = None,
                  state: ScanState | None = None) -> dict[str, Any]:
    """Run ``program`` over ``columns`` (1-D arrays of one length) with numpy.

    Returns:
        ``{output name: value}``: arrays for columns, masks, compacted columns, group arrays and
        top-k; Python/numpy scalars for aggregates and quantiles.
    Raises:
        ValueError: a group key outside its domain; columns of different lengths.
    """
    lengths = {len(np.asarray(v)) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    cols: dict[str, np.ndarray] = {k: np.asarray(columns[k]) for k in program.inputs}
    scalars: dict[str, Any] = dict(params or {})
    results: dict[str, Any] = {}
    state = state if state is not None else ScanState()

    def ev(e: Expr) -> np.ndarray:
        return eval_expr(e, cols, scalars, n)

    for op in program.ops:
        if isinstance(op, Map):
            cols[op.out] = results[op.out] = ev(op.expr)
        elif isinstance(op, Filter):
            mask = ev(op.pred)
            cols[op.out] = results[op.out] = mask
            for name, e in op.keep:
                results[name] = ev(e)[mask]
        elif isinstance(op, Aggregate):
            sel = ev(op.where) if op.where is not None else np.ones(n, dtype=bool)
            vals = ev(op.value).astype(np.float64)[sel] if op.value is not None else None
            if op.fn == "count":
                r: Any = int(sel.sum())
            elif op.fn == "sum":
                r = float(vals.sum()) if vals is not None else 0.0
            elif vals is None or vals.size == 0:
                r = float("nan")
            else:
                fn: Any = {"mean": np.mean, "min": np.min, "max": np.max}[op.fn]
                r = float(fn(vals))
            scalars[op.out] = results[op.out] = r
        elif isinstance(op, GroupAggregate):
            sel = ev(op.where) if op.where is not None else np.ones(n, dtype=bool)
            keys = ev(op.key).astype(np.int64)[sel]
            if keys.size and (keys.min() < 0 or keys.max() >= op.domain):
                raise ValueError(f"group key outside its domain [0, {op.domain}) in {op.out!r}")
            if op.fn == "count":
                results[op.out] = np.bincount(keys, minlength=op.domain).astype(np.int64)
                continue
            sums: np.ndarray
            vals = ev(op.value).astype(np.float64)[sel]  # type: ignore[arg-type]
            sums = np.bincount(keys, weights=vals, minlength=op.domain)
            if op.fn == "sum":
                results[op.out] = sums
            elif op.fn == "mean":
                cnt = np.bincount(keys, minlength=op.domain)
                with np.errstate(all="ignore"):
                    results[op.out] = sums / cnt
            else:
                init = np.inf if op.fn == "min" else -np.inf
                acc = np.full(op.domain, init)
                ufunc: Any = np.minimum if op.fn == "min" else np.maximum
                with np.errstate(invalid="ignore"):  # NaN propagates, as it should: no warning needed
                    ufunc.at(acc, keys, vals)
                seen = np.bincount(keys, minlength=op.domain) > 0
                acc[~seen] = np.nan
                results[op.out] = acc
        elif isinstance(op, Scan):
            c0, s0 = state.get(op.out)
            out: np.ndarray
            if op.fn == "cumcount":
                out = (np.arange(1, n + 1, dtype=np.int64) + int(c0))
                state.values[op.out] = [c0 + n, s0]
            else:
                vals = ev(op.value).astype(np.float64)  # type: ignore[arg-type]
                sums = s0 + np.cumsum(vals)
                if op.fn == "cumsum":
                    out = sums
                else:
                    out = sums / (c0 + np.arange(1, n + 1, dtype=np.float64))
                state.values[op.out] = [c0 + n, float(sums[-1]) if n else s0]
            cols[op.out] = results[op.out] = out
        elif isinstance(op, Quantile):
            scalars[op.out] = results[op.out] = quantile_reference(ev(op.value), op.q, op.method)
        elif isinstance(op, TopK):
            v = ev(op.value).astype(np.float64)
            v = v[~np.isnan(v)]
            results[op.out] = -np.sort(-v)[: op.k]
    return {k: results[k] if k in results else cols[k] for k in program.outputs}
