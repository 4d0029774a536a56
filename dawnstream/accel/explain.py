"""``dawnstream accel explain``: the fused plan of a topology, like SQL's EXPLAIN.

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
from dawnstream.operators.outliers.classify import OutlierClassifier
from dawnstream.operators.window_count import WindowCount
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


def explain_topology(topo: Topology, sample: pa.Schema | None = None) -> str:
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
        if isinstance(op, FusedStages):
            if schema is None:
                lines.append(f"stages {op.name}: fused per batch schema (known at run time)")
            else:
                lines.append(op.explain(schema))
        elif isinstance(op, OutlierClassifier):
            if op.classifier == "mad" and topo.accel != "off":
                lines.append(f"stage {op.name} (classify, mad): scoring compiled - one pass computes score "
                             "= |x - median| / MAD, the outlier flag and the compacted valid scores; "
                             "medians by exact radix select")
            elif op.classifier == "percentile" and topo.accel != "off":
                lines.append(f"stage {op.name} (classify, percentile): flags compiled (finite and outside the "
                             "tail cuts, one pass); the rank score is a numpy binary search")
            else:
                lines.append(f"stage {op.name} (classify, {op.classifier}): numpy (MCD and predicates do not "
                             "compile)")
        elif isinstance(op, WindowCount) and topo.accel != "off":
            lines.append(f"stage {op.name} (window_count): count per (window, key) compiled - keys dictionary-"
                         "encoded into one dense group key, one group_aggregate pass (Arrow hash aggregation "
                         "when a batch needs more than 2**22 cells)")
        else:
            lines.append(f"stage {op.name} ({op.kind}): interpreted (no accel lowering)")
        if schema is not None:
            try:
                empty = pa.RecordBatch.from_pydict({f.name: pa.array([], f.type) for f in schema})
                outs = op.process(empty)
                schema = outs[0].schema if outs else None
            except Exception:  # noqa: BLE001 - explain must not fail on a stage that needs rows
                schema = None
    return "\n".join(line for line in lines if line)
