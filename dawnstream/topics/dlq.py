"""Dead-letter envelope: the original key, value and headers untouched, plus ``dlq.*`` reason headers.

Convention follows Kafka Connect's ``errors.deadletterqueue.context.headers.enable`` and KIP-1034:
the payload is not rewritten, so a fixed consumer can replay it; the one exception is a message so large
that its copy plus the ``dlq.*`` headers would pass :data:`DLQ_RECORD_LIMIT` (near the broker's 16 MiB):
its value is cut, the headers say so, and the whole message stays at its topic, partition and offset.
"""

from __future__ import annotations

import hashlib

from dawnstream.topics.message import OutRecord, Rejected
from dawnstream.topics.spec import dlq_topic_name

DLQ_HEADERS = ("dlq.error", "dlq.stage", "dlq.topic", "dlq.partition", "dlq.offset")
MAX_REASON_BYTES = 2000
DLQ_RECORD_LIMIT = (16 << 20) - (64 << 10)
"""The largest dead letter produced whole (bytes of key, value and headers): what the workers' producer
sends (``message.max.bytes`` 16 MiB) and the dead-letter topics the runner creates accept, less room
for the record's framing. A message whose copy plus the ``dlq.*`` headers would pass it (one near the
broker's 16 MiB limit once stopped the job on every restart) keeps the head of its value, cut to fit
both this limit and the message's own size."""
_MARGIN = 1024


def _size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") + 8 for k, v in headers)


def dead_letter(rejected: Rejected, limit: int = DLQ_RECORD_LIMIT) -> tuple[str, OutRecord]:
    """Build the record for ``<topic>.dlq`` from a rejected message.

    Returns:
        ``(dlq_topic, record)``; ``record.value``/``key`` are the original bytes (an empty value
        stands for a ``None`` payload), original headers first, then ``dlq.error`` (UTF-8, at most
        2000 bytes), ``dlq.stage``, ``dlq.topic``, ``dlq.partition``, ``dlq.offset``. A dead letter that would
        pass ``limit`` bytes (:data:`DLQ_RECORD_LIMIT`) keeps the head of the value, and
        ``dlq.truncated``, ``dlq.value.bytes`` and ``dlq.value.sha256`` (of the whole value) say so.
    """
    m = rejected.message
    reason = rejected.reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]
    headers = list(m.headers) + [
        ("dlq.error", reason),
        ("dlq.stage", rejected.stage.encode()),
        ("dlq.topic", m.topic.encode()),
        ("dlq.partition", str(m.partition).encode()),
        ("dlq.offset", str(m.offset).encode()),
    ]
    value = m.value or b""
    if _size(m.key, value, headers) > limit:
        original = _size(m.key, value, list(m.headers))
        extra = [("dlq.truncated", b"0" * 20), ("dlq.value.bytes", b"0" * 20), ("dlq.value.sha256", b"0" * 64)]
        room = min(limit, original) - (_size(m.key, b"", headers + extra) + _MARGIN)
        if room < len(value):
            headers += [("dlq.truncated", f"the value's first {max(room, 0)} of {len(value)} bytes are kept; the "
                                          "whole message is at dlq.topic/dlq.partition/dlq.offset".encode()),
                        ("dlq.value.bytes", str(len(value)).encode()),
                        ("dlq.value.sha256", hashlib.sha256(value).hexdigest().encode())]
            value = value[:max(room, 0)]
    return dlq_topic_name(m.topic), OutRecord(value=value, key=m.key, headers=headers)


def dlq_reason(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Read the ``dlq.*`` headers of a dead-lettered record back into a dict of strings."""
    out: dict[str, str] = {}
    for k, v in headers or []:
        if k.startswith("dlq."):
            out[k] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return out
