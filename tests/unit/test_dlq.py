"""Dead-letter envelopes: the original bytes and the reason; a message near the broker's size limit gets a
dead letter no larger than itself (its copy plus the headers once stopped the job on every restart)."""

from __future__ import annotations

import hashlib

import pytest

from dawnstream.topics import Message
from dawnstream.topics.dlq import DLQ_RECORD_LIMIT, dead_letter, dlq_reason
from dawnstream.topics.message import Rejected


def size(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    return len(key or b"") + len(value) + sum(len(k) + len(v) + 8 for k, v in headers)


@pytest.mark.parametrize("value_bytes", [0, 200_000, 5 << 20, DLQ_RECORD_LIMIT - 4_000])
def test_a_message_whose_dead_letter_fits_is_kept_whole(value_bytes: int) -> None:
    value = b"[" * value_bytes
    _, rec = dead_letter(Rejected(Message(value, b"k", [], "in.v1", 0, 1), "invalid JSON", stage="decode"))
    assert rec.value == value and "dlq.truncated" not in dlq_reason(rec.headers)


def test_a_small_message_is_copied_untouched_with_the_reason() -> None:
    m = Message(b'{"x": ', b"k", [("trace", b"1")], "in.v1", 3, 42)
    topic, rec = dead_letter(Rejected(m, "invalid JSON", stage="decode"))
    assert topic == "in.v1.dlq" and rec.value == m.value and rec.key == b"k" and rec.headers[0] == ("trace", b"1")
    assert dlq_reason(rec.headers) == {"dlq.error": "invalid JSON", "dlq.stage": "decode", "dlq.topic": "in.v1",
                                       "dlq.partition": "3", "dlq.offset": "42"}


@pytest.mark.parametrize("value_bytes", [(16 << 20) - 300, DLQ_RECORD_LIMIT - 20])
def test_a_message_near_the_limit_gets_a_dead_letter_no_larger_than_itself(value_bytes: int) -> None:
    value = bytes(range(256)) * (value_bytes // 256) + b"x" * (value_bytes % 256)
    m = Message(value, b"key", [("h", b"v")], "in.v1", 0, 7)
    _, rec = dead_letter(Rejected(m, "r" * 5000, stage="decode"))
    assert size(rec.key, rec.value, rec.headers) <= min(size(m.key, value, m.headers), DLQ_RECORD_LIMIT)
    why = dlq_reason(rec.headers)
    assert value.startswith(rec.value) and len(rec.value) > min(value_bytes, DLQ_RECORD_LIMIT) - 8192
    assert why["dlq.value.bytes"] == str(value_bytes) and why["dlq.value.sha256"] == hashlib.sha256(value).hexdigest()
    assert "dlq.offset" in why["dlq.truncated"] and why["dlq.offset"] == "7"
