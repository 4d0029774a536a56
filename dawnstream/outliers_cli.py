"""``dawnstream explain`` and ``dawnstream detect``: MacroBase on a file, no Kafka needed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dawnstream.errors import DawnstreamError
from dawnstream.operators.expressions import as_array, evaluate, parse
from dawnstream.operators.outliers.classify import OutlierClassifier, classify_batch, default_classifier, metric_matrix
from dawnstream.operators.outliers.itemsets import RATIO_METRICS, explain_table
from dawnstream.sources import read_table, write_table

console = Console(stderr=True)
INF_JSON = "1e999"  # valid JSON grammar that Python, JavaScript and most parsers read back as infinity
_INF_MARK = "__dawnstream_infinite_ratio__"

MetricOpt = Annotated[list[str] | None, typer.Option("--metric", help="Metric column (repeat for several; >1 -> MCD).")]
ClassifierOpt = Annotated[
    str | None, typer.Option(help="mad | mcd | percentile (default: mad for one metric, mcd for several).")
]
PercentileOpt = Annotated[
    float, typer.Option(help="Cutoff percentile of scores (percentile classifier: 99 flags both 1% tails).")
]


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {escape(str(msg))}")
    raise typer.Exit(2)


def _classify(
    table: pa.Table, metrics: list[str], classifier: str | None, pct: float, outlier_if: str | None
) -> tuple[np.ndarray, np.ndarray]:
    if outlier_if:
        node = parse(outlier_if, "--outlier-if")
        missing = sorted(node.columns() - set(table.column_names))
        if missing:
            raise DawnstreamError(f"--outlier-if uses column(s) {missing} not in the file ({table.column_names})")
        batch = table.combine_chunks().to_batches()[0] if table.num_rows else pa.record_batch([], schema=table.schema)
        flags = as_array(evaluate(node, batch), table.num_rows).fill_null(False).to_numpy(zero_copy_only=False)
        flags = np.asarray(flags, dtype=bool)
        return flags.astype(np.float64), flags
    kind = classifier or default_classifier(metrics)
    if kind in ("mad", "percentile") and len(metrics) != 1:
        raise DawnstreamError(f"the {kind} classifier takes exactly one --metric; use --classifier mcd for several")
    X = metric_matrix(table, metrics)
    score, flags, _ = classify_batch(X, kind, pct)
    return score, flags


def _check_columns(table: pa.Table, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise DawnstreamError(f"{what} column(s) {missing} not in the file; it has {table.column_names}")


def _num(x: float) -> Any:
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else x


def explain(
    path: Annotated[str, typer.Argument(help="CSV (.csv/.gz/.zip), Parquet or JSON Lines file.")],
    attributes: Annotated[str, typer.Option(help="Comma-separated attribute columns, e.g. carrier,origin.")],
    metric: MetricOpt = None,
    classifier: ClassifierOpt = None,
    percentile: PercentileOpt = 99.0,
    outlier_if: Annotated[str | None, typer.Option(help="Predicate marking outliers instead of a classifier.")] = None,
    min_support: Annotated[float, typer.Option(help="Minimum outlier support o/O.")] = 0.01,
    min_ratio: Annotated[float, typer.Option(help="Minimum ratio.")] = 3.0,
    ratio: Annotated[str, typer.Option(help="risk_ratio | global_ratio")] = "risk_ratio",
    max_order: Annotated[int, typer.Option(min=1, help="Largest itemset size.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Find outliers (MAD/MCD/percentile, or a predicate) and the attribute values that explain them."""
    metrics = list(metric or [])
    if bool(metrics) == bool(outlier_if):
        _fail("give either --metric COL (one or more) or --outlier-if EXPR")
    if ratio not in RATIO_METRICS:
        _fail(f"--ratio must be one of {', '.join(RATIO_METRICS)}")
    attrs = [a.strip() for a in attributes.split(",") if a.strip()]
    try:
        table = read_table(path)
        _check_columns(table, attrs, "attribute")
        _check_columns(table, metrics, "metric")
        _, flags = _classify(table, metrics, classifier, percentile, outlier_if)
        expl = explain_table(table, flags, attrs, min_support, min_ratio, ratio, max_order)
    except (DawnstreamError, ValueError, TypeError) as e:
        _fail(str(e))
    total, outliers = table.num_rows, int(flags.sum())
    if as_json:
        doc = {
            "total": total,
            "outliers": outliers,
            "explanations": [
                {
                    "attributes": x.attributes,
                    "support": x.support,
                    "ratio": _INF_MARK if math.isinf(x.ratio) else x.ratio,
                    "ratio_metric": x.ratio_metric,
                    "outlier_count": _num(x.outlier_count),
                    "total_count": _num(x.total_count),
                }
                for x in expl
            ],
        }
        typer.echo(json.dumps(doc).replace(f'"{_INF_MARK}"', INF_JSON))
        return
    out = Console()
    out.print(f"{outliers:,} outliers among {total:,} rows ({outliers / max(total, 1):.2%})")
    t = Table(title=f"explanations (min support {min_support}, min {ratio} {min_ratio})")
    for col in (*attrs, "support", ratio, "outliers", "rows"):
        t.add_column(col, justify="right" if col in ("support", ratio, "outliers", "rows") else "left")
    for x in expl:
        t.add_row(
            *[str(x.attributes.get(a, "")) for a in attrs],
            f"{x.support:.3f}",
            "inf" if math.isinf(x.ratio) else f"{x.ratio:.2f}",
            f"{_num(x.outlier_count):,}",
            f"{_num(x.total_count):,}",
        )
    out.print(t if expl else "no attribute combination passes the thresholds")


def detect(
    path: Annotated[str, typer.Argument(help="CSV (.csv/.gz/.zip), Parquet or JSON Lines file.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output file (.csv, .parquet, .jsonl): input rows + score, is_outlier.")
    ],
    metric: MetricOpt = None,
    classifier: ClassifierOpt = None,
    percentile: PercentileOpt = 99.0,
    stream: Annotated[
        bool, typer.Option("--stream", help="Score each row with the model trained on the rows before it.")
    ] = False,
) -> None:
    """Score every row; write the input rows, in order, with ``score`` and ``is_outlier`` columns."""
    metrics = list(metric or [])
    if not metrics:
        _fail("give at least one --metric COL")
    try:
        table = read_table(path)
        _check_columns(table, metrics, "metric")
        if stream:
            op = OutlierClassifier(metrics=metrics, classifier=classifier, percentile=percentile)
            batches = [
                b for chunk in table.to_batches(max_chunksize=10_000) if chunk.num_rows for b in op.process(chunk)
            ]
            result = pa.Table.from_batches(batches) if batches else table
        else:
            score, flags = _classify(table, metrics, classifier, percentile, None)
            result = table.append_column("score", pa.array(score)).append_column("is_outlier", pa.array(flags))
        write_table(result, out)
    except (DawnstreamError, ValueError, TypeError) as e:
        _fail(str(e))
    n_out = int(np.asarray(result.column("is_outlier").to_numpy(zero_copy_only=False), dtype=bool).sum())
    typer.echo(json.dumps({"rows": result.num_rows, "outliers": n_out, "out": str(out)}))
