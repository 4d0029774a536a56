"""How the Kafka runner asks for its next micro-batch: ``batch.max_wait_ms`` > 0 waits for the batch to
fill (throughput jobs); 0 takes the first message and whatever is queued behind it, never waiting for
more (request/reply)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from dawnstream.errors import ConfigError
from dawnstream.streams import runner
from dawnstream.streams.config import parse_topology


class QueueConsumer:
    """librdkafka's consume() over a local queue: up to ``num_messages``; an empty queue waits ``timeout``."""

    def __init__(self, queued: list[int]) -> None:
        self.queued, self.calls = list(queued), []

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.calls.append((num_messages, timeout))
        out, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return out


def fake_runner(max_messages: int, queued: list[int], pending: bool = False) -> Any:
    batch = SimpleNamespace(max_messages=max_messages)
    return SimpleNamespace(topology=SimpleNamespace(batch=batch), recovery=SimpleNamespace(pending=pending),
                           consumer=QueueConsumer(queued))


@pytest.mark.parametrize(("max_messages", "queued", "expected", "calls"), [
    (100, [1, 2, 3], [1, 2, 3], [(1, runner.IDLE_POLL_S), (99, 0)]),  # the first, then what is queued
    (2, [1, 2, 3], [1, 2], [(1, runner.IDLE_POLL_S), (1, 0)]),
    (1, [1, 2], [1], [(1, runner.IDLE_POLL_S)]),  # batching off: one message, no second call
    (100, [], [], [(1, runner.IDLE_POLL_S)]),  # idle: one bounded wait, so the loop still ticks
])
def test_no_wait_takes_the_first_message_and_what_is_queued(max_messages: int, queued: list[int],
                                                            expected: list[int], calls: list[tuple]) -> None:
    r = fake_runner(max_messages, queued)
    assert runner.KafkaRunner._consume(r, 0.0) == expected
    assert r.consumer.calls == calls


def test_a_wait_fills_the_batch_in_one_call_and_recovery_never_waits() -> None:
    r = fake_runner(10, [1, 2, 3])
    assert runner.KafkaRunner._consume(r, 0.1) == [1, 2, 3] and r.consumer.calls == [(10, 0.1)]
    r = fake_runner(10, [], pending=True)  # recovering: the loop must get back to the replay at once
    assert runner.KafkaRunner._consume(r, 0.0) == [] and r.consumer.calls == [(10, 0.0)]


def test_max_wait_ms_accepts_zero_and_names_the_key_of_a_negative_one() -> None:
    doc = {"name": "t", "input": {"topic": "test.runner.rows.v1"}, "stages": [{"op": "select", "columns": ["x"]}],
           "outputs": [{"topic": "test.runner.out.v1"}], "batch": {"max_wait_ms": 0}}
    assert parse_topology(doc).batch.max_wait_ms == 0
    with pytest.raises(ConfigError, match="batch.max_wait_ms"):
        parse_topology({**doc, "batch": {"max_wait_ms": -1}})
