"""``dawnstream accel plan``: how each stage of a topology runs (compiled or interpreted), like SQL's EXPLAIN.

Each operator describes itself (:meth:`~dawnstream.operators.base.Operator.explain`); this module
only walks the chain, passing each stage the schema the previous one produces.

The input schema comes from ``--sample`` (a data file) or the topology's declared
``input.schema``; other columns the stages mention are assumed ``float64`` where used as numbers
and ``string`` otherwise. Their real types are learned from the first batch at run time, so a
stage shown as interpreted here may still compile then.
"""

from __future__ import annotations

import pyarrow as pa

from dawnstream.accel.backends import resolve
from dawnstream.operators.base import Operator
from dawnstream.operators.fused import FusedStages
from dawnstream.streams.config import Topology
from dawnstream.topics.schema import parse_type


def assumed_schema(topo: Topology, chain_ops: list[Operator]) -> pa.Schema:
    """Declared input columns plus, as strings, every other column a stage reads or selects."""
    fields = {k: parse_type(v, f"input.schema.{k}") for k, v in topo.input.row_schema.items()}
    produced: set[str] = set()
    for op in chain_ops:
        stages = op.stages if isinstance(op, FusedStages) else [op]
        for s in stages:
            names = set(s.required_columns()) | set(getattr(s, "columns", []) if s.kind == "select" else [])
            numeric = s.numeric_columns()
            for n in sorted(names - produced):
                fields.setdefault(n, pa.float64() if n in numeric else pa.string())
            produced |= s.produced_columns()
    return pa.schema(list(fields.items()))


def plan_topology(topo: Topology, sample: pa.Schema | None = None) -> str:
    """Multi-line plan: backend, then per stage the fused pipelines or why it is interpreted."""
    try:
        backend = resolve(topo.accel)
    except ValueError as e:
        backend = f"unavailable ({e})"
    chain = topo.build_chain()
    ops = chain.operators
    schema: pa.Schema | None = sample if sample is not None else assumed_schema(topo, ops)
    lines = [f"topology {topo.name}: accel {topo.accel} -> backend {backend}",
             f"input schema: {', '.join(f'{f.name}:{f.type}' for f in schema)}" if schema is not None else ""]
    for op in ops:
        lines.append(op.explain(schema))
        if schema is not None:
            try:
                empty = pa.RecordBatch.from_pydict({f.name: pa.array([], f.type) for f in schema})
                outs = op.process(empty)
                schema = outs[0].schema if outs else None
            except Exception:  # noqa: BLE001 - explain must not fail on a stage that needs rows
                schema = None
    return "\n".join(line for line in lines if line)
