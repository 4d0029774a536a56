"""The accel IR: typed elementwise expressions and the ops of a fused operator chain.

A :class:`Program` is a list of ops over named 1-D columns of one batch (all of length ``n``):

- ``Map(out, expr)``: an elementwise expression; ``out`` is a new column.
- ``Filter(out, pred, keep)``: the rows where ``pred`` holds; ``keep`` are ``(name, expr)`` columns
  written compacted (stream compaction), plus the boolean mask ``out``.
- ``Aggregate(out, fn, value, where)``: count/sum/mean/min/max to a scalar (optionally masked).
- ``GroupAggregate(out, fn, key, value, domain, where)``: the same per integer key in
  ``[0, domain)`` (a known small key domain); an array of ``domain`` values.
- ``Scan(out, fn, value)``: running values with state carried across batches (``cumsum``,
  ``running_mean``, ``cumcount``).
- ``Quantile(out, value, q, method)`` and ``TopK(out, value, k)``: pipeline *breakers*; they need
  all values before anything that uses their result can run.

Scalars made by aggregates and breakers are read in later expressions with :func:`param`; runtime
parameters (a model's median, a cutoff) are params too, given to ``run``. Everything is plain data
(frozen dataclasses), so a program hashes to the key of its compiled kernels.

The design follows Weld's IR (Palkar et al., "Weld: A Common Runtime for High Performance Data
Analytics", CIDR 2017, sec. 3: a small set of parallel loop constructs and builders that fuse across
library boundaries), restricted to what our operators need.

>>> x = col("x", "float64")
>>> p = Program([Map("y", abs(x - 1.0)), Aggregate("s", "sum", ref("y"))], inputs={"x": "float64"})
>>> p.outputs
('y', 's')
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64")
UNARY = ("neg", "abs", "not", "sqrt", "exp", "log", "log10", "floor", "ceil", "round", "isnan", "isfinite")
BINARY = ("add", "sub", "mul", "div", "lt", "le", "gt", "ge", "eq", "ne", "and", "or", "max", "min", "fmax", "fmin")
"""``max``/``min`` propagate NaN (``np.maximum``); ``fmax``/``fmin`` ignore it (``np.fmax``, SQL greatest)."""
COMPARE = ("lt", "le", "gt", "ge", "eq", "ne")
AGG_FNS = ("count", "sum", "mean", "min", "max")
SCAN_FNS = ("cumsum", "running_mean", "cumcount")
QUANTILE_METHODS = ("linear", "weibull", "median")


class IRError(ValueError):
    """An ill-formed program: unknown column, wrong dtype, a column read across domains, ..."""


def _check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise IRError(f"unsupported dtype {dtype!r}; expected one of {DTYPES}")
    return dtype


def is_float(dtype: str) -> bool:
    return dtype.startswith("float")


def is_int(dtype: str) -> bool:
    return dtype.startswith(("int", "uint"))


@dataclass(frozen=True, slots=True)
class Expr:
    """A typed elementwise expression node.

    ``op`` is ``col`` (args: name), ``param`` (name), ``const`` (value), ``cast`` (expr), ``where``
    (cond, a, b), one of :data:`UNARY` (expr) or one of :data:`BINARY` (a, b). ``dtype`` is the
    numpy dtype name of the result.
    """

    op: str
    args: tuple[Any, ...]
    dtype: str

    # Operator sugar, so programs read like numpy (numbers become consts).
    def __add__(self, o: Any) -> Expr:
        return binary("add", self, o)

    def __radd__(self, o: Any) -> Expr:
        return binary("add", o, self)

    def __sub__(self, o: Any) -> Expr:
        return binary("sub", self, o)

    def __rsub__(self, o: Any) -> Expr:
        return binary("sub", o, self)

    def __mul__(self, o: Any) -> Expr:
        return binary("mul", self, o)

    def __rmul__(self, o: Any) -> Expr:
        return binary("mul", o, self)

    def __truediv__(self, o: Any) -> Expr:
        return binary("div", self, o)

    def __rtruediv__(self, o: Any) -> Expr:
        return binary("div", o, self)

    def __neg__(self) -> Expr:
        return unary("neg", self)

    def __abs__(self) -> Expr:
        return unary("abs", self)

    def __lt__(self, o: Any) -> Expr:
        return binary("lt", self, o)

    def __le__(self, o: Any) -> Expr:
        return binary("le", self, o)

    def __gt__(self, o: Any) -> Expr:
        return binary("gt", self, o)

    def __ge__(self, o: Any) -> Expr:
        return binary("ge", self, o)

    def __and__(self, o: Any) -> Expr:
        return binary("and", self, o)

    def __or__(self, o: Any) -> Expr:
        return binary("or", self, o)

    def __invert__(self) -> Expr:
        return unary("not", self)

    def columns(self) -> set[str]:
        """Columns the expression reads."""
        if self.op == "col":
            return {self.args[0]}
        out: set[str] = set()
        for a in self.args:
            if isinstance(a, Expr):
                out |= a.columns()
        return out

    def params(self) -> set[str]:
        """Scalar params the expression reads."""
        if self.op == "param":
            return {self.args[0]}
        out: set[str] = set()
        for a in self.args:
            if isinstance(a, Expr):
                out |= a.params()
        return out

    def __str__(self) -> str:
        op, a = self.op, self.args
        if op == "col":
            return str(a[0])
        if op == "param":
            return f"${a[0]}"
        if op == "const":
            return repr(a[0])
        if op == "cast":
            return f"{self.dtype}({a[0]})"
        if op == "where":
            return f"where({a[0]}, {a[1]}, {a[2]})"
        sym = {"add": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
               "eq": "==", "ne": "!=", "and": "&", "or": "|"}
        if op in sym:
            return f"({a[0]} {sym[op]} {a[1]})"
        return f"{op}({', '.join(str(x) for x in a)})"


def col(name: str, dtype: str) -> Expr:
    """Column ``name`` of numpy dtype ``dtype``."""
    return Expr("col", (name,), _check_dtype(dtype))


def ref(name: str) -> Expr:
    """A column whose dtype the :class:`Program` fills in (an input or an earlier ``Map``)."""
    return Expr("col", (name,), "?")


def param(name: str, dtype: str = "float64") -> Expr:
    """Scalar parameter: an earlier aggregate/breaker result or a value passed to ``run``."""
    return Expr("param", (name,), _check_dtype(dtype))


def const(value: bool | int | float, dtype: str | None = None) -> Expr:
    """A literal; the dtype defaults to bool/int64/float64 like a Python number."""
    if isinstance(value, (bool, np.bool_)):
        return Expr("const", (bool(value),), dtype or "bool")
    if isinstance(value, (int, np.integer)):
        return Expr("const", (int(value),), _check_dtype(dtype or "int64"))
    if isinstance(value, (float, np.floating)):
        return Expr("const", (float(value),), _check_dtype(dtype or "float64"))
    raise IRError(f"constants must be bool, int or float, got {type(value).__name__}")


def _lift(x: Any) -> Expr:
    return x if isinstance(x, Expr) else const(x)


def _promote(a: str, b: str) -> str:
    if "?" in (a, b):
        return "?"
    return str(np.result_type(np.dtype(a), np.dtype(b)))


def cast(x: Expr | float, dtype: str) -> Expr:
    """Convert to ``dtype`` (C semantics: ints wrap, floats to ints truncate)."""
    e = _lift(x)
    return e if e.dtype == dtype else Expr("cast", (e,), _check_dtype(dtype))


def unary(op: str, x: Expr | float) -> Expr:
    """Elementwise ``op`` of :data:`UNARY`; float functions of ints compute in float64."""
    if op not in UNARY:
        raise IRError(f"unknown unary op {op!r}")
    e = _lift(x)
    if op in ("isnan", "isfinite"):
        dtype = "bool"
    elif op == "not":
        if e.dtype not in ("bool", "?"):
            raise IRError(f"'not' needs a boolean, got {e.dtype}")
        dtype = "bool"
    elif op in ("sqrt", "exp", "log", "log10"):
        dtype = e.dtype if is_float(e.dtype) or e.dtype == "?" else "float64"
    else:
        dtype = e.dtype
    return Expr(op, (e,), dtype)


def binary(op: str, a: Expr | float, b: Expr | float) -> Expr:
    """Elementwise ``op`` of :data:`BINARY` with numpy type promotion; ``div`` is true division."""
    if op not in BINARY:
        raise IRError(f"unknown binary op {op!r}")
    x, y = _lift(a), _lift(b)
    if op in COMPARE:
        dtype = "bool"
    elif op in ("and", "or"):
        for e in (x, y):
            if e.dtype not in ("bool", "?"):
                raise IRError(f"'{op}' needs booleans, got {e.dtype}")
        dtype = "bool"
    elif op == "div":
        t = _promote(x.dtype, y.dtype)
        dtype = t if t == "?" or is_float(t) else "float64"
    else:
        dtype = _promote(x.dtype, y.dtype)
    return Expr(op, (x, y), dtype)


def where(cond: Expr, a: Expr | float, b: Expr | float) -> Expr:
    """``a`` where ``cond`` else ``b`` (both computed; no short circuit)."""
    x, y = _lift(a), _lift(b)
    return Expr("where", (cond, x, y), _promote(x.dtype, y.dtype))


# -- ops --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Map:
    """``out = expr`` for every row."""

    out: str
    expr: Expr


@dataclass(frozen=True, slots=True)
class Filter:
    """Rows where ``pred`` is true: ``keep`` columns compacted to those rows; ``out`` is the mask."""

    out: str
    pred: Expr
    keep: tuple[tuple[str, Expr], ...] = ()


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Scalar ``fn`` of ``value`` over the rows where ``where`` holds (all rows if None).

    ``count`` ignores ``value``. NaN propagates through sum/mean/min/max like numpy; an empty
    input gives count 0, sum 0, mean/min/max NaN."""

    out: str
    fn: str
    value: Expr | None = None
    where: Expr | None = None


