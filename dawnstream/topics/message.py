"""Transport-neutral message records shared by codecs, runners and the dead-letter envelope."""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[str, bytes]]


@dataclass(slots=True)
class Message:
    """One consumed Kafka message, detached from the client library.

    Attributes:
        value: payload bytes (``None`` for a tombstone).
        key: key bytes or ``None``.
        headers: list of ``(name, bytes)`` pairs in the order received.
        topic, partition, offset: where it came from (offset -1 when not from Kafka).
        timestamp_ms: broker or producer timestamp in ms since the epoch (0 when unknown).
    """

    value: bytes | None
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    topic: str = ""
    partition: int = 0
    offset: int = -1
    timestamp_ms: int = 0

    def header(self, name: str) -> bytes | None:
        """Return the last header called ``name`` (case-insensitive), or ``None``."""
        lname = name.lower()
        found = None
        for k, v in self.headers:
            if k.lower() == lname:
                found = v
        return found


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
class OutRecord:
    """One record to produce: value bytes, optional key and headers.

    ``topic`` overrides the output topic for this record (request/reply ``reply-to``).
    """

    value: bytes
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    topic: str | None = None
