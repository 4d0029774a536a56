"""Fault-test helpers: worker subprocesses, committed progress, topology files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "faults-probe"})
    try:
        parts = sorted(c.list_topics(timeout=10).topics[topic].partitions)
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def topic_ends(admin: AdminClient) -> dict[str, int]:
    """Sum of the end offsets of every non-internal topic on the broker, per topic (one ListOffsets call):
    taken before and after a test, the topics whose sum moved are the topics that received records."""
    md = admin.list_topics(timeout=30)
    want = {TopicPartition(n, p): OffsetSpec.latest() for n, t in md.topics.items() if not n.startswith("__")
            for p in t.partitions}
    ends: dict[str, int] = {}
    for tp, fut in (admin.list_offsets(want, request_timeout=30).items() if want else []):
        ends[tp.topic] = ends.get(tp.topic, 0) + fut.result().offset
    return ends


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Sum of the group's committed offsets (0 while the coordinator is not available yet)."""
    return sum(committed_each(bootstrap, group, topic, partitions))


def committed_each(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offset per partition (0 where none yet, or while the coordinator is away)."""
    from confluent_kafka import KafkaException

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offs = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [max(o.offset, 0) for o in offs]
    except KafkaException:
        return [0] * partitions  # coordinator loading or moving (broker restart): no progress visible right now
    finally:
        c.close()


_STARTED: list[subprocess.Popen] = []


def kill_all() -> None:
    """SIGKILL every worker a test started and did not stop (never leave orphans behind)."""
    while _STARTED:
        p = _STARTED.pop()
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def start_worker(topology: Path, workers: int = 1, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    proc = _spawn(topology, workers, out)
    _STARTED.append(proc)
    return proc


def _spawn(topology: Path, workers: int, out: object) -> subprocess.Popen:
    # The tests read INFO events (runner.start, partitions.assigned, state.restored) from the log.
    env = {**os.environ, "DAWNSTREAM_LOG_LEVEL": "INFO"}
    cmd = [sys.executable, "-m", "dawnstream", "run", str(topology), "--workers", str(workers)]
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,  # type: ignore[arg-type]
                            start_new_session=True)


def kill_after_progress(proc: subprocess.Popen, topology: Path, log: Path, bootstrap: str, group: str, topic: str,
                        partitions: int, feed: Callable[[], object], pause_s: float) -> tuple[subprocess.Popen, int]:
    """Feed more input, wait until the worker commits progress on it, wait ``pause_s``, kill -9 the worker's
    process group and start it again; returns the new process and where its log lines begin."""
    before = committed(bootstrap, group, topic, partitions)
    feed()
    wait_until(lambda: committed(bootstrap, group, topic, partitions) > before, 180, "progress after a restart",
               log=log)
    time.sleep(pause_s)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    since = log.stat().st_size
    return start_worker(topology, log=log), since


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return int(proc.returncode)


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """Pids of the worker processes under a `dawnstream run` parent (not multiprocessing's helpers)."""
    from pathlib import Path

    try:
        kids = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    except OSError:
        return []
    out = []
    for k in kids:
        try:
            if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes():
                out.append(k)
        except OSError:
            continue
    return out


def wait_until(cond, timeout: float, what: str, every: float = 0.5,  # type: ignore[no-untyped-def]
               log: Path | None = None) -> None:
    """Poll `cond` every `every` s; on timeout dump worker stacks and fail with the tail of `log`."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            for p in _STARTED:  # leave every worker's stacks in its log (faulthandler on SIGUSR1)
                for k in worker_pids(p):
                    os.kill(k, signal.SIGUSR1)
            time.sleep(1)
            tail = log.read_text(errors="replace")[-6000:] if log and log.exists() else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(every)


def write_topology(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path
