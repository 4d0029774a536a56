"""Reply fence: replies to requests answered before a take-over are dropped, and only inside the replay range."""

from __future__ import annotations

import pytest

from dawnstream.streams import reply_fence
from dawnstream.streams.reply_fence import ReplyFence
from dawnstream.topics.message import Encoded, Message


def request(offset: int) -> Message:
    return Message(b"{}", None, [], "requests", 0, offset, timestamp_ms=1_000_000 + offset)


def replies(cids: list[str], to: str = "replies") -> Encoded:
    return Encoded(values=[c.encode() for c in cids], keys=[None] * len(cids),
                   record_headers=[[("content-type", b"application/json"), ("correlation-id", c.encode())]
                                   for c in cids], topics=[to] * len(cids))


@pytest.fixture
def scans(monkeypatch) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []

    def scan(base, topic, since_ms, timeout_s=10.0):  # what the dead worker left on the reply topic
        calls.append((topic, since_ms))
        return {"a", "b"} if topic == "replies" else set()

    monkeypatch.setattr(reply_fence, "scan_correlation_ids", scan)
    return calls


def test_replies_already_on_the_topic_are_dropped_in_the_replay_range_only(scans) -> None:
    fence = ReplyFence({}, "requests")
    fence.replay_end[0] = 3  # offsets 0..2 may have been answered by the worker that died
    out = [("replies", replies(["a", "x", "b"]))]
    fence.filter(0, [request(0), request(1), request(2)], out)
    assert out[0][1].values == [b"x"] and out[0][1].topics == ["replies"] and fence.dropped == 2
    assert scans == [("replies", 1_000_000 - reply_fence.CLOCK_SKEW_MS)]
    assert 0 not in fence.replay_end  # the batch reached the end of the range: the fence is off
    later = [("replies", replies(["a"]))]
    fence.filter(0, [request(3)], later)
    assert later[0][1].values == [b"a"] and len(scans) == 1  # past the range: no scan, nothing dropped


def test_each_reply_topic_is_scanned_once_and_other_partitions_pass(scans) -> None:
    fence = ReplyFence({}, "requests")
    fence.replay_end[0] = 10
    for off in (0, 1):
        out = [("replies", replies(["a", f"new{off}"])), ("other", replies(["b"], to="elsewhere"))]
        fence.filter(0, [request(off)], out)
        assert [e.values for _, e in out][0] == [f"new{off}".encode()] and out[1][1].values == [b"b"]
    assert sorted(t for t, _ in scans) == ["elsewhere", "replies"]
    untouched = [("replies", replies(["a"]))]
    fence.filter(1, [request(0)], untouched)  # partition 1 was not taken over
    assert untouched[0][1].values == [b"a"]


def test_exactly_once_jobs_fence_nothing(scans) -> None:
    fence = ReplyFence({}, "requests", enabled=False)
    fence.recovered(None, 0, 0)  # type: ignore[arg-type]  # never asks the consumer
    out = [("replies", replies(["a"]))]
    fence.filter(0, [request(0)], out)
    assert out[0][1].values == [b"a"] and scans == []


class Partition:
    """The two things the fence asks the group consumer about a partition it takes over."""

    def __init__(self, low: int, end: int, committed: int) -> None:
        self.low, self.end, self.committed_offset = low, end, committed

    def get_watermark_offsets(self, tp, timeout=None):
        return self.low, self.end

    def committed(self, tps, timeout=None):
        return [type("TP", (), {"offset": self.committed_offset})()]


@pytest.mark.parametrize(("committed", "start", "fenced_to"), [
    (5, "earliest", 9),      # resumes at its commit: 5..8 may have been answered
    (9, "earliest", None),   # committed up to the end: nothing to replay
    (-1001, "earliest", 9),  # never committed (the worker died before its first commit): all of it is re-read
    (-1001, "latest", None),  # never committed, starting at the end: nothing is re-read
])
def test_the_replay_range_starts_where_the_consumer_resumes(committed, start, fenced_to) -> None:
    fence = ReplyFence({}, "requests", start=start)
    fence.recovered(Partition(low=2, end=9, committed=committed), 0, None)  # type: ignore[arg-type]
    assert fence.replay_end.get(0) == fenced_to


def test_a_partition_never_committed_has_its_first_requests_fenced(scans) -> None:
    fence = ReplyFence({}, "requests")
    fence.recovered(Partition(low=0, end=3, committed=-1001), 0, None)  # type: ignore[arg-type]
    out = [("replies", replies(["a", "b", "c"]))]
    fence.filter(0, [request(0), request(1), request(2)], out)
    assert out[0][1].values == [b"c"] and fence.dropped == 2
