"""A keyed window job across partitions, dawnstream against Quix Streams in the same run.

The job (``topologies/flights-per-origin-hourly.yaml`` by default, or ``--topology``): rows keyed by one
column (flights: ``tailnum``) over several partitions, re-keyed by another (``group_by: origin``) and
counted in 1-hour tumbling event-time windows. Both systems read the same input topic (the source is
replayed once, keyed as the topology's input says, not timed), both re-key through a repartition topic
and both run the same guarantee.

- **dawnstream**: ``dawnstream run <topology>`` (both halves: one process each); and the same job without
  its ``group_by`` (``dawnstream_without_group_by``: what the re-key costs; its ``output_rows`` are partial
  counts, one per window, key and input partition).
- **Quix Streams**: ``group_by(key)`` + ``tumbling_window(size, grace_ms=lateness).count().final()``, event
  time from the same column, run from a virtual environment of its own (``--quix-venv``; created with
  ``pip install quixstreams`` when missing: Quix Streams is a benchmark reference, not a dependency).

Timing, for both alike: each runs as a subprocess; a poller reads the consumer groups' committed offsets
every 50 ms. ``seconds`` runs from the process start to the last offset commit that moved (the job has
then read everything, re-keyed and counted); ``steady_rows_per_s`` leaves out the start-up (from the
first commit on the input). Both commit every 200 ms.

Correctness: the windows each emitted, against a batch group-by of the same rows (pyarrow): a
``matching`` window has the group-by's count; ``partial`` ones have fewer (rows counted in another
partition, or dropped as late); ``missing`` are groups of windows that end, with the lateness, before
the last event time of every input partition, and were not emitted. (Neither system drains at the
end: a window is emitted once the stream shows it complete. After a repartition dawnstream closes a
window when every upstream partition has sent that partition a later row, so the last few hours of
a stopped input stay open - they would be emitted as the stream goes on.)

    python benchmarks/keyed_window.py [--source flights] [--topology topologies/flights-per-origin-hourly.yaml]
        [--guarantee at_least_once|exactly_once] [--rows N] [--quix-venv PATH] [--bootstrap HOST:PORT]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from dawnstream.sources import read_table
from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.topics.spec import TopicSpec

ROOT = Path(__file__).resolve().parents[1]
QUIX_APP = r'''
import json, sys, time
from datetime import datetime, timedelta
from quixstreams import Application

a = json.loads(sys.argv[1])

def event_ms(value, headers, timestamp, timestamp_type):
    v = value.get(a["time"]) if isinstance(value, dict) else None
    if isinstance(v, str):
        return int(datetime.fromisoformat(v).timestamp() * 1000)
    return int(v) if v is not None else timestamp

app = Application(broker_address=a["bootstrap"], consumer_group=a["group"], auto_offset_reset="earliest",
                  processing_guarantee=a["guarantee"], commit_interval=0.2, state_dir=a["state_dir"],
                  use_changelog_topics=True)
src = app.topic(a["input"], value_deserializer="json", timestamp_extractor=event_ms)
out = app.topic(a["output"], value_serializer="json")
sdf = app.dataframe(src).group_by(a["key"])
sdf = sdf.tumbling_window(timedelta(milliseconds=a["size_ms"]), grace_ms=a["grace_ms"]).count().final()
sdf = sdf.apply(lambda w, key, ts, h: {"window_start": w["start"], "key": key, "count": w["value"]}, metadata=True)
sdf.to_topic(out)
app.run(timeout=a["idle_s"])
'''


def _committed_poller(bootstrap: str, groups: list[str], stop: threading.Event, marks: dict[str, float]) -> None:
    """Poll the groups' committed offsets (every topic they commit on) every 50 ms; note when they first
    and last moved."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    last: dict[str, int] = {}
    while not stop.is_set():
        for g in groups:
            try:
                (fut,) = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g)]).values()
                total = sum(max(tp.offset, 0) for tp in fut.result().topic_partitions)
            except Exception:  # noqa: BLE001 - the coordinator may be moving: ask again next time
                continue
            if total != last.get(g, 0):
                now = time.monotonic()
                marks.setdefault("first", now)
                marks["last"] = now
                last[g] = total
        time.sleep(0.05)


def _timed(cmd: list[str], bootstrap: str, groups: list[str], env: dict[str, str]) -> dict:
    stop, marks = threading.Event(), {}
    th = threading.Thread(target=_committed_poller, args=(bootstrap, groups, stop, marks), daemon=True)
    th.start()
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    stop.set()
    th.join(10)
    if r.returncode != 0 or "last" not in marks:
        raise RuntimeError(f"{cmd[:4]} exited {r.returncode} (marks {marks}):\n{r.stderr[-3000:]}")
    return {"seconds": round(marks["last"] - t0, 2), "steady_seconds": round(marks["last"] - marks["first"], 2),
            "startup_s": round(marks["first"] - t0, 2)}


