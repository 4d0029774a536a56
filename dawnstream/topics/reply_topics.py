"""Where a request's reply may go: topics the topology declares, never wherever a request's header says.

A ``reply-to`` header taken as given let any client that can write to a request topic make the worker
write into any topic its credentials reach: another job's input, the job's own input (which it then read
back), its dead-letter topic, its changelog or ``__consumer_offsets`` (the worker retried and rebuilt its
clients a dozen times, then stopped). A reply topic is configuration: ``input.reply_topics`` lists names
or ``fnmatch`` patterns (default: the topology's output topics); any other ``reply-to`` - not a Kafka
topic name, internal, one of the job's own topics, or not declared - dead-letters its request with the
reason and is never produced to. (Spring Kafka's ``ReplyingKafkaTemplate`` likewise answers on topics the
application configures.)

A declared reply topic can still be one the broker will not take (never created, deleted, or the
worker's principal may not write it). Producing there stalled the worker's commits, then failed the
batch again at every re-read. So the runner gives :class:`ReplyTopics` a ``broker_check`` (a metadata
lookup, remembered for :data:`OK_TTL_S`), and reports a refused delivery back (:meth:`ReplyTopics.refused`):
for :data:`REFUSED_TTL_S` the requests naming that topic are dead-lettered with the broker's reason,
and the re-read batch goes through. The job's own output topics are not subject to either: a broker
refusing those is the job's problem, and the worker fails saying so.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase

KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
"""What Kafka accepts as a topic name (``org.apache.kafka.common.internals.Topic``)."""
PATTERN = re.compile(r"^[A-Za-z0-9._*?\[\]!-]{1,249}$")
OK_TTL_S = 60.0
"""Seconds a reply topic the broker showed stays trusted without asking again."""
REFUSED_TTL_S = 10.0
"""Seconds a reply topic the broker refused stays refused (then it is asked again: it may be created)."""
MAX_REMEMBERED = 10_000
"""Reply topic names remembered (callers may send any: the caches are bounded)."""
BrokerCheck = Callable[[str], "str | None"]
"""Asks the broker about a reply topic: why it will not take replies there, or None."""


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

    def __init__(self, allowed: Iterable[str] | None, forbidden: Iterable[str] = (),
                 outputs: Iterable[str] = ()) -> None:
        entries = None if allowed is None else list(allowed)
        self.names = None if entries is None else {e for e in entries if not any(c in e for c in "*?[")}
        self.patterns = [] if entries is None else [e for e in entries if any(c in e for c in "*?[")]
        self.forbidden = set(forbidden)
        self.outputs = set(outputs)
        self.broker_check: BrokerCheck | None = None
        """Set by the runner: asks the broker whether a reply topic exists and may be written."""
        self.ok_ttl_s = OK_TTL_S
        """How long a broker's yes stands (s); 0: for the current batch only (see :meth:`new_batch`)."""
        self._seen: dict[str, str | None] = {}
        # name -> (valid until in monotonic s, batch it was asked in, refusal)
        self._broker: dict[str, tuple[float, int, str | None]] = {}
        self._batch = 0

    def refusal(self, name: str | None) -> str | None:
        """Why a request may not be answered on ``name``, or None (no ``reply-to``: nothing to check).

        The declaration rules first; then, for a topic other than the job's outputs, what the broker
        said of it (``broker_check``, or a refused delivery), remembered for a few seconds.
        """
        if name is None:
            return None
        got = self._seen.get(name, "")
        if got == "":
            got = self._why(name)
            if len(self._seen) < MAX_REMEMBERED:
                self._seen[name] = got
        if got is not None or name in self.outputs:
            return got
        now = time.monotonic()
        known = self._broker.get(name)
        same_batch = known is not None and known[2] is None and not self.ok_ttl_s and known[1] == self._batch
        if known is not None and (known[0] > now or same_batch):
            return known[2]
        if self.broker_check is None:
            return known[2] if known is not None else None
        why = self.broker_check(name)
        self._remember(name, why, now)
        return why

    def new_batch(self) -> None:
        """A new micro-batch begins: with ``ok_ttl_s`` 0 (exactly-once, where a reply topic deleted after
        its check stalls the whole transaction until it times out) every reply topic is asked again,
        once per batch."""
        self._batch += 1

    def refused(self, topic: str, reason: str) -> None:
        """The broker refused a record produced to ``topic`` (a delivery report): requests that name it
        as their reply-to are dead-lettered for :data:`REFUSED_TTL_S`. Ignored for any topic that is
        not a reply topic this job may use other than its outputs."""
        if topic in self.outputs or self._seen.get(topic, "") is not None:
            return
        self._remember(topic, f"reply-to {topic!r} was refused by the broker when the reply was produced "
                              f"({reason}): nothing was answered; the caller should name a topic that exists "
                              "and this job may write", time.monotonic())

    def recheck(self) -> None:
        """Forget what the broker said of every reply topic (a transaction aborted, records were refused):
        the re-read batch asks again, so a topic deleted since is refused before anything is produced."""
        self._broker = {k: v for k, v in self._broker.items() if v[2] is not None}

    def _remember(self, name: str, why: str | None, now: float) -> None:
        if len(self._broker) >= MAX_REMEMBERED:
            self._broker = {k: v for k, v in self._broker.items() if v[0] > now}
            if len(self._broker) >= MAX_REMEMBERED:
                self._broker.clear()
        self._broker[name] = (now + (self.ok_ttl_s if why is None else REFUSED_TTL_S), self._batch, why)

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


__all__ = ["KAFKA_TOPIC", "OK_TTL_S", "REFUSED_TTL_S", "BrokerCheck", "ReplyTopics", "pattern_error"]
