"""Where a request's reply may go: topics the topology declares, never wherever a request's header says.

A ``reply-to`` header taken as given let any client that can write to a request topic make the worker
write into any topic its credentials reach: another job's input, the job's own input (which it then read
back), its dead-letter topic, its changelog or ``__consumer_offsets`` (the worker retried and rebuilt its
clients a dozen times, then stopped). A reply topic is configuration: ``input.reply_topics`` lists names
or ``fnmatch`` patterns (default: the topology's output topics); any other ``reply-to`` - not a Kafka
topic name, internal, one of the job's own topics, or not declared - dead-letters its request with the
reason and is never produced to. (Spring Kafka's ``ReplyingKafkaTemplate`` likewise answers on topics the
application configures.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase

KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
"""What Kafka accepts as a topic name (``org.apache.kafka.common.internals.Topic``)."""
PATTERN = re.compile(r"^[A-Za-z0-9._*?\[\]!-]{1,249}$")


def pattern_error(entry: str) -> str | None:
    """Why ``entry`` is not a topic name or ``fnmatch`` pattern of topic characters, or None."""
    if not isinstance(entry, str) or not PATTERN.match(entry):
        return f"{entry!r} is not a topic name or pattern (letters, digits, '.', '_', '-', and * ? [ ] for patterns)"
    if entry.startswith("__"):
        return f"{entry!r} names internal topics, which never take replies"
    return None


class ReplyTopics:
    """The topics one job may answer on.

    Args:
        allowed: topic names and ``fnmatch`` patterns (``replies.*``); ``None``: any valid, non-internal
            topic other than ``forbidden`` (a codec used outside a topology).
        forbidden: the job's own topics, refused even when a pattern matches them (its input, dead-letter
            topics, changelog).

    >>> r = ReplyTopics(["svc.movies.replies.v1", "callers.*"], forbidden=["svc.movies.requests.v1"])
    >>> r.refusal("callers.team-a.replies.v1") is None
    True
    >>> r.refusal("svc.movies.requests.v1")
    "reply-to 'svc.movies.requests.v1' is one of this job's own topics: replies never go there"
    """

    def __init__(self, allowed: Iterable[str] | None, forbidden: Iterable[str] = ()) -> None:
        entries = None if allowed is None else list(allowed)
        self.names = None if entries is None else {e for e in entries if not any(c in e for c in "*?[")}
        self.patterns = [] if entries is None else [e for e in entries if any(c in e for c in "*?[")]
        self.forbidden = set(forbidden)
        self._seen: dict[str, str | None] = {}

    def refusal(self, name: str | None) -> str | None:
        """Why a request may not be answered on ``name``, or None (no ``reply-to``: nothing to check)."""
        if name is None:
            return None
        got = self._seen.get(name, "")
        if got != "":
            return got
        why = self._why(name)
        if len(self._seen) < 10_000:  # a cache of the names seen, bounded: callers may send any
            self._seen[name] = why
        return why

    def _why(self, name: str) -> str | None:
        shown = repr(name[:80] + ("..." if len(name) > 80 else ""))
        if not KAFKA_TOPIC.match(name) or name in (".", ".."):
            return (f"reply-to {shown} is not a valid topic name (at most 249 letters, digits, '.', '_', '-'): "
                    "nothing was answered")
        if name.startswith("__"):
            return f"reply-to {shown} is an internal Kafka topic: replies never go there"
        if name in self.forbidden or name.endswith(".dlq") or name.startswith("state."):
            return f"reply-to {shown} is one of this job's own topics: replies never go there"
        if self.names is None or name in self.names or any(fnmatchcase(name, p) for p in self.patterns):
            return None
        declared = sorted(self.names) + self.patterns
        return (f"reply-to {shown} is not a topic this job answers on {declared}; declare it (or a pattern) in "
                "the topology's input.reply_topics")


__all__ = ["KAFKA_TOPIC", "ReplyTopics", "pattern_error"]
