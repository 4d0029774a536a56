"""Adjacent ``filter``/``derive``/``select`` stages run as one compiled pass (the accel layer).

For each input schema the stages are translated once into one IR program: every filter predicate
is AND-ed into one mask (evaluated with the columns as they are at that stage), derived columns
are computed and compacted in the same loop, ``select`` only decides what is written. Columns that
pass through untouched are filtered by Arrow (``RecordBatch.filter``), strings included. The
output equals running the stages one by one: same rows, same values, same Arrow types.

A batch runs the original stages instead when a column the expressions read has nulls (SQL
three-valued logic stays with Arrow's kernels), and a schema whose expressions cannot compile
(strings, temporal types) always does; ``dawnstream accel plan`` shows which and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dawnstream.accel.backends import Executable, build
from dawnstream.accel.ir import Expr, Map, Program, binary
from dawnstream.accel.ir import Filter as FilterOp
from dawnstream.accel.plan import plan
from dawnstream.operators.base import Chain, Operator
from dawnstream.operators.derive import Derive
from dawnstream.operators.filter import Filter
from dawnstream.operators.lowering import Bridge, NotCompilable
from dawnstream.operators.select import Select

FUSABLE = (Filter, Derive, Select)


@dataclass
class _Compiled:
    exe: Executable | None          # None: nothing to compute (a projection)
    program: Program | None
    inputs: list[str]               # numeric columns the kernel reads
    out: list[tuple[str, str, pa.DataType | None]]  # (output name, source column or computed name, arrow type)
    has_filter: bool


class FusedStages(Operator):
    """Several filter/derive/select stages compiled into one pass.

    Args:
        stages: the operators, in chain order (each a Filter, Derive or Select).
        accel: backend mode (``cpu``, ``gpu`` or ``auto``).
    """

    kind = "fused"

    def __init__(self, stages: Sequence[Operator], accel: str = "auto") -> None:
        super().__init__("+".join(op.name for op in stages))
        self.stages = list(stages)
        self.accel = accel
        self._inner = Chain(self.stages)
        self._compiled: dict[pa.Schema, _Compiled | str] = {}

    def required_columns(self) -> set[str]:
        return self._inner.required_columns()

    def numeric_columns(self) -> set[str]:
        return self._inner.numeric_columns()

    def produced_columns(self) -> set[str]:
        out: set[str] = set()
        for op in self.stages:
            out = (out | op.produced_columns()) if op.passes_through() else set(op.produced_columns())
        return out

    def passes_through(self) -> bool:
        return all(op.passes_through() for op in self.stages)

    def plan_for(self, schema: pa.Schema) -> _Compiled | str:
        """The compiled form for ``schema``, or the reason it runs interpreted."""
        if schema not in self._compiled:
            try:
                self._compiled[schema] = self._compile(schema)
            except NotCompilable as e:
                self._compiled[schema] = str(e)
        return self._compiled[schema]

    def _compile(self, schema: pa.Schema) -> _Compiled:
        br = Bridge(schema)
        # Current columns, in order: name -> source ("=col" for an input column, else a computed name).
        cols: dict[str, str] = {f.name: "=" + f.name for f in schema}
        pred: Expr | None = None
        computed: dict[str, tuple[Expr, pa.DataType]] = {}
        for op in self.stages:
            if isinstance(op, Filter):
                p = br.translate(op.expr)
                if p.dtype != "bool":
                    raise NotCompilable("the filter expression is not boolean")
                pred = p if pred is None else binary("and", pred, p)
            elif isinstance(op, Derive):
                for name, node in op.columns:
                    cname = f"d{len(computed)}"
                    e = br.define(name, node)
                    computed[cname] = (e, br.types[name])
                    cols[name] = cname  # replaces in place (dict keeps the position) or appends
            elif isinstance(op, Select):
                missing = [c for c in op.columns if c not in cols]
                if missing:
                    raise NotCompilable(f"select of missing columns {missing}")
                cols = {op.rename.get(c, c): cols[c] for c in op.columns}
        used = [c for c in cols.values() if not c.startswith("=")]
        out = [(name, src, None if src.startswith("=") else computed[src][1]) for name, src in cols.items()]
        if pred is None and not used:
            return _Compiled(None, None, [], out, False)
        exprs = {c: computed[c][0] for c in used}
        inputs = sorted({c for e in [*exprs.values(), *([pred] if pred is not None else [])] for c in e.columns()})
        from dawnstream.operators.lowering import numpy_dtype

        in_types = {c: numpy_dtype(schema.field(c).type) for c in inputs}  # the input's, not a redefinition
        if pred is not None:
            ops: list[Any] = [FilterOp("__mask", pred, tuple((c, e) for c, e in exprs.items()))]
        else:
            ops = [Map(c, e) for c, e in exprs.items()]
        program = Program(ops, in_types)
        return _Compiled(build(program, self.accel), program, inputs, out, pred is not None)

    def explain(self, schema: pa.Schema | None = None) -> str:
        """Text of the fused plan for ``schema`` (or why it is interpreted)."""
        if schema is None:
            return f"stages {self.name}: fused per batch schema (known at run time)"
        c = self.plan_for(schema)
        head = f"stages {self.name} ({', '.join(op.kind for op in self.stages)})"
        if isinstance(c, str):
            return f"{head}: interpreted by Arrow compute - {c}"
        if c.program is None:
            return f"{head}: projection only (no kernel)"
        backend = getattr(c.exe, "backend", "?")
        return f"{head}: fused\n" + "\n".join("  " + line for line in plan(c.program).explain(backend).splitlines())

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        c = self.plan_for(batch.schema)
        if isinstance(c, str) or any(batch.column(n).null_count for n in c.inputs):
            return [b for b in self._inner.process(batch)]
        mask = None
        res: dict[str, Any] = {}
        if c.exe is not None:
            cols = {n: _numpy(batch.column(n)) for n in c.inputs}
            res = c.exe.run(cols, n=batch.num_rows)
            if c.has_filter:
                mask = pa.array(res["__mask"])
        names, arrays = [], []
        for name, src, t in c.out:
            if src.startswith("="):
                a = batch.column(src[1:])
                arrays.append(a.filter(mask) if mask is not None else a)
            else:
                arrays.append(pa.array(res[src], type=t))
            names.append(name)
        return [pa.RecordBatch.from_arrays(arrays, names=names)]


def _numpy(a: pa.Array) -> np.ndarray:
    if pa.types.is_boolean(a.type):
        return a.to_numpy(zero_copy_only=False)
    return a.to_numpy()


def fuse(operators: Sequence[Operator], accel: str) -> list[Operator]:
    """Replace each run of adjacent filter/derive/select stages by one :class:`FusedStages`
    (``accel: off`` returns the stages unchanged)."""
    if accel == "off":
        return list(operators)
    out: list[Operator] = []
    run: list[Operator] = []
    for op in [*operators, None]:
        if op is not None and isinstance(op, FUSABLE):
            run.append(op)
            continue
        if run:
            out.append(FusedStages(run, accel))
            run = []
        if op is not None:
            out.append(op)
    return out
