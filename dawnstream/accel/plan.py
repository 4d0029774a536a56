"""Split a program into fused pipelines separated by breakers.

A *pipeline* is every non-breaking op (map, filter, aggregate, group aggregate, scan) that can run
in the same pass over the rows: it reads only inputs, columns of the same or earlier pipelines, and
scalars finished *before* it started. An aggregate's scalar is ready after its pipeline's pass, a
breaker's (quantile, top-k) after the breaker runs, which needs its whole input column: so a map
that reads ``$median`` lands in the pass after the median. Within a pipeline, maps nobody outside
reads stay in registers (never written to memory) - that is the fusion.

Weld (Palkar et al., VLDB 2018, sec. 5: loop fusion and "pipeline breakers" in its optimizer);
the same pipelining rule as HyPer's data-centric code generation (Neumann, VLDB 2011, sec. 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dawnstream.accel.ir import (
    BREAKERS,
    Aggregate,
    Expr,
    Filter,
    GroupAggregate,
    Map,
    Op,
    Program,
    Quantile,
    Scan,
    TopK,
    op_exprs,
    op_outputs,
)


@dataclass
class Pipeline:
    """One fused pass: ``ops`` run in one loop; ``materialize`` are the map columns written out;
    ``breakers`` run after the loop, on materialized columns or inputs."""

    index: int
    ops: list[Op] = field(default_factory=list)
    materialize: set[str] = field(default_factory=set)
    breakers: list[Quantile | TopK] = field(default_factory=list)


@dataclass
class Plan:
    """The pipelines of a program, in order."""

    program: Program
    pipelines: list[Pipeline]

    def explain(self, backend: str = "cpu") -> str:
        """Human-readable plan, one line per pipeline and breaker (like SQL EXPLAIN)."""
        lines = [f"program {self.program.key()}  inputs: "
                 + ", ".join(f"{k}:{v}" for k, v in self.program.inputs.items())
                 + f"  backend: {backend}"]
        for p in self.pipelines:
            if p.ops:
                lines.append(f"  pipeline {p.index}: one fused pass over the rows "
                             f"({'; '.join(describe(op) for op in p.ops)})")
                if p.materialize:
                    lines.append(f"    writes columns: {', '.join(sorted(p.materialize))}")
                fused = [op.out for op in p.ops if isinstance(op, Map) and op.out not in p.materialize]
                if fused:
                    lines.append(f"    kept in registers: {', '.join(fused)}")
            for b in p.breakers:
                lines.append(f"  breaker after pipeline {p.index}: {describe(b)}")
        lines.append(f"  outputs: {', '.join(self.program.outputs)}")
        return "\n".join(lines)


def describe(op: Op) -> str:
    """One-line text of an op."""
    if isinstance(op, Map):
        return f"map {op.out} = {op.expr}"
    if isinstance(op, Aggregate):
        w = f" where {op.where}" if op.where is not None else ""
        return f"aggregate {op.out} = {op.fn}({op.value if op.value is not None else ''}){w}"
    if isinstance(op, GroupAggregate):
        w = f" where {op.where}" if op.where is not None else ""
        v = op.value if op.value is not None else ""
        return f"group_aggregate {op.out}[{op.key} in 0..{op.domain - 1}] = {op.fn}({v}){w}"
    if isinstance(op, Quantile):
        return f"quantile {op.out} = q{op.q:g}({op.value}) by radix select ({op.method})"
    if isinstance(op, TopK):
        return f"top_k {op.out} = top {op.k} of {op.value}"
    if isinstance(op, Filter):
        keep = ", ".join(n for n, _ in op.keep)
        return f"filter {op.out} = {op.pred} keeping [{keep}]"
    return f"scan {op.out} = {op.fn}({op.value if op.value is not None else ''})"


def plan(program: Program) -> Plan:
    """Assign each op to a pipeline (see the module docstring) and decide what to materialize.

    Ops that read a scan's output go to a later pass: the CPU runs scans in a loop of their own
    (so the rest vectorizes) and the GPU knows them only after a device-wide prefix over tiles.

    Breaker inputs that are expressions are first turned into hidden map columns (``__in_<out>``)
    so the breaker reads memory, not a recomputation."""
    ops: list[Op] = []
    for op in program.ops:
        if isinstance(op, BREAKERS) and op.value.op != "col":
            hidden = f"__in_{op.out}"
            ops.append(Map(hidden, op.value))
            value = Expr("col", (hidden,), op.value.dtype)
            ops.append(Quantile(op.out, value, op.q, op.method) if isinstance(op, Quantile)
                       else TopK(op.out, value, op.k))
        else:
            ops.append(op)
    col_level: dict[str, int] = {k: 0 for k in program.inputs}
    ready_at: dict[str, int] = {k: 0 for k in program.runtime_params}  # scalar -> first pipeline that may read it
    levels: list[int] = []
    for op in ops:
        lvl = 0
        for e in op_exprs(op):
            for c in e.columns():
                lvl = max(lvl, col_level[c])
            for s in e.params():
                lvl = max(lvl, ready_at[s])
        levels.append(lvl)
        for name in op_outputs(op):
            col_level[name] = lvl + 1 if isinstance(op, Scan) else lvl
        if isinstance(op, (Aggregate, Quantile)):
            ready_at[op.out] = lvl + 1
    # Sink ops nobody else reads (outputs only) into the last pass, so they share its loop.
    read: set[str] = set()
    for op in ops:
        for e in op_exprs(op):
            read |= e.columns() | e.params()
    last = max((lvl for op, lvl in zip(ops, levels, strict=True) if not isinstance(op, BREAKERS)), default=0)
    for i, op in enumerate(ops):
        if not isinstance(op, BREAKERS) and not any(o in read for o in op_outputs(op)):
            levels[i] = max(levels[i], last)
    n = max(levels, default=0) + 1
    pipes = [Pipeline(i) for i in range(n)]
    for op, lvl in zip(ops, levels, strict=True):
        if isinstance(op, BREAKERS):
            pipes[lvl].breakers.append(op)
        else:
            pipes[lvl].ops.append(op)
    # A map column or filter mask is written to memory when something outside its own pass reads it.
    owner = {op.out: lvl for op, lvl in zip(ops, levels, strict=True) if isinstance(op, (Map, Filter))}
    outputs = set(program.outputs)
    for op, lvl in zip(ops, levels, strict=True):
        reads = set().union(*(e.columns() for e in op_exprs(op))) if op_exprs(op) else set()
        for c in reads:
            if c in owner and (owner[c] != lvl or isinstance(op, BREAKERS)):
                pipes[owner[c]].materialize.add(c)
    for name in outputs:
        if name in owner:
            pipes[owner[name]].materialize.add(name)
    return Plan(program, [p for p in pipes if p.ops or p.breakers])
