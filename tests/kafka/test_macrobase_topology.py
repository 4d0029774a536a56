"""The MacroBase topology through the real broker: 2 workers x 4 partitions find the same
explanations as 1 worker on the same stream (per-partition state, mergeable summaries)."""

from __future__ import annotations

import threading
import time

import orjson
import pyarrow as pa
import pytest
from dashkit import Dashboard, job_matches_metrics, job_selector, stages_of

from dawnstream.operators.outliers.explain import MergeExplanations
from dawnstream.sources import flights
from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.streams.runner import KafkaRunner
from dawnstream.topics.spec import TopicSpec

ATTRS = ["carrier", "origin", "month", "day"]


def topology(src: str, dst: str, bootstrap: str, group: str) -> object:
    return parse_topology(
        {
            "name": group,
            "input": {"topic": src, "partitions": 4, "schema": {"dep_delay": "float64"}},
            "stages": [
                {"op": "classify", "metrics": ["dep_delay"], "warmup": 500, "period": 2000},
                {
                    "op": "explain",
                    "attributes": ATTRS,
                    "min_support": 0.02,
                    "emit_every": 4000,
                    "period": 2000,
                    "decay": 0.05,
                    "output": "summary",
                },
            ],
            "outputs": [{"topic": dst, "partitions": 1}],
            "batch": {"max_messages": 1000},
            "kafka": {"bootstrap": bootstrap},
            "metrics": {"port": 0},
        }
    )


def merged(reader, topic: str, n: int) -> list[tuple]:
    msgs = reader(topic, n, timeout_s=60)
    assert len(msgs) == n
    merge = MergeExplanations(attributes=ATTRS, min_support=0.02)
    rows = [orjson.loads(m.value()) for m in msgs]
    merge.process(pa.RecordBatch.from_pylist(rows))
    return [
        (
            tuple(sorted((k, str(v)) for k, v in e.attributes.items())),
            round(e.outlier_count, 6),
            round(e.total_count, 6),
        )
        for e in merge.explanations()
    ]


def dashboard_shows_the_idle_job(kafka_bootstrap: str, topo, runners: list[KafkaRunner], shots) -> None:
    """Two workers, four partitions, everything read: the dashboard's job card and summaries panel show what the
    workers' /metrics and /stages report, and which worker holds which partition."""
    urls = [f"http://127.0.0.1:{r.metrics_server.port}" for r in runners]
    dash = Dashboard(kafka_bootstrap, targets=urls, shots=shots)
    try:
        sel = job_selector(topo.name)

        def card() -> list[str]:
            problems = job_matches_metrics(dash, topo.name, urls)
            owner = {str(p): r.worker for r in runners for p in r.assigned}
            shown = {k: v.strip() for k, v in dash.page.eval_on_selector_all(
                sel + " tr[data-partition]", "rs => rs.map(r => [r.dataset.partition, r.children[1].textContent])")}
            if shown != {p: str(w) for p, w in owner.items()}:
                problems.append(f"partition owners: page {shown} != runners {owner}")
            want = {p: panel["rows_seen"] for u in urls for p, panel in stages_of(u)["stages"]["explain"].items()}
            got = {p: row["rows_seen"] for p, row in dash.rows(sel + ' [data-cap="summaries"]', "part").items()}
            if got != want:
                problems.append(f"summaries: page {got} != /stages {want}")
            return problems

        dash.wait_until(card, what="the two-worker MacroBase job")
        dash.shot(sel, "ui-macrobase-two-workers")
    finally:
        dash.close()


@pytest.mark.slow
def test_two_workers_find_the_same_explanations_as_one(kafka_bootstrap: str, topic_name, reader, tmp_path) -> None:
    data = flights().slice(0, 40_000).select(["time_hour", "carrier", "origin", "month", "day", "tailnum", "dep_delay"])
    results = []
    for workers in (1, 2):
        src, dst = topic_name("rows", f"mb{workers}"), topic_name("summaries", f"mb{workers}")
        TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=src, partitions=4)])
        topo = topology(src, dst, kafka_bootstrap, f"mb-{workers}-{src}")
        runners = [KafkaRunner(topo, worker=i, create_topics=i == 0, metrics_port=0) for i in range(workers)]
        threads = [threading.Thread(target=r.run, kwargs={"drain": True}) for r in runners]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 60
        while sum(len(r.assigned) for r in runners) != 4 or any(not r.assigned for r in runners):
            assert time.monotonic() < deadline, "the group never settled"
            time.sleep(0.2)
        replay_table(data, src, key="tailnum", bootstrap=kafka_bootstrap)
        while sum(r.stats.rows_in for r in runners) < data.num_rows:
            assert time.monotonic() < deadline + 60, "rows were not processed"
            time.sleep(0.2)
        if workers == 2:
            dashboard_shows_the_idle_job(kafka_bootstrap, topo, runners, tmp_path)
        for r in runners:
            r.stop()
        for th in threads:
            th.join(60)
        assert sum(r.stats.rows_dead for r in runners) == 0
        results.append(merged(reader, dst, sum(r.stats.records_out for r in runners)))
    one, two = results
    assert one and one == two


def test_device_telemetry_topology_finds_device_2040(
    kafka_bootstrap: str, topic_name, reader, shared_data, tmp_path
) -> None:
    """topologies/device-telemetry.yaml on MacroBase's real sensor rows, through the broker."""
    from pathlib import Path

    import pyarrow.csv as pacsv
    import yaml

    from dawnstream.streams.config import load_topology

    rows = pacsv.read_csv(shared_data / "macrobase/legacy/sensor10k.csv.gz")
    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "topologies/device-telemetry.yaml").read_text())
    src, dst = topic_name("rows", "devices"), topic_name("explanations", "devices")
    doc["input"]["topic"], doc["outputs"][0]["topic"] = src, dst
    doc["kafka"]["bootstrap"], doc["metrics"]["port"] = kafka_bootstrap, 0
    doc["name"] = f"devices-{src}"
    p = tmp_path / "devices.yaml"
    p.write_text(yaml.safe_dump(doc))
    topo = load_topology(p)
    runner = KafkaRunner(topo)
    replay_table(rows, src, key="device_id", bootstrap=kafka_bootstrap)
    stats = runner.run(max_rows=rows.num_rows, max_idle_s=30, drain=True)
    assert stats.rows_in == rows.num_rows and stats.rows_dead == 0
    out = [orjson.loads(m.value()) for m in reader(dst, stats.records_out)]
    final = [r for r in out if r["seq"] == max(x["seq"] for x in out)]
    assert final[0]["device_id"] == "2040" and final[0]["support"] > 0.9
