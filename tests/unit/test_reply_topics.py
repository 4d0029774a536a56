"""A request's ``reply-to`` is checked against the topics the topology declares before anything is done
with it: an invalid, internal, own or undeclared topic dead-letters the request and is never produced to."""

from __future__ import annotations

import pytest

from dawnstream.errors import ConfigError
from dawnstream.streams.config import parse_topology
from dawnstream.streams.processor import BatchProcessor
from dawnstream.topics import Message
from dawnstream.topics.dlq import dlq_reason

IN, OUT = "svc.movies.requests.v1", "svc.movies.replies.v1"


def processor(**inp: object) -> BatchProcessor:
    return BatchProcessor(parse_topology({
        "name": "replies", "input": {"topic": IN, "codec": "requests", **inp}, "stages": [],
        "outputs": [{"topic": OUT, "codec": "requests"}]}), keep_batches=True)


def request(reply_to: str | bytes | None, offset: int) -> Message:
    headers = [("correlation-id", f"c{offset}".encode())]
    if reply_to is not None:
        headers.append(("reply-to", reply_to.encode() if isinstance(reply_to, str) else reply_to))
    return Message(b'{"user_id": 1, "item_id": 2}', b"1", headers, IN, 0, offset)


@pytest.mark.parametrize("reply_to,says", [
    ("bad topic!", "not a valid topic name"),
    ("x" * 250, "not a valid topic name"),
    (b"\xff\xfe", "not a valid topic name"),
    ("__consumer_offsets", "internal Kafka topic"),
    (IN, "one of this job's own topics"),
    (IN + ".dlq", "one of this job's own topics"),
    ("state.replies.changelog.v1", "one of this job's own topics"),
    ("h.victim.rows.v1", "input.reply_topics"),
])
def test_a_reply_to_that_is_not_declared_dead_letters_the_request_and_produces_nothing(reply_to, says) -> None:
    bp = processor()
    res = bp.process(0, [request(OUT, 0), request(reply_to, 1), request(None, 2)])
    assert res.rows_dead == 1 and says in dlq_reason(res.dead_letters[0][1].headers)["dlq.error"]
    assert dlq_reason(res.dead_letters[0][1].headers)["dlq.offset"] == "1"
    topics = [t for _, enc in res.outputs for t in (enc.topics or [])]
    assert topics == [OUT, None]  # the declared reply topic, and the output topic for the one without reply-to


def test_declared_names_and_patterns_widen_where_replies_may_go_but_never_to_the_jobs_own_topics() -> None:
    bp = processor(reply_topics=["callers.*", "svc.*"])
    res = bp.process(0, [request("callers.team-a.replies.v1", 0), request(OUT, 1), request(IN, 2)])
    assert res.rows_dead == 1 and "own topics" in dlq_reason(res.dead_letters[0][1].headers)["dlq.error"]
    assert [t for _, enc in res.outputs for t in (enc.topics or [])] == ["callers.team-a.replies.v1", OUT]


@pytest.mark.parametrize("entry", ["bad topic", "__consumer_offsets", ""])
def test_a_bad_reply_topics_entry_fails_at_load_naming_the_key(entry: str) -> None:
    with pytest.raises(ConfigError) as e:
        processor(reply_topics=[OUT, entry])
    assert e.value.path.startswith("input.reply_topics")


def test_the_broker_is_asked_once_per_reply_topic_and_a_refused_delivery_is_remembered(monkeypatch) -> None:
    from dawnstream.topics import reply_topics as rt

    now = [1000.0]
    monkeypatch.setattr(rt.time, "monotonic", lambda: now[0])
    asked: list[str] = []
    r = rt.ReplyTopics([OUT, "callers.*"], outputs=[OUT])

    def check(name: str) -> str | None:
        asked.append(name)
        return None if name != "callers.missing.v1" else "does not exist"

    r.broker_check = check
    assert r.refusal("callers.a.v1") is None and r.refusal("callers.a.v1") is None
    assert r.refusal("callers.missing.v1") == "does not exist"
    assert r.refusal(OUT) is None and r.refusal("bad topic!") is not None  # never asked about
    assert asked == ["callers.a.v1", "callers.missing.v1"]
    r.refused("callers.a.v1", "Local: Unknown partition")  # a delivery report: refused from now on
    assert "refused by the broker" in r.refusal("callers.a.v1") and "Unknown partition" in r.refusal("callers.a.v1")
    r.refused(OUT, "x")  # the job's own output: its failure is the job's, not a caller's
    r.refused("elsewhere.x.v1", "x")  # not a reply topic it may use: nothing to remember
    assert r.refusal(OUT) is None and "not a topic this job answers on" in r.refusal("elsewhere.x.v1")
    now[0] += rt.REFUSED_TTL_S + 1  # asked again: the topic may have been created meanwhile
    assert r.refusal("callers.a.v1") is None and r.refusal("callers.missing.v1") == "does not exist"
    assert asked[2:] == ["callers.a.v1", "callers.missing.v1"]
    now[0] += rt.REFUSED_TTL_S + 1
    r.refusal("callers.a.v1")
    assert len(asked) == 4  # a topic the broker showed is trusted for OK_TTL_S
    now[0] += rt.OK_TTL_S
    r.refusal("callers.a.v1")
    assert len(asked) == 5
    r.ok_ttl_s = 0.0  # exactly-once: a yes stands for the current batch only
    r.refusal("callers.b.v1")
    r.refusal("callers.b.v1")
    assert asked[5:] == ["callers.b.v1"]
    r.new_batch()
    r.refusal("callers.b.v1")
    assert asked[5:] == ["callers.b.v1"] * 2
