"""Every CLI command answers --help; the one-shot ``process`` command works on a real dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dawnstream.cli import app

COMMANDS = [[], ["broker"], ["broker", "start"], ["broker", "stop"], ["broker", "status"], ["broker", "logs"],
            ["topics"], ["topics", "create"], ["topics", "list"], ["topics", "describe"], ["run"], ["process"],
            ["replay"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "dawnstream")
def test_help(cmd: list[str]) -> None:
    res = CliRunner().invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_console_script_help() -> None:
    res = subprocess.run([sys.executable, "-m", "dawnstream", "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "replay" in res.stdout


def test_process_runs_a_topology_over_the_flights(tmp_path: Path) -> None:
    topo = Path(__file__).resolve().parents[2] / "topologies" / "flights-late.yaml"
    out = tmp_path / "late.parquet"
    res = CliRunner().invoke(app, ["process", str(topo), "flights", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from dawnstream.sources import flights

    expected = pc.sum(pc.greater(flights()["dep_delay"], 60)).as_py()
    assert summary["rows_in"] == 336_776 and summary["rows_out"] == expected == pq.read_table(out).num_rows


def test_bad_topology_exits_2_with_path(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ninput: {topic: a.b.c.v1}\noutput: {topic: a.b.d.v1}\nstages: [{op: filter, expr: 'x >'}]\n")
    res = CliRunner().invoke(app, ["run", str(p)])
    assert res.exit_code == 2 and "stages.0.expr" in res.output
