"""`dawnstream run --workers 2`: one consumer group sharing partitions; SIGTERM commits and exits;
metrics and health endpoints answer while running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, TopicPartition

from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.topics.spec import TopicSpec


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offs = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(o.offset, 0) for o in offs)
    finally:
        c.close()


def scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.slow
def test_two_workers_share_partitions_and_stop_cleanly_on_sigterm(
    kafka_bootstrap: str, topic_name, reader, tmp_path: Path
) -> None:
    src, dst = topic_name("rows", "workers"), topic_name("out", "workers")
    n, parts, port = 40_000, 4, 29411  # below the ephemeral range (32768+): no client socket can hold it
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=src, partitions=parts)])
    replay_table(pa.table({"i": list(range(n)), "k": [f"k{i % 13}" for i in range(n)]}), src, key="k",
                 bootstrap=kafka_bootstrap)
    topo = tmp_path / "t.yaml"
    group_name = f"workers-{src}"
    topo.write_text(
        f"name: {group_name}\ninput: {{topic: {src}, partitions: {parts}}}\n"
        f"stages: [{{op: filter, expr: 'i % 2 == 0'}}]\n".replace("i % 2 == 0", "i >= 0") +
        f"outputs: [{{topic: {dst}, key_field: k}}]\nkafka: {{bootstrap: '{kafka_bootstrap}'}}\n"
        f"metrics: {{port: {port}}}\nbatch: {{max_messages: 2000}}\n"
    )
    env = {**os.environ, "DAWNSTREAM_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([sys.executable, "-m", "dawnstream", "run", str(topo), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        out = reader(dst, n, timeout_s=90)
        if len(out) != n:
            proc.send_signal(signal.SIGTERM)
            pytest.fail(f"got {len(out)} of {n} rows; worker log:\n{proc.communicate(timeout=60)[0][-4000:]}")
        # Both workers are up, each with its own endpoint; once the group settles they share the 4 partitions.
        deadline = time.monotonic() + 45
        while True:
            assigned = []
            for w in range(2):
                code, body = scrape(port + w, "/metrics")
                assert code == 200 and "dawnstream_rows_in_total" in body and "dawnstream_batch_seconds_bucket" in body
                line = next(ln for ln in body.splitlines() if ln.startswith("dawnstream_assigned_partitions{"))
                assigned.append(float(line.rsplit(" ", 1)[1]))
                code, health = scrape(port + w, "/healthz")
                assert code == 200 and json.loads(health)["state"] == "running"
            if sum(assigned) == parts and all(a >= 1 for a in assigned):
                break
            assert time.monotonic() < deadline, f"partitions never shared: {assigned}"
            time.sleep(0.5)
        assert scrape(port, "/nope")[0] == 404
        deadline = time.monotonic() + 30
        while committed_total(kafka_bootstrap, f"dawnstream.{group_name}", src, parts) < n:
            assert time.monotonic() < deadline, "offsets were not committed"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            log, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, log[-3000:]
    assert log.count("event=runner.stop") == 2, log[-3000:]
    rows_in = sum(int(part.split("rows_in=")[1].split()[0]) for part in log.splitlines() if "event=runner.stop" in part)
    assert rows_in == n
    assert len(reader(dst, None, idle_s=2)) == n  # nothing produced twice
