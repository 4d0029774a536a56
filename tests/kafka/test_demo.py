"""`make demo` end to end: the same function it calls, on the real flights, against the real broker.

It broke once (exactly-once added a changelog the demo never created) and nothing noticed because
no test ran it; this one asserts the result the README shows.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from dashkit import Dashboard, job_selector, metrics_of, stages_of
from rich.console import Console

from dawnstream.demo import DemoResult, describe, main, run_demo

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_the_demo_finds_the_march_2013_noreaster(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("DAWNSTREAM_KAFKA_BOOTSTRAP", kafka_bootstrap)
    # `dawnstream ui` in another terminal: it finds the demo's workers by their announcements alone.
    monkeypatch.setenv("DAWNSTREAM_RUN_DIR", str(tmp_path / "run"))
    dash = Dashboard(kafka_bootstrap, discover=True, shots=tmp_path)
    screen = io.StringIO()
    box: dict[str, DemoResult] = {}
    demo = threading.Thread(target=lambda: box.setdefault("result", run_demo(Console(file=screen, width=120))),
                            daemon=True)
    demo.start()
    try:
        watch_the_flights_job_live(dash, demo)
    finally:
        demo.join(180)
        dash.close()
    result = box["result"]
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


def watch_the_flights_job_live(dash: Dashboard, demo: threading.Thread) -> None:
    """The browser shows both demo jobs while they run: counters that move and agree with /metrics, the merge
    job's top explanations as its /stages reports them, the dead-letter topics; one screenshot per panel."""
    job, merge = job_selector("flight-delays"), job_selector("flight-delays-merge")

    def urls(topology: str) -> list[str]:
        return [ep.url for ep in list(dash.collector.endpoints.values()) if ep.topology == topology and not ep.error]

    def both_jobs_running() -> list[str]:
        assert demo.is_alive(), "the demo ended before the dashboard showed it"
        shown = dash.values(job)
        rows = shown.get("rows_in_total") or 0
        problems = [] if rows > 0 else [f"flight-delays shows {rows} rows"]
        if not dash.page.locator(merge).count():
            problems.append("no card for flight-delays-merge")
        return problems

    dash.wait_until(both_jobs_running, timeout_s=60, what="the flights jobs")
    [url] = urls("flight-delays")
    before = metrics_of(url).sum("dawnstream_rows_in_total")
    time.sleep(2.0)  # the page is at most one scrape (0.5 s) and one refresh (1 s) old
    page = dash.values(job)
    after = metrics_of(url).sum("dawnstream_rows_in_total")
    assert before <= page["rows_in_total"] <= after, (before, page["rows_in_total"], after)
    assert page["workers_up"] == 1 and (page["rows_in_per_s"] or 0) > 0
    if after < 336_776:  # still replaying: the next refresh shows more rows
        dash.wait_until(lambda: [] if dash.values(job)["rows_in_total"] > page["rows_in_total"] else ["no new rows"],
                        timeout_s=10, what="the live row count")
    dash.shot(job, "ui-flights-job")

    def merge_panel_matches_stages() -> list[str]:
        [merge_url] = urls("flight-delays-merge")
        panel = stages_of(merge_url)["stages"]["merge_explanations"]["0"]
        want = [e["support"] for e in panel["top"]]
        got = [r.get("support") for r in dash.rows(merge + ' [data-cap="explanations"]', "rank").values()]
        return [] if want and got == want else [f"page supports {got} != /stages {want}"]

    dash.wait_until(merge_panel_matches_stages, timeout_s=30, what="the merge job's explanations")
    dash.shot(merge + ' [data-cap="explanations"]', "ui-macrobase-explanations")
    dead = dash.values('#dead-letters [data-topic="sensors.flights.rows.v1.dlq"]')
    assert dead.get("messages") == 0.0, dead
    dash.shot("#dead-letters", "ui-dead-letters-flights")


def test_the_demo_exits_non_zero_when_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on port 1: the demo must fail loudly, not print an empty table and exit 0.
    monkeypatch.setenv("DAWNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert main() == 1
