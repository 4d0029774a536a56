"""Fault-test helpers: worker subprocesses, committed progress, topology files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from confluent_kafka import Consumer, TopicPartition


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "faults-probe"})
    try:
        parts = sorted(c.list_topics(timeout=10).topics[topic].partitions)
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offs = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(o.offset, 0) for o in offs)
    finally:
        c.close()


def start_worker(topology: Path, workers: int = 1, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen([sys.executable, "-m", "dawnstream", "run", str(topology), "--workers", str(workers)],
                            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "DAWNSTREAM_LOG_LEVEL": "INFO"},
                            start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return int(proc.returncode)


def wait_until(cond, timeout: float, what: str, every: float = 0.5) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def write_topology(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path
