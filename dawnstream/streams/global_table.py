"""Global state: one keyed table that every partition of a job reads, whichever worker owns it.

Per-partition state (:mod:`~dawnstream.streams.state`) is enough while a stage's answer for a row depends
only on its own partition's rows. A stage that learns from the whole stream (the label model of
:mod:`~dawnstream.operators.labeling.label`) needs the others' contributions too. Each partition
*publishes* records (key -> bytes) into the job's global topic, ``state.<job>.global.v1`` (compacted,
one partition), in the same transaction as the batch's outputs; every worker reads that topic from the
beginning into a :class:`GlobalTable` that all its partitions' operators share, the anchor being Kafka
Streams' GlobalKTable (and Flink's broadcast state).

Rules that keep it exact: a key is written by one partition only, its value is a function of that
partition's rows (so a replay after a crash writes the same bytes), and readers see only committed
records (``read_committed``). A record a worker publishes is put into its own table at once too, so its
other partitions need not wait for the broker's echo; the echo is the same bytes.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from dawnstream.logs import event, get_logger
from dawnstream.topics.spec import TopicSpec

log = get_logger(__name__)


def global_topic(topology_name: str) -> str:
    """``state.<topology>.global.v1`` with the name folded to the topic alphabet."""
    clean = re.sub(r"[^a-z0-9_-]+", "-", topology_name.lower()).strip("-") or "topology"
    return f"state.{clean}.global.v1"


def global_spec(topology_name: str) -> TopicSpec:
    """The global topic: compacted (a key's latest value is all a reader needs), one partition, 16 MiB records."""
    return TopicSpec(name=global_topic(topology_name), partitions=1,
                     config={"cleanup.policy": "compact", "max.message.bytes": str(16 << 20)})


class GlobalTable:
    """A worker's copy of the global topic: ``{key: value}`` (str -> bytes), shared by its partitions' operators.

    ``cache`` holds what operators derive from the table (fitted models, one per block), so a worker
    derives each once rather than once per partition.
    """

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        self.cache: dict[Any, Any] = {}

    def put(self, key: str, value: bytes) -> None:
        """Set ``key`` (a worker's own record echoed back by the broker carries the same bytes)."""
        self.records[key] = value

    def get(self, key: str) -> bytes | None:
        return self.records.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.records


class GlobalTopicReader:
    """Keeps a :class:`GlobalTable` in step with the global topic: a consumer outside any group, assigned the
    topic's partition from its first offset, ``read_committed``.

    Args:
        base: the job's client settings (bootstrap, security).
        topic: the global topic.
        table: where records go.
    """

    def __init__(self, base: Mapping[str, Any], topic: str, table: GlobalTable) -> None:
        self.base, self.topic, self.table = dict(base), topic, table
        self.consumer: Any = None
        self._open()

    def _open(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from dawnstream.streams.kafka_clients import client_only

        self.consumer = Consumer({**client_only(self.base, consumer=True),
                                  "group.id": f"dawnstream.global.{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False, "isolation.level": "read_committed",
                                  "auto.offset.reset": "earliest"})
        self.consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])

    def poll(self, timeout_s: float = 0.0) -> int:
        """Apply what has arrived (waiting up to ``timeout_s`` for a first record); returns records applied."""
        n = 0
        for m in self._records(timeout_s):
            n += 1
            if m.key() is not None and m.value() is not None:
                self.table.put(m.key().decode(), m.value())
        return n

    def _records(self, timeout_s: float) -> Iterator[Any]:
        for m in self.consumer.consume(1000, timeout=timeout_s):
            if m.error() is None:
                yield m

    def catch_up(self, timeout_s: float = 30.0, quiet: bool = False, offsets: Any = None) -> int:
        """Read up to the topic's end as it is now (before a worker labels anything). Returns records applied.
        Gives up after ``timeout_s`` (the broker not answering), logging it; later polls go on reading.
        ``offsets``: a client to ask the topic's end (one that fetches nothing answers at once)."""
        from confluent_kafka import KafkaException, TopicPartition

        tp = TopicPartition(self.topic, 0)
        t0 = time.monotonic()
        try:
            _low, high = (offsets or self.consumer).get_watermark_offsets(tp, timeout=timeout_s)
        except KafkaException as e:
            event(log, "global.catch_up_failed", topic=self.topic, error=str(e))
            return 0
        n, idle_since = 0, time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            got = self.poll(0.05)
            n += got
            if got:
                idle_since = time.monotonic()
            pos = self.consumer.position([tp])[0].offset
            # read_committed skips transaction markers: the position may stop one short of the high watermark
            # (the last transaction's commit marker), or more, for a transaction still open
            if pos >= high or (not got and pos >= high - 1) or (pos >= 0 and time.monotonic() - idle_since > 1.0) \
                    or high == 0:
                break
        if not quiet:
            event(log, "global.caught_up", topic=self.topic, records=n, keys=len(self.table.records),
                  seconds=round(time.monotonic() - t0, 2))
        return n

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close()
            finally:
                self.consumer = None
