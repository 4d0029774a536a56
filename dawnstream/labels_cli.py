"""``dawnstream lfs``: the LF table and the label model's accuracy for a topology's label stage, on a file
(no Kafka) - the loop a Snorkel user iterates in: edit the LF file, rerun, read the table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dawnstream.errors import ConfigError, DawnstreamError

if TYPE_CHECKING:
    import pyarrow as pa

    from dawnstream.operators.labeling.label import Label
    from dawnstream.streams.local_runner import LocalRunner

console = Console(stderr=True)


def label_stage(runner: LocalRunner) -> Label | None:
    """The label stage of the chain that ran ``run_table`` (partition 0), or None."""
    from dawnstream.operators.labeling.label import Label

    return next((op for op in runner.processor.chain(0).operators if isinstance(op, Label)), None)


def _cell(row: dict[str, Any], col: str) -> str:
    v = row.get(col)
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3f}"
    if isinstance(v, list):
        return ",".join(map(str, v)) or "-"
    return str(v)


def print_lf_table(rows: list[dict[str, Any]], scores: dict[str, Any] | None = None, con: Console = console) -> None:
    """Render the LF table (and the scores of :func:`~dawnstream.operators.labeling.report.model_scores`),
    then each failing LF's last error, on ``con``; fits 80 columns for LF names up to 24 characters."""
    from dawnstream.operators.labeling.report import COLUMNS

    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    t = Table(title="labeling functions", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0),
              pad_edge=False, caption="cov/ovl/cfl: coverage, overlaps, conflicts (shares of rows); err: rows the LF "
                                      "failed on; learn: the label model's accuracy; emp: empirical, on gold",
              caption_justify="left")
    t.add_column("LF", no_wrap=True)
    short = {"learned_accuracy": "learn", "emp_accuracy": "emp", "coverage": "cov", "overlaps": "ovl",
             "conflicts": "cfl", "polarity": "pol", "incorrect": "wrong", "correct": "right", "errors": "err"}
    for c in cols:
        t.add_column(short.get(c, c), justify="right")
    for r in rows:
        t.add_row(escape(r["lf"]), *(_cell(r, c) for c in cols))
    con.print(t)
    for r in rows:
        if r.get("errors"):
            con.print(f"[red]{escape(r['lf'])}[/] failed on {r['errors']:,} row(s); last error: "
                      f"{escape(str(r.get('last_error')))}")
    if scores:
        s = Table(title=f"accuracy on the {scores['covered_gold_rows']:,} covered rows of "
                        f"{scores['gold_rows']:,} with gold", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, caption="online: the labels as the stream gave them (each row by the model "
                                          "fitted before it); a tie counts as not covered", caption_justify="left")
        for c in ("labels", "accuracy", "rows", "coverage"):
            s.add_column(c, justify="right" if c != "labels" else "left")
        for name, v in scores.items():
            if isinstance(v, dict):
                s.add_row(name, _cell(v, "accuracy"), f"{v['rows']:,}", _cell(v, "coverage"))
        con.print(s)


def _gold_of_outputs(stage: Label, source: pa.Table, out: pa.Table, column: str) -> Any:
    """The gold class index of each output row, looked up by the stage's id column in ``source``."""
    import numpy as np

    for name, table in (("input", source), ("output", out)):
        missing = {c for c in (stage.id,) + ((column,) if name == "input" else ()) if c not in table.column_names}
        if missing:
            raise ConfigError("--gold", f"the {name} lacks column(s) {sorted(missing)}; it has {table.column_names}")
    codes, bad = stage.class_codes(source.column(column).combine_chunks(), column)
    if bad.any():
        raise ConfigError("--gold", f"column {column!r} holds {source.column(column)[int(np.flatnonzero(bad)[0])]!r}, "
                                    f"which is no class of {stage.classes} (nor 0..{stage.k - 1})")
    by_id = dict(zip(source.column(stage.id).to_pylist(), codes.tolist(), strict=True))
    return np.asarray([by_id.get(i, -1) for i in out.column(stage.id).to_pylist()], np.int64)


def lfs(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file with a label stage.")],
    source: Annotated[str, typer.Argument(help="File (.csv/.csv.gz/.zip/.parquet/.jsonl) or dataset name.")],
    gold: Annotated[str | None, typer.Option(help="Column with each row's true class (name or index): adds "
                                                  "empirical accuracies and the label model's accuracy.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table and scores as one JSON document.")] = False,
) -> None:
    """Run a topology's label stage over a file (no Kafka) and print the LF table: snorkel's LFAnalysis
    columns, the learned accuracies, errors, and with --gold the empirical accuracies and the label model's
    accuracy against majority vote. With --gold every row trains the model (the column is only scored)."""
    import numpy as np

    from dawnstream.operators.labeling.report import lf_table, model_scores
    from dawnstream.sources import read_table
    from dawnstream.streams.config import Topology, load_topology
    from dawnstream.streams.local_runner import LocalRunner

    try:
        topo = load_topology(topology)
        if not any(s.op == "label" for s in topo.stages):
            raise ConfigError("stages", f"{topology} has no label stage (op: label)")
        if gold is not None:  # the column is for scoring: rows that carried it would be dev rows, not training
            doc = topo.model_dump()
            for s in doc["stages"]:
                if s["op"] == "label":
                    s["gold"] = None
            topo = Topology.model_validate(doc)
        table = read_table(source)
        runner = LocalRunner(topo, encode=False)
        res = runner.run_table(table)
        stage = label_stage(runner)
        assert stage is not None
        out = res.table()
        L = g = online = None
        scores = None
        if out is not None and "votes" in out.column_names:
            L = np.asarray(out.column("votes").to_pylist(), np.int8).reshape(out.num_rows, len(stage.lfs))
            online = out.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
        if gold is not None:
            if out is None or L is None:
                raise ConfigError("--gold", "the topology's output lacks the label stage's votes column; "
                                            "scoring needs the rows as the label stage writes them")
            g = _gold_of_outputs(stage, table, out, gold)
            scores = model_scores(stage, L, g, online)
        rows = lf_table(stage, L, g)
    except DawnstreamError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({"rows": res.rows_in, "lfs": rows, "scores": scores}, default=float))
        return
    print_lf_table(rows, scores)
    typer.echo(json.dumps({"rows_in": res.rows_in, "rows_dead": res.rows_dead,
                           "label_model": stage.model, "lfs": len(rows)}))
