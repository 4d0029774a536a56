"""The exact CLI contract of `dawnstream explain` and `dawnstream detect`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dawnstream.cli import app
from dawnstream.operators.outliers.classify import OutlierClassifier


def run(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_explain_json_contract(shared_data: Path) -> None:
    path = str(shared_data / "macrobase/legacy/sensor10k.csv.gz")
    res = run("explain", path, "--metric", "power_drain", "--attributes", "device_id", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc) == {"total", "outliers", "explanations"}
    assert (doc["total"], doc["outliers"]) == (10479, 104)
    first = doc["explanations"][0]
    assert set(first) == {"attributes", "support", "ratio", "ratio_metric", "outlier_count", "total_count"}
    assert first["attributes"] == {"device_id": 2040} and math.isinf(first["ratio"])
    assert first["ratio_metric"] == "risk_ratio" and first["outlier_count"] == 104


def test_explain_outlier_if_and_options(shared_data: Path) -> None:
    path = str(shared_data / "macrobase/core/sample.csv")
    res = run("explain", path, "--outlier-if", "usage > 1000", "--attributes", "location,version",
              "--min-support", "0.05", "--min-ratio", "10", "--ratio", "global_ratio", "--max-order", "3", "--json")
    doc = json.loads(res.stdout)
    assert doc["outliers"] == 38
    assert [(e["attributes"], round(e["ratio"], 6)) for e in doc["explanations"]] == \
        [({"location": "CAN", "version": "v1"}, 10.562958)]
    table = run("explain", path, "--outlier-if", "usage > 1000", "--attributes", "location,version")
    assert table.exit_code == 0 and "38 outliers among 1,057 rows" in table.stdout


def test_several_metrics_imply_mcd_and_percentile_classifier(shared_data: Path) -> None:
    path = str(shared_data / "macrobase/legacy/sensor10k.csv.gz")
    res = run("explain", path, "--metric", "power_drain", "--metric", "temperature", "--attributes", "device_id",
              "--json")
    import pyarrow.csv as pacsv

    from dawnstream.operators.outliers.classify import classify_batch, metric_matrix

    _, flags, _ = classify_batch(metric_matrix(pacsv.read_csv(path), ["power_drain", "temperature"]), "mcd")
    assert res.exit_code == 0 and json.loads(res.stdout)["outliers"] == int(flags.sum())
    lib = str(shared_data / "macrobase/lib/sample.csv")
    res = run("explain", lib, "--metric", "usage", "--classifier", "percentile", "--percentile", "1",
              "--attributes", "location,version", "--min-ratio", "10", "--ratio", "global_ratio", "--json")
    doc = json.loads(res.stdout)
    assert doc["outliers"] == 20 and doc["explanations"][0]["attributes"] == {"location": "CAN", "version": "v3"}


@pytest.mark.parametrize("args, fragment", [
    ([], "either --metric"),
    (["--metric", "usage", "--outlier-if", "usage > 1"], "either --metric"),
    (["--metric", "nope"], "metric column(s) ['nope']"),
    (["--metric", "usage", "--ratio", "odds"], "--ratio must be one of"),
    (["--metric", "usage", "--metric", "latency", "--classifier", "mad"], "exactly one --metric"),
])
def test_explain_errors_say_what_to_do(args: list[str], fragment: str, shared_data: Path) -> None:
    res = run("explain", str(shared_data / "macrobase/core/sample.csv"), "--attributes", "location", *args)
    assert res.exit_code == 2 and fragment in res.output


def test_detect_batch_and_stream(tmp_path: Path, shared_data: Path) -> None:
    path = str(shared_data / "macrobase/legacy/sensor10k.csv.gz")
    out = tmp_path / "scores.parquet"
    res = run("detect", path, "--metric", "power_drain", "--out", str(out))
    assert res.exit_code == 0, res.output
    t = pq.read_table(out)
    assert t.num_rows == 10479 and {"score", "is_outlier"} <= set(t.column_names)
    assert t["reading_id"].to_pylist()[:3] == [127761, 133951, t["reading_id"][2].as_py()]  # input order kept
    assert sum(t["is_outlier"].to_pylist()) == 104
    out_s = tmp_path / "stream.csv"
    assert run("detect", path, "--metric", "power_drain", "--stream", "--out", str(out_s)).exit_code == 0
    import pyarrow.csv as pacsv

    s = pacsv.read_csv(out_s)
    # --stream equals the streaming operator over the file, in order.
    src = pacsv.read_csv(path)
    op = OutlierClassifier(metrics=["power_drain"])
    ref = pa.Table.from_batches([b for chunk in src.to_batches(max_chunksize=3333) for b in op.process(chunk)])
    assert s["is_outlier"].to_pylist() == ref["is_outlier"].to_pylist()
    assert not any(s["is_outlier"].to_pylist()[:1000])  # warm-up rows are never labelled
