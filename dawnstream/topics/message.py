"""Transport-neutral message records shared by codecs, runners and the dead-letter envelope."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Headers = list[tuple[str, bytes]]


class Message:
    """One consumed Kafka message, detached from the client library.

    Attributes (read-only):
        value: payload bytes (``None`` for a tombstone).
        key: key bytes or ``None``.
        headers: list of ``(name, bytes)`` pairs in the order received.
        topic, partition, offset: where it came from (offset -1 when not from Kafka).
        timestamp_ms: broker or producer timestamp in ms since the epoch (0 when unknown).
    """

    __slots__ = ("_value", "_key", "_headers", "_topic", "_partition", "_offset", "_timestamp_ms")

    def __init__(
        self,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        topic: str = "",
        partition: int = 0,
        offset: int = -1,
        timestamp_ms: int = 0,
    ) -> None:
        self._value = value
        self._key = key
        self._headers = headers or []
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._timestamp_ms = timestamp_ms

    @property
    def value(self) -> bytes | None:
        return self._value

    @property
    def key(self) -> bytes | None:
        return self._key

    @property
    def headers(self) -> Headers:
        return self._headers

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def partition(self) -> int:
        return self._partition

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def timestamp_ms(self) -> int:
        return self._timestamp_ms

    def header(self, name: str) -> bytes | None:
        """Return the last header called ``name`` (case-insensitive), or ``None``."""
        lname = name.lower()
        found = None
        for k, v in self.headers:
            if k.lower() == lname:
                found = v
        return found

    def __repr__(self) -> str:
        where = f"topic={self.topic!r}, partition={self.partition}, offset={self.offset}"
        return f"Message({where}, value={self.value!r:.60})"


@dataclass(slots=True)
class Rejected:
    """A message that could not be processed, with the reason for its ``dlq.error`` header.

    Attributes:
        message: the original message, bytes untouched.
        reason: human-readable cause, e.g. ``missing column 'dep_delay'``.
        stage: where it failed: ``decode`` or the operator stage name.
        rows: how many rows the message carried, when known (1 for JSON rows).
    """

    message: Message
    reason: str
    stage: str = "decode"
    rows: int = 1


@dataclass(slots=True)
class Encoded:
    """Records produced by one ``Codec.encode`` call, column-wise (no object per record).

    Attributes:
        values: payload bytes, one per record.
        keys: key per record, or ``None`` for no keys at all.
        headers: headers shared by every record (e.g. ``content-type``), or ``None``.
        record_headers: per-record headers (replace ``headers`` when given), or ``None``.
        topics: per-record topic override (request/reply ``reply-to``), or ``None``.
        partitions: per-record partition (a repartition topic), or ``None``: the producer's partitioner.
    """

    values: list[bytes]
    keys: list[bytes | None] | None = None
    headers: Headers | None = None
    record_headers: list[Headers] | None = None
    topics: list[str | None] | None = None
    partitions: list[int] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def records(self) -> list[OutRecord]:
        """The same records as :class:`OutRecord` objects (tests, small outputs)."""
        out = []
        for i, v in enumerate(self.values):
            out.append(
                OutRecord(
                    value=v,
                    key=self.keys[i] if self.keys is not None else None,
                    headers=list(self.record_headers[i] if self.record_headers is not None else self.headers or []),
                    topic=self.topics[i] if self.topics is not None else None,
                )
            )
        return out


@dataclass(slots=True)
class OutRecord:
    """One record to produce: value bytes, optional key and headers.

    ``topic`` overrides the output topic for this record (request/reply ``reply-to``).
    """

    value: bytes
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    topic: str | None = None


class KafkaMessage(Message):
    """A :class:`Message` over a confluent-kafka message that reads fields only when asked.

    The hot path reads ``value`` and ``headers`` of every message; key, offset, timestamp and
    the rest are fetched from librdkafka only for messages that are dead-lettered.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: Any) -> None:  # deliberately does not copy the fields
        self._raw = raw

    @property
    def value(self) -> bytes | None:
        v: bytes | None = self._raw.value()
        return v

    @property
    def key(self) -> bytes | None:
        k: bytes | None = self._raw.key()
        return k

    @property
    def headers(self) -> Headers:
        h: Headers = self._raw.headers() or []
        return h

    @property
    def topic(self) -> str:
        return str(self._raw.topic())

    @property
    def partition(self) -> int:
        return int(self._raw.partition())

    @property
    def offset(self) -> int:
        return int(self._raw.offset())

    @property
    def timestamp_ms(self) -> int:
        return int(self._raw.timestamp()[1])
