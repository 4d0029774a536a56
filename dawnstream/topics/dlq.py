"""Dead-letter envelope: the original key, value and headers untouched, plus ``dlq.*`` reason headers.

Convention follows Kafka Connect's ``errors.deadletterqueue.context.headers.enable`` and KIP-1034:
the payload is never rewritten, so a fixed consumer can replay it.
"""

from __future__ import annotations

from dawnstream.topics.message import OutRecord, Rejected
from dawnstream.topics.spec import dlq_topic_name

DLQ_HEADERS = ("dlq.error", "dlq.stage", "dlq.topic", "dlq.partition", "dlq.offset")
MAX_REASON_BYTES = 2000


def dead_letter(rejected: Rejected) -> tuple[str, OutRecord]:
    """Build the record for ``<topic>.dlq`` from a rejected message.

    Returns:
        ``(dlq_topic, record)``; ``record.value``/``key`` are the original bytes (an empty value
        stands for a ``None`` payload), original headers first, then ``dlq.error`` (UTF-8, at most
        2000 bytes), ``dlq.stage``, ``dlq.topic``, ``dlq.partition``, ``dlq.offset``.
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
    return dlq_topic_name(m.topic), OutRecord(value=m.value or b"", key=m.key, headers=headers)


def dlq_reason(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Read the ``dlq.*`` headers of a dead-lettered record back into a dict of strings."""
    out: dict[str, str] = {}
    for k, v in headers or []:
        if k.startswith("dlq."):
            out[k] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return out
