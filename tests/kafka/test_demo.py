"""`make demo` end to end: the same function it calls, on the real flights, against the real broker.

It broke once (exactly-once added a changelog the demo never created) and nothing noticed because
no test ran it; this one asserts the result the README shows.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from dawnstream.demo import describe, main, run_demo

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_the_demo_finds_the_march_2013_noreaster(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAWNSTREAM_KAFKA_BOOTSTRAP", kafka_bootstrap)
    screen = io.StringIO()
    result = run_demo(Console(file=screen, width=120))
    assert result.error is None, result.error
    assert result.rows_replayed == result.rows_processed == 336_776
    assert result.dead_letters == 0 and result.outliers == 3_647
    top = result.final[0]
    assert describe(top) == "date=2013-03-08"
    assert (round(top["support"], 3), round(top["ratio"], 1)) == (0.035, 14.2)
    assert (round(top["outlier_count"]), round(top["total_count"])) == (98, 684)
    assert [describe(r) for r in result.final[1:3]] == ["date=2013-06-24", "date=2013-07-10"]
    text = screen.getvalue()
    assert "final explanations read back from" in text and "sensors.flights.explanations.v1" in text
    assert "date=2013-03-08 │   0.035 │       14.2 │       98 │  684" in text


def test_the_demo_exits_non_zero_when_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on port 1: the demo must fail loudly, not print an empty table and exit 0.
    monkeypatch.setenv("DAWNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert main() == 1
