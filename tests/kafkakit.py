"""Reading topics back in tests (read_committed, waiting for the topic and the expected count)."""

from __future__ import annotations

import socket
import time
import uuid

from confluent_kafka import Consumer, TopicPartition


def read_all(bootstrap: str, topic: str, expected: int | None = None, timeout_s: float = 60.0,
             idle_s: float = 3.0) -> list:
    """Every committed message of ``topic`` (read_committed), waiting up to ``timeout_s`` for
    ``expected`` messages, or until nothing new arrives for ``idle_s`` when ``expected`` is None."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    deadline = time.monotonic() + timeout_s
    parts: list[int] = []
    while not parts:  # the topic may not exist yet: a worker creates it when it starts
        md = c.list_topics(timeout=10)
        t = md.topics.get(topic)
        parts = sorted(t.partitions) if t is not None and t.error is None else []
        if not parts:
            if time.monotonic() > deadline:
                c.close()
                return []
            time.sleep(0.2)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list = []
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = c.consume(10_000, timeout=0.5)
            got = [m for m in batch if m.error() is None]
            out.extend(got)
            if got:
                last_new = time.monotonic()
            if expected is not None and len(out) >= expected:
                break
            if expected is None and time.monotonic() - last_new > idle_s:
                break
    finally:
        c.close()
    return out


def free_port_pair(start: int) -> int:
    """A port whose next port is free too (the broker's controller listens there), below Linux's ephemeral
    range (32768-60999): a port in it can be taken at any moment by some client's outgoing connection."""
    for port in range(start, 32000, 2):
        socks = []
        try:
            for p in (port, port + 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no two free ports in a row below 32000")