@dataclass(frozen=True, slots=True)
class GroupAggregate:
    """``fn`` per key in ``[0, domain)``; a key outside the domain raises ``ValueError``."""

    out: str
    fn: str
    key: Expr
    value: Expr | None = None
    domain: int = 64
    where: Expr | None = None


@dataclass(frozen=True, slots=True)
class Scan:
    """Running ``fn`` of ``value`` continuing from the previous batch (state in :class:`ScanState`)."""

    out: str
    fn: str
    value: Expr | None = None


@dataclass(frozen=True, slots=True)
class Quantile:
    """Exact quantile ``q`` (0..1) of the non-NaN values (radix select); NaN when there are none.

    ``method``: ``linear`` (numpy's default), ``weibull`` (commons-math / MacroBase), ``median``
    (``np.median``: the mean of the two middle values)."""

    out: str
    value: Expr
    q: float = 0.5
    method: str = "linear"


@dataclass(frozen=True, slots=True)
class TopK:
    """The ``k`` largest non-NaN values, descending (fewer if the batch has fewer)."""

    out: str
    value: Expr
    k: int


Op = Map | Filter | Aggregate | GroupAggregate | Scan | Quantile | TopK
BREAKERS = (Quantile, TopK)


def op_exprs(op: Op) -> list[Expr]:
    """Every expression an op evaluates."""
    if isinstance(op, Map):
        return [op.expr]
    if isinstance(op, Filter):
        return [op.pred, *(e for _, e in op.keep)]
    if isinstance(op, (Aggregate, GroupAggregate)):
        es = [e for e in (op.value, op.where) if e is not None]
        return [op.key, *es] if isinstance(op, GroupAggregate) else es
    if isinstance(op, Scan):
        return [op.value] if op.value is not None else []
    return [op.value]


