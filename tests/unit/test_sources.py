"""Sources: the real flights/weather datasets and file formats."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dawnstream.errors import DawnstreamError
from dawnstream.sources import flights, read_table, weather, write_table


def test_flights_are_joined_with_planes_in_time_order() -> None:
    f = flights()
    assert f.num_rows == 336_776
    assert {"plane_manufacturer", "plane_model", "plane_year", "carrier", "dep_delay"} <= set(f.column_names)
    th = f["time_hour"]
    assert pc.all(pc.greater_equal(th.slice(1), th.slice(0, len(th) - 1))).as_py()
    # Real incident: the 2013-02-08 blizzard cancelled more than half the flights (null dep_time).
    day = f.filter(pc.and_(pc.equal(f["month"], 2), pc.equal(f["day"], 8)))
    assert day["dep_time"].null_count / day.num_rows > 0.5


def test_weather_rows() -> None:
    w = weather()
    assert w.num_rows > 26_000 and set(pc.unique(w["origin"]).to_pylist()) == {"EWR", "JFK", "LGA"}


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_formats_round_trip(tmp_path: Path, suffix: str) -> None:
    t = pa.table({"a": [1, 2], "b": ["x", "y"]})
    p = tmp_path / f"t{suffix}"
    write_table(t, p)
    assert read_table(p).to_pylist() == t.to_pylist()


def test_gz_and_zip(tmp_path: Path) -> None:
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(b"a,b\n1,x\n"))
    with zipfile.ZipFile(tmp_path / "t.zip", "w") as z:
        z.writestr("t.csv", "a,b\n2,y\n")
    assert read_table(tmp_path / "t.csv.gz").to_pylist() == [{"a": 1, "b": "x"}]
    assert read_table(tmp_path / "t.zip").to_pylist() == [{"a": 2, "b": "y"}]


def test_unknown_inputs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(DawnstreamError, match="no such file"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "x.xlsx").write_bytes(b"")
    with pytest.raises(DawnstreamError, match="unknown format"):
        read_table(tmp_path / "x.xlsx")