def _read_all(bootstrap: str, topic: str) -> list[dict]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-read-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed", "enable.auto.commit": False})
    c.subscribe([topic])
    rows, idle = [], time.monotonic()
    while time.monotonic() - idle < 5:
        for m in c.consume(10_000, timeout=0.5):
            if m.error() is None:
                rows.append(orjson.loads(m.value()))
                idle = time.monotonic()
    c.close()
    return rows


def _slowest_partition_ms(bootstrap: str, topic: str, time_col: str) -> int:
    """The smallest, over the topic's partitions, of the event time (ms) of its last row."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-tail-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        lasts = []
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi <= lo:
                continue
            c.assign([TopicPartition(topic, p, hi - 1)])
            (m,) = c.consume(1, timeout=10)
            v = orjson.loads(m.value())[time_col]
            ts = pa.scalar(v).cast(pa.timestamp("ms", "UTC")) if not isinstance(v, str) else \
                pc.strptime(pa.scalar(v), "%Y-%m-%dT%H:%M:%S%z", "ms")
            lasts.append(int(pc.cast(ts, pa.int64()).as_py()))
        return min(lasts)
    finally:
        c.close()


def _truth(table: pa.Table, key: str, time_col: str, size_ms: int) -> dict[tuple[int, str], int]:
    t = table.column(time_col)
    ms = (pc.cast(t, pa.timestamp("ms", "UTC")) if pa.types.is_timestamp(t.type) else
          pc.cast(pc.strptime(t, "%Y-%m-%dT%H:%M:%S%z", "ms"), pa.timestamp("ms", "UTC")))
    start = pc.multiply(pc.divide(pc.cast(ms, pa.int64()), size_ms), size_ms)
    g = pa.table({"w": start, "k": pc.cast(table.column(key), pa.string())}).group_by(["w", "k"]).aggregate(
        [("k", "count")])
    return {(w, k): n for w, k, n in zip(*(g.column(c).to_pylist() for c in ("w", "k", "k_count")), strict=True)}


def _score(emitted: dict[tuple[int, str], int], truth: dict[tuple[int, str], int], closed_before: int) -> dict:
    matching = sum(1 for k, n in emitted.items() if truth.get(k) == n)
    closed = {k for k in truth if k[0] < closed_before}
    return {"windows_emitted": len(emitted), "matching": matching, "partial": len(emitted) - matching,
            "missing": len(closed - set(emitted)), "groups_in_closed_windows": len(closed)}


def _quix_python(venv: Path) -> str:
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "quixstreams"], check=True)
    return str(py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="flights", help="a dataset name or a file (.csv/.parquet/.jsonl)")
    ap.add_argument("--topology", default=str(ROOT / "topologies" / "flights-per-origin-hourly.yaml"))
    ap.add_argument("--input-key", default="tailnum", help="the column the input topic is keyed by")
    ap.add_argument("--rows", type=int, default=0, help="first N rows of the source (0: all)")
    ap.add_argument("--guarantee", choices=["at_least_once", "exactly_once"], default="exactly_once")
    ap.add_argument("--bootstrap", default=os.environ.get("DAWNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--quix-venv", default=str(Path.home() / ".cache" / "dawnstream" / "bench-quix-venv"))
    ap.add_argument("--skip-quix", action="store_true")
    ap.add_argument("--quix-grace", default=None,
                    help="Quix Streams' grace period (default: the topology's lateness), e.g. 400d")
    args = ap.parse_args()

    doc = yaml.safe_load(Path(args.topology).read_text())
    stages = doc.get("stages", [])
    gb = next((s for s in stages if s["op"] == "group_by"), None)
    win = next((s for s in stages if s["op"] == "window_count"), None)
    if gb is None or win is None:
        raise SystemExit("the topology needs a group_by stage and a window_count stage after it")
    from dawnstream.operators.window_count import parse_duration_ms

    size_ms, lateness_ms = parse_duration_ms(win["size"]), parse_duration_ms(win.get("lateness", 0) or 1)
    table = read_table(args.source)
    if args.rows:
        table = table.slice(0, args.rows)
    tag = uuid.uuid4().hex[:8]
    parts = int(doc["input"].get("partitions", 1))
    src = f"bench.keyed-window-{tag}.rows.v1"
    doc.update(name=f"bench-keyed-window-{tag}", guarantee=args.guarantee, checkpoint_ms=200)
    doc["input"]["topic"] = src
    doc["outputs"] = [{"topic": f"bench.keyed-window-{tag}.counts.v1", "codec": "json", "key_field": win["key"]}]
    doc["kafka"] = {"bootstrap": args.bootstrap}
    doc["metrics"] = {"port": 0}
    topo = parse_topology(doc)
    TopicAdmin(args.bootstrap).ensure([TopicSpec(name=src, partitions=parts)])
    replay_table(table, src, key=args.input_key, bootstrap=args.bootstrap)
    truth = _truth(table, win["key"], win["time"], size_ms)
    # A window has closed by the end when every input partition's last event time is past its end +
    # lateness (the slowest partition's, as the watermark after a repartition is the minimum of its inputs').
    closed_before = _slowest_partition_ms(args.bootstrap, src, win["time"]) - size_ms - lateness_ms + 1

    env = {**os.environ, "DAWNSTREAM_LOG_LEVEL": "WARNING"}
    result: dict = {"benchmark": "keyed_window", "source": args.source, "rows": table.num_rows,
                    "input_partitions": parts, "group_by": gb["key"], "window": win["size"],
                    "lateness": win.get("lateness", 0), "guarantee": args.guarantee,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "groups": len(truth)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "topology.yaml"
        path.write_text(yaml.safe_dump(doc))
        rekey, counts = topo.split()
        d = _timed([sys.executable, "-m", "dawnstream", "run", str(path), "--max-idle", "5"], args.bootstrap,
                   [rekey.group_id, counts.group_id], env)
        rows = _read_all(args.bootstrap, topo.outputs[0].topic)
        emitted = {(int(pc.cast(pa.scalar(r["window_start"]).cast(pa.timestamp("ms")), pa.int64()).as_py()),
                    str(r[win["key"]])): r["count"] for r in rows}
        d.update(_score(emitted, truth, closed_before))
        d["rows_per_s"] = round(table.num_rows / d["seconds"])
        d["steady_rows_per_s"] = round(table.num_rows / d["steady_seconds"])
        result["dawnstream"] = d
        # The same job without the re-key (what it cost, and what it fixes: partial counts per partition)
        plain = {**doc, "name": f"{doc['name']}-plain", "stages": [st for st in stages if st["op"] != "group_by"],
                 "outputs": [{**doc["outputs"][0], "topic": f"bench.keyed-window-{tag}.plain-counts.v1"}]}
        (Path(tmp) / "plain.yaml").write_text(yaml.safe_dump(plain))
        b = _timed([sys.executable, "-m", "dawnstream", "run", str(Path(tmp) / "plain.yaml"), "--max-idle", "5"],
                   args.bootstrap, [parse_topology(plain).group_id], env)
        merged: dict[tuple[int, str], int] = {}
        for r in _read_all(args.bootstrap, plain["outputs"][0]["topic"]):
            k = (int(pc.cast(pa.scalar(r["window_start"]).cast(pa.timestamp("ms")), pa.int64()).as_py()),
                 str(r[win["key"]]))
            merged[k] = merged.get(k, 0) + 1  # how many partial counts each window came out as
        b["output_rows"] = sum(merged.values())
        b["rows_per_s"] = round(table.num_rows / b["seconds"])
        b["steady_rows_per_s"] = round(table.num_rows / b["steady_seconds"])
        result["dawnstream_without_group_by"] = b
        if not args.skip_quix:
            py = _quix_python(Path(args.quix_venv))
            group = f"bench-quix-{tag}"
            out = f"bench.keyed-window-{tag}.quix-counts.v1"
            TopicAdmin(args.bootstrap).ensure([TopicSpec(name=out, partitions=parts)])
            qa = {"bootstrap": args.bootstrap, "group": group, "input": src, "output": out, "key": gb["key"],
                  "time": win["time"], "size_ms": size_ms, "idle_s": 5.0,
                  "grace_ms": parse_duration_ms(args.quix_grace) if args.quix_grace else lateness_ms,
                  "guarantee": args.guarantee.replace("_", "-"), "state_dir": str(Path(tmp) / "quix-state")}
            (Path(tmp) / "quix_app.py").write_text(QUIX_APP)
            q = _timed([py, str(Path(tmp) / "quix_app.py"), json.dumps(qa)], args.bootstrap, [group], env)
            rows = _read_all(args.bootstrap, out)
            emitted = {(int(r["window_start"]), str(r["key"]).strip('"')): r["count"] for r in rows}
            q.update(_score(emitted, truth, closed_before))
            q["rows_per_s"] = round(table.num_rows / q["seconds"])
            q["steady_rows_per_s"] = round(table.num_rows / q["steady_seconds"])
            q["version"] = subprocess.run([py, "-c", "import quixstreams; print(quixstreams.__version__)"],
                                          capture_output=True, text=True).stdout.strip()
            q["grace_ms"] = qa["grace_ms"]
            result["quix_streams"] = q
            result["rows_per_s_ratio"] = round(d["rows_per_s"] / q["rows_per_s"], 2)
            result["steady_rows_per_s_ratio"] = round(d["steady_rows_per_s"] / q["steady_rows_per_s"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
