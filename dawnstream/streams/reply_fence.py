"""Reply fence: after a serving worker dies, requests it already answered are not answered again.

At-least-once, a worker that takes over a partition re-reads it from the last committed offset (from
its first offset when none was committed: the worker that died may have answered before its first
commit): the requests between that offset and the end of the partition at take-over ("the replay range") may
already have replies on their ``reply-to`` topics, sent by the worker that died before it could
commit. Sending them again would be a duplicate for the client, and not even an identical one (a
straggler deadline or an updated per-user weight can change the answer).

So when a partition finishes its recovery, the fence notes the replay range. While a batch holds
requests in that range, each reply's ``reply-to`` topic is scanned once, from shortly before the
oldest replayed request's timestamp to its current end, for the ``correlation-id`` headers already
there; replies whose id was found are dropped: the first answer stands. Once every partition is
past its replay range the fence holds nothing and costs one dictionary lookup per batch.

Exactly-once jobs need no fence: the dead worker's open transaction is aborted, its replies never
become visible to ``read_committed`` readers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from dawnstream.logs import event, get_logger
from dawnstream.streams.kafka_clients import client_only
from dawnstream.topics.codecs.requests import CORRELATION_ID
from dawnstream.topics.message import Encoded, Message

log = get_logger(__name__)
CLOCK_SKEW_MS = 60_000
"""How far before the oldest replayed request a reply topic is scanned (producer clocks may differ)."""
SCAN_TIMEOUT_S = 10.0


class ReplyFence:
    """Drops replies to requests that were already answered before a take-over (module docstring).

    Args:
        base: client settings (bootstrap and security) for the reply-topic reader.
        input_topic: the requests topic.
        enabled: False for exactly-once jobs (nothing to fence).
        start: where the group's consumer starts a partition that has no committed offset
            (``input.start``): ``earliest`` re-reads it from its first offset.
    """

    def __init__(self, base: Mapping[str, Any], input_topic: str, enabled: bool = True,
                 start: str = "earliest") -> None:
        self.base = base
        self.input_topic = input_topic
        self.enabled = enabled
        self.start = start
        self.replay_end: dict[int, int] = {}  # partition -> end offset of its replay range
        self._seen: dict[str, set[str]] = {}  # reply topic -> correlation ids found on it
        self._scanned_from: dict[str, int] = {}  # reply topic -> timestamp (ms) its scan started at
        self.dropped = 0

    def recovered(self, consumer: Consumer, partition: int, position: int | None) -> None:
        """``partition`` resumes at ``position`` (``None``: at its committed offset): note its replay
        range, up to the partition's current end.

        A partition without a committed offset is re-read from its first offset (``start: earliest``):
        a worker that died before its first commit may have answered any of it, so all of it is fenced.
        """
        if not self.enabled:
            return
        tp = TopicPartition(self.input_topic, partition)
        try:
            low, end = consumer.get_watermark_offsets(tp, timeout=10)
            if position is None:
                position = consumer.committed([tp], timeout=10)[0].offset
                if position < 0:  # never committed: the consumer starts where input.start says
                    if self.start != "earliest":
                        return
                    position = low
        except KafkaException as e:  # without the range, fence nothing: at worst a client gets a duplicate
            event(log, "reply_fence.skipped", partition=partition, error=str(e))
            return
        if end > position:
            self.replay_end[partition] = end

    def forget(self, partition: int) -> None:
        """The partition left this worker."""
        self.replay_end.pop(partition, None)
        if not self.replay_end:
            self._seen.clear()
            self._scanned_from.clear()

    def filter(self, partition: int, messages: list[Message], outputs: list[tuple[str, Encoded]]) -> None:
        """Drop, in place, the replies in ``outputs`` whose request was answered before the take-over.

        Args:
            partition: the input partition of ``messages``.
            messages: the batch's requests, in offset order.
            outputs: ``(topic, records)`` the batch produced; records with a per-record topic and a
                ``correlation-id`` header are replies.
        """
        end = self.replay_end.get(partition)
        if end is None:
            return
        replayed = [m for m in messages if m.offset < end]
        if not replayed:
            self.forget(partition)
            return
        since = min(m.timestamp_ms for m in replayed) - CLOCK_SKEW_MS
        for i, (topic, enc) in enumerate(outputs):
            if enc.record_headers is None:
                continue
            keep = []
            for j, headers in enumerate(enc.record_headers):
                cid = _correlation_id(headers)
                target = (enc.topics[j] if enc.topics is not None else None) or topic
                if cid is not None and cid in self._answered(target, since):
                    self.dropped += 1
                    continue
                keep.append(j)
            if len(keep) < len(enc):
                outputs[i] = (topic, _subset(enc, keep))
        if messages[-1].offset + 1 >= end:
            self.forget(partition)

    def _answered(self, topic: str, since_ms: int) -> set[str]:
        if topic in self._seen and self._scanned_from[topic] <= since_ms:
            return self._seen[topic]
        self._seen[topic] = scan_correlation_ids(self.base, topic, since_ms)
        self._scanned_from[topic] = since_ms
        event(log, "reply_fence.scanned", topic=topic, since_ms=since_ms, replies=len(self._seen[topic]))
        return self._seen[topic]


def scan_correlation_ids(base: Mapping[str, Any], topic: str, since_ms: int,
                         timeout_s: float = SCAN_TIMEOUT_S) -> set[str]:
    """The ``correlation-id`` headers of ``topic``'s records from timestamp ``since_ms`` to its current end.

    Returns an empty set when the topic cannot be read (missing, unreachable within ``timeout_s``):
    fencing is best effort, the client's de-duplication by correlation id remains.
    """
    c = Consumer({**client_only(base, consumer=True), "group.id": f"dawnstream.reply-fence.{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "enable.partition.eof": True, "isolation.level": "read_uncommitted"})
    found: set[str] = set()
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return found
        starts = c.offsets_for_times([TopicPartition(topic, p, since_ms) for p in meta.partitions], timeout=10)
        todo = {}
        for tp in starts:
            _, hi = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            start = tp.offset if tp.offset >= 0 else hi  # -1: nothing at or after since_ms
            if start < hi:
                todo[tp.partition] = hi
                tp.offset = start
        if not todo:
            return found
        c.assign([tp for tp in starts if tp.partition in todo])
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error() is not None:
                    continue
                cid = _correlation_id(m.headers() or [])
                if cid is not None:
                    found.add(cid)
                part, off = m.partition() or 0, m.offset() or 0
                if off + 1 >= todo.get(part, 0):
                    todo.pop(part, None)
        return found
    except KafkaException as e:
        event(log, "reply_fence.scan_failed", topic=topic, error=str(e))
        return found
    finally:
        c.close()


def _correlation_id(headers: Any) -> str | None:
    for k, v in headers:
        if k == CORRELATION_ID and v is not None:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return None


def _subset(enc: Encoded, keep: list[int]) -> Encoded:
    return Encoded(
        values=[enc.values[j] for j in keep],
        keys=[enc.keys[j] for j in keep] if enc.keys is not None else None,
        headers=enc.headers,
        record_headers=[enc.record_headers[j] for j in keep] if enc.record_headers is not None else None,
        topics=[enc.topics[j] for j in keep] if enc.topics is not None else None,
    )