def op_outputs(op: Op) -> list[str]:
    if isinstance(op, Filter):
        return [op.out, *(n for n, _ in op.keep)]
    return [op.out]


@dataclass
class ScanState:
    """State carried across batches by ``Scan`` ops: ``{out: [count, sum]}`` (float64)."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def get(self, name: str) -> tuple[float, float]:
        c, s = self.values.get(name, [0.0, 0.0])
        return float(c), float(s)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [float(v[0]), float(v[1])] for k, v in self.values.items()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> ScanState:
        return cls({k: [float(v[0]), float(v[1])] for k, v in d.items()})


class Program:
    """A validated, typed list of ops.

    Args:
        ops: the ops, in dependency order.
        inputs: ``{column: numpy dtype name}`` of the batch.
        params: ``{name: dtype}`` of runtime scalar parameters given to ``run``.
        outputs: names to return (default: every op output).

    Raises:
        IRError: unknown column or param, a name defined twice, a compacted column read later,
            a non-integer group key, an unknown function or method.
    """

    def __init__(self, ops: list[Op], inputs: dict[str, str], params: dict[str, str] | None = None,
                 outputs: list[str] | tuple[str, ...] | None = None) -> None:
        self.inputs = {k: _check_dtype(v) for k, v in inputs.items()}
        self.runtime_params = {k: _check_dtype(v) for k, v in (params or {}).items()}
        cols: dict[str, str] = dict(self.inputs)
        scalars: dict[str, str] = dict(self.runtime_params)
        compacted: set[str] = set()
        self.kinds: dict[str, str] = {}  # name -> column | scalar | group | compacted | mask | topk
        typed: list[Op] = []
        for op in ops:
            op = self._type_op(op, cols, scalars, compacted)
            typed.append(op)
            for name in op_outputs(op):
                if name in cols or name in scalars or name in self.kinds:
                    raise IRError(f"{name!r} is defined twice")
            if isinstance(op, Map):
                cols[op.out] = op.expr.dtype
                self.kinds[op.out] = "column"
            elif isinstance(op, Filter):
                if op.pred.dtype != "bool":
                    raise IRError(f"filter {op.out!r}: predicate is {op.pred.dtype}, not bool")
                self.kinds[op.out] = "mask"
                cols[op.out] = "bool"
                for n, _e in op.keep:
                    compacted.add(n)
                    self.kinds[n] = "compacted"
            elif isinstance(op, Aggregate):
                scalars[op.out] = "int64" if op.fn == "count" else "float64"
                self.kinds[op.out] = "scalar"
            elif isinstance(op, GroupAggregate):
                self.kinds[op.out] = "group"
            elif isinstance(op, Scan):
                cols[op.out] = "int64" if op.fn == "cumcount" else "float64"
                self.kinds[op.out] = "column"
            elif isinstance(op, Quantile):
                scalars[op.out] = "float64"
                self.kinds[op.out] = "scalar"
            elif isinstance(op, TopK):
                self.kinds[op.out] = "topk"
        self.ops: tuple[Op, ...] = tuple(typed)
        self.columns, self.scalars = cols, scalars
        all_out = tuple(n for op in typed for n in op_outputs(op))
        self.outputs: tuple[str, ...] = tuple(outputs) if outputs is not None else all_out
        unknown = [o for o in self.outputs if o not in self.kinds and o not in self.inputs]
        if unknown:
            raise IRError(f"outputs {unknown} are not defined by the program")

    def _type_expr(self, e: Expr, cols: dict[str, str], scalars: dict[str, str], compacted: set[str]) -> Expr:
        if e.op == "col":
            name = e.args[0]
            if name in compacted:
                raise IRError(f"column {name!r} is compacted by a filter; later ops cannot read it row by row")
            if name not in cols:
                raise IRError(f"unknown column {name!r}; known: {sorted(cols)}")
            return Expr("col", (name,), cols[name])
        if e.op == "param":
            name = e.args[0]
            if name not in scalars:
                raise IRError(f"unknown param {name!r}; known: {sorted(scalars)}")
            return Expr("param", (name,), scalars[name])
        if e.op == "const":
            return e
        args = [self._type_expr(a, cols, scalars, compacted) if isinstance(a, Expr) else a for a in e.args]
        if e.op == "cast":
            return cast(args[0], e.dtype)
        if e.op == "where":
            if args[0].dtype != "bool":
                raise IRError(f"where() condition is {args[0].dtype}, not bool")
            return where(*args)
        if e.op in UNARY:
            return unary(e.op, args[0])
        if e.op in BINARY:
            return binary(e.op, args[0], args[1])
        raise IRError(f"unknown expression op {e.op!r}")

    def _type_op(self, op: Op, cols: dict[str, str], scalars: dict[str, str], compacted: set[str]) -> Op:
        def t(e: Expr | None) -> Expr | None:
            return None if e is None else self._type_expr(e, cols, scalars, compacted)

        if isinstance(op, Map):
            return Map(op.out, t(op.expr))  # type: ignore[arg-type]
        if isinstance(op, Filter):
            return Filter(op.out, t(op.pred), tuple((n, t(e)) for n, e in op.keep))  # type: ignore[arg-type,misc]
        if isinstance(op, (Aggregate, GroupAggregate)):
            if op.fn not in AGG_FNS:
                raise IRError(f"{op.out!r}: unknown aggregate {op.fn!r}; expected one of {AGG_FNS}")
            if op.fn != "count" and op.value is None:
                raise IRError(f"{op.out!r}: {op.fn} needs a value")
            w = t(op.where)
            if w is not None and w.dtype != "bool":
                raise IRError(f"{op.out!r}: where is {w.dtype}, not bool")
            if isinstance(op, Aggregate):
                return Aggregate(op.out, op.fn, t(op.value), w)
            k = t(op.key)
            assert k is not None
            if not is_int(k.dtype) and k.dtype != "bool":
                raise IRError(f"{op.out!r}: group key must be an integer, got {k.dtype}")
            if not 1 <= op.domain <= 1 << 20:
                raise IRError(f"{op.out!r}: domain must be 1..{1 << 20}, got {op.domain}")
            return GroupAggregate(op.out, op.fn, k, t(op.value), op.domain, w)
        if isinstance(op, Scan):
            if op.fn not in SCAN_FNS:
                raise IRError(f"{op.out!r}: unknown scan {op.fn!r}; expected one of {SCAN_FNS}")
            if op.fn != "cumcount" and op.value is None:
                raise IRError(f"{op.out!r}: {op.fn} needs a value")
            return Scan(op.out, op.fn, t(op.value))
        if isinstance(op, Quantile):
            if op.method not in QUANTILE_METHODS:
                raise IRError(f"{op.out!r}: unknown method {op.method!r}; expected one of {QUANTILE_METHODS}")
            if not 0.0 <= op.q <= 1.0 or math.isnan(op.q):
                raise IRError(f"{op.out!r}: q must be in [0, 1], got {op.q}")
            return Quantile(op.out, t(op.value), float(op.q), op.method)  # type: ignore[arg-type]
        if isinstance(op, TopK):
            if op.k < 1:
                raise IRError(f"{op.out!r}: k must be >= 1, got {op.k}")
            return TopK(op.out, t(op.value), int(op.k))  # type: ignore[arg-type]
        raise IRError(f"unknown op {op!r}")

    def key(self) -> str:
        """Content hash of the typed program (dtypes included, batch length never)."""
        text = repr((sorted(self.inputs.items()), sorted(self.runtime_params.items()), self.ops, self.outputs))
        return hashlib.sha256(text.encode()).hexdigest()[:20]
