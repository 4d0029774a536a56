"""Operator state in a compacted changelog topic, restored when a partition is assigned.

One changelog per topology: ``state.<topology>.changelog.v1``, compacted, with as many
partitions as the input. The snapshot of input partition *p* is written to changelog partition
*p* under key ``p<p>``; its value is JSON: ``{"format", "offset", "schema", "stages"}`` where
``offset`` is the next input offset the snapshot has *not* seen, ``schema`` the learned row types
and ``stages`` every stage's own snapshot (base64 of its JSON/Arrow/npz bytes - never pickle).

Operators that keep state per key (a :class:`~dawnstream.streams.store.KeyedStore`) add one record
per changed key, ``p<p>/<stage>/<key>``, next to the blob (see :mod:`dawnstream.streams.store`).

Snapshots are taken every ``checkpoint_ms`` (not every batch): on restore the runner loads the
latest one and re-processes the input from its ``offset`` up to the committed offset with outputs
discarded. Operators are deterministic per row, so the rebuilt state is the state the crashed
worker had when it committed (the approach of Kafka Streams' standby-less restore).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from dawnstream.topics.spec import TopicSpec

FORMAT = 1


def changelog_topic(topology_name: str) -> str:
    """``state.<topology>.changelog.v1`` with the name folded to the topic alphabet."""
    clean = re.sub(r"[^a-z0-9_-]+", "-", topology_name.lower()).strip("-") or "topology"
    return f"state.{clean}.changelog.v1"


def changelog_spec(topology_name: str, partitions: int) -> TopicSpec:
    """Compacted changelog, one partition per input partition, 16 MiB messages."""
    return TopicSpec(name=changelog_topic(topology_name), partitions=partitions,
                     config={"cleanup.policy": "compact", "max.message.bytes": str(16 << 20),
                             "min.cleanable.dirty.ratio": "0.1", "segment.ms": str(10 * 60 * 1000)})


def snapshot_key(partition: int) -> bytes:
    return f"p{partition}".encode()


def read_records(base: dict[str, Any], topic: str, partition: int,
                 timeout_s: float = 30.0) -> Iterator[tuple[bytes | None, bytes | None]]:
    """Every committed record of one changelog partition, oldest first, as ``(key, value)`` pairs
    (``value`` None for a tombstone). Records arrive in chunks, so a state of many records is
    restored incrementally, never as one message.

    ``timeout_s`` bounds the wait for the partition's offsets and each pause of more than a second
    without records ends the read (read_committed skips transaction markers, so the position may
    stop short of the high watermark).
    """
    from dawnstream.streams.kafka_clients import client_only  # kafka_clients imports this module

    c = Consumer({**client_only(base, consumer=True), "group.id": f"dawnstream.restore.{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False,
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    try:
        tp = TopicPartition(topic, partition)
        low, high = c.get_watermark_offsets(tp, timeout=timeout_s)
        if high <= low:
            return
        c.assign([TopicPartition(topic, partition, low)])
        idle_since = time.monotonic()
        while True:
            msgs = c.consume(1000, timeout=0.2)
            for m in msgs:
                if m.error() is None:
                    yield m.key(), m.value()
            if msgs:
                idle_since = time.monotonic()
            if c.position([tp])[0].offset >= high or time.monotonic() - idle_since > 1.0:
                break
    finally:
        c.close()


KEYED_TAG = b"DSK1"
"""Prefix of a keyed-store record's value: magic + the snapshot offset (8 bytes, big-endian) it belongs to."""


def tag_keyed(value: bytes | None, offset: int) -> bytes | None:
    """A keyed record's value as written to the changelog: tagged with the snapshot offset (tombstones stay
    None). Without transactions (at-least-once) a crash can leave keyed records of a snapshot whose blob
    never got written; the tag lets a restore ignore them."""
    return None if value is None else KEYED_TAG + offset.to_bytes(8, "big") + value


def untag_keyed(value: bytes | None) -> tuple[int, bytes | None]:
    """``(snapshot offset, value)`` of a changelog record (offset 0 for untagged values and tombstones)."""
    if value is None or not value.startswith(KEYED_TAG) or len(value) < 12:
        return 0, value
    return int.from_bytes(value[4:12], "big"), value[12:]


def keyed_at(versions: dict[bytes, list[tuple[int, bytes | None]]], offset: int) -> dict[bytes, bytes | None]:
    """For each key, its latest version written for a snapshot at or before ``offset`` (keys with none are
    left out: they did not exist in that snapshot)."""
    out: dict[bytes, bytes | None] = {}
    for key, vs in versions.items():
        for tag, value in reversed(vs):
            if tag <= offset:
                out[key] = value
                break
    return out
