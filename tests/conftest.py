"""Shared fixtures: one real Kafka broker per test session, unique topic names, shared data."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real broker: reuse one that answers, else start ours (and stop it after).

    ``DAWNSTREAM_KAFKA_BOOTSTRAP`` picks the address (default 127.0.0.1:9092).
    """
    from dawnstream.streams.broker import BrokerManager, kafka_answers

    addr = os.environ.get("DAWNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    if kafka_answers(addr):
        yield addr
        return
    port = int(addr.rsplit(":", 1)[1])
    mgr = BrokerManager(port=port)
    mgr.start(timeout_s=180)
    try:
        yield mgr.bootstrap
    finally:
        mgr.stop()


@pytest.fixture
def topic_name() -> object:
    """Factory of unique topic names ``test.<tag>-<uuid>.<event>.v1``."""

    def make(event: str = "rows", tag: str = "t") -> str:
        return f"test.{tag}-{uuid.uuid4().hex[:10]}.{event}.v1"

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (tests needing it are skipped with a message when it is absent)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent")
    return SHARED


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


@pytest.fixture
def reader(kafka_bootstrap: str) -> Callable[..., list]:
    return lambda topic, expected=None, **kw: read_all(kafka_bootstrap, topic, expected, **kw)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/kafka talks to the real broker.
    for item in items:
        if "tests/kafka" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.kafka)
