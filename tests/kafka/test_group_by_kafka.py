"""``group_by`` through the broker: flights keyed by tailnum over 4 partitions, counted per origin per hour.

Without the re-key each input partition counts its share of every origin (one partial count per
(window, origin, partition)); with it, every window count is final and the output equals a batch
group-by of the same rows - the property Kafka Streams' and Quix Streams' repartition topics give.
"""

from __future__ import annotations

import threading
import uuid
import zlib
from datetime import timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from confluent_kafka import Producer

from dawnstream.errors import ConfigError
from dawnstream.sources import flights
from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import ensure_job_topics
from dawnstream.streams.runner import KafkaRunner

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]
N = 40_000


def _expected(rows: pa.Table) -> list[tuple[str, str, int]]:
    hour = pc.floor_temporal(rows.column("time_hour"), unit="hour")
    t = pa.table({"origin": rows.column("origin"), "hour": hour}).group_by(["origin", "hour"]).aggregate(
        [("origin", "count")])
    cols = (t.column(c).to_pylist() for c in ("origin", "hour", "origin_count"))
    return sorted((h.strftime("%Y-%m-%d %H:%M:%S"), o, n) for o, h, n in zip(*cols, strict=True))


@pytest.mark.parametrize("guarantee,empty", [("exactly_once", False), ("at_least_once", True)])
def test_group_by_makes_window_counts_equal_a_batch_group_by(kafka_bootstrap, reader, guarantee, empty) -> None:
    # empty: the rows go to 3 of the 4 input partitions (fewer keys than partitions, or a topic grown after
    # it was filled): the empty one must not hold the windows open.
    doc = yaml.safe_load((ROOT / "topologies" / "flights-per-origin-hourly.yaml").read_text())
    tag = uuid.uuid4().hex[:8]
    doc["name"] = f"test-group-by-{tag}"
    doc["input"]["topic"] = src = f"test.group-by-{tag}.rows.v1"
    doc["outputs"][0]["topic"] = dst = f"test.group-by-{tag}.counts.v1"
    doc["metrics"]["port"] = 0
    doc["guarantee"] = guarantee
    doc["checkpoint_ms"] = 200
    doc["batch"] = {"max_messages": 3000}
    topo = parse_topology(doc)
    with pytest.raises(ConfigError, match="runs as two jobs"):
        KafkaRunner(topo)
    rekey, counts = topo.split()
    assert rekey.outputs[0].topic == counts.input.topic == f"state.test-group-by-{tag}.by-origin.v1"
    assert [s.op for s in rekey.stages] == [] and [s.op for s in counts.stages] == ["window_count"]
    for part in (rekey, counts):
        ensure_job_topics(part)
    rows = flights().slice(0, N)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for r in rows.to_pylist():
        r["time_hour"] = r["time_hour"].isoformat()
        key = (r["tailnum"] or "").encode()
        if empty:
            p.produce(src, orjson.dumps(r, default=str), key, partition=zlib.crc32(key) % 3)
        else:
            p.produce(src, orjson.dumps(r, default=str), key)
        p.poll(0)
    assert p.flush(60) == 0
    runners = [KafkaRunner(rekey, metrics_port=-1), KafkaRunner(counts, metrics_port=-1)]
    done: list[object] = []
    threads = [threading.Thread(target=lambda r=r: done.append(r.run(max_rows=N, max_idle_s=60))) for r in runners]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    assert len(done) == 2 and runners[1].stats.rows_in == N
    got = sorted((m["window_start"], m["origin"], m["count"])
                 for m in (orjson.loads(x.value()) for x in reader(dst, None, timeout_s=60, idle_s=3)))
    # Not drained: every window the data has closed (its end + 1 h lateness at or before the last event
    # time) came out while the job ran, with its final count - none partial, none late.
    last = pc.max(pc.floor_temporal(rows.column("time_hour"), unit="hour")).as_py()
    closed = [g for g in _expected(rows) if g[0] <= (last - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")]
    assert got == closed and len(closed) > 2000
