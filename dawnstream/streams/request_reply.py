"""Request/reply over Kafka: a client that sends prediction requests and feedback and collects replies.

The shape of Spring Kafka's ``ReplyingKafkaTemplate`` and Faust's ``agent.ask``: each request carries
a ``correlation-id`` and a ``reply-to`` topic; the serving workers answer on that topic with the same
``correlation-id`` (:mod:`dawnstream.topics.codecs.requests`). Requests are keyed by user, with Java's
partitioner, so any client's requests for a user reach the partition holding that user's state.

A reply consumer that joins a group can miss replies sent before its partitions are assigned (the
complaint about ``ReplyingKafkaTemplate``). This client takes no group: it reads the reply topic's
end offsets and ``assign()``s them explicitly before the first request leaves, so every reply produced
after that is seen.

Example (needs a broker and a worker running ``topologies/movie-ratings.yaml``)::

    with PredictClient("127.0.0.1:9092", "serving.movielens.events.v1", "serving.movielens.replies.v1") as c:
        c.request({"user_id": 196, "item_id": 242})["prediction"]
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from dawnstream.errors import DawnstreamError
from dawnstream.streams.kafka_clients import PRODUCER_ONLY, base_settings
from dawnstream.topics.codecs.requests import CORRELATION_ID, REPLY_TO


class ReplyTimeout(DawnstreamError):
    """No reply arrived in time (is a worker running the topology? `dawnstream run <topology>`)."""


class PredictClient:
    """Sends requests/feedback to ``requests_topic`` and reads replies from ``reply_topic``.

    Args:
        bootstrap: Kafka bootstrap address (``$DAWNSTREAM_KAFKA_BOOTSTRAP`` overrides).
        requests_topic: the serving topology's input topic.
        reply_topic: where replies should go (the topology's output topic, or one of the caller's own).
        key_field: request field used as the message key (the topology's ``key_field``).
        settings: extra librdkafka settings for both clients (they win over the defaults below).

    The producer waits up to 2 ms (``linger.ms``) to put requests sent together into one produce request:
    against sending each at once, that halves the broker's CPU per request at a few thousand requests/s
    (``benchmarks/serving.py``) for at most 2 ms of latency. The reply reader's fetches wait up to 100 ms at the
    broker (``fetch.wait.max.ms``) when there is nothing to read: a reply ends the wait at once, and a shorter
    wait only has the broker answer empty fetches (5 ms: 15% of a core while idle).

    Replies are collected by a background thread into :attr:`replies` (``correlation_id -> reply``,
    the first reply wins: a repeated reply after a worker restart is the same answer; :attr:`duplicates`
    counts repeats and :attr:`conflicts` those whose answer differed) with the monotonic time each
    arrived in :attr:`arrived`.
    """

    def __init__(self, bootstrap: str | None, requests_topic: str, reply_topic: str, key_field: str = "user_id",
                 settings: dict[str, str] | None = None) -> None:
        base = base_settings(bootstrap, settings)
        self.bootstrap = base["bootstrap.servers"]
        pbase = {k: v for k, v in base.items() if not k.startswith("fetch.")}
        cbase = {k: v for k, v in base.items() if k not in PRODUCER_ONLY}
        self.requests_topic, self.reply_topic, self.key_field = requests_topic, reply_topic, key_field
        own = settings or {}
        self.producer = Producer({**pbase, "linger.ms": 2, "enable.idempotence": True, "acks": "all",
                                  "partitioner": "murmur2_random", "socket.nagle.disable": True,
                                  **{k: v for k, v in own.items() if k in PRODUCER_ONLY}})
        self.consumer = Consumer({**cbase, "group.id": f"dawnstream.reply.{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 100,
                                  "socket.nagle.disable": True,
                                  **{k: v for k, v in own.items() if k.startswith("fetch.")}})
        self.replies: dict[str, dict[str, Any]] = {}
        self.arrived: dict[str, float] = {}
        self.duplicates = 0
        self.conflicts = 0  # repeated replies whose answer differs from the first (idempotence broken)
        self.sent: dict[str, float] = {}
        # Correlation ids: 64 random bits per client, then a counter (a uuid4 per request cost 2.5 µs).
        self._id_prefix, self._ids = uuid.uuid4().hex[:16] + "-", itertools.count()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._assign_at_end()
        self._reader = threading.Thread(target=self._read, name="reply-reader", daemon=True)
        self._reader.start()

    def _assign_at_end(self, wait_s: float = 30.0) -> None:
        deadline = time.monotonic() + wait_s
        while True:  # a worker starting next to us may be creating it
            try:
                md = self.consumer.list_topics(self.reply_topic, timeout=30).topics.get(self.reply_topic)
            except KafkaException as e:
                raise DawnstreamError(f"cannot reach Kafka at {self.bootstrap}: {e.args[0].str()}; is the broker "
                                      f"running (`dawnstream broker start`)?") from None
            if md is not None and md.error is None and md.partitions:
                break
            if time.monotonic() > deadline:
                raise DawnstreamError(f"reply topic {self.reply_topic!r} does not exist after {wait_s:.0f} s; start "
                                      f"the serving topology first (`dawnstream run <topology>` creates it)")
            time.sleep(0.5)
        tps = []
        deadline = time.monotonic() + 30
        for p in sorted(md.partitions):
            while True:
                try:
                    _, high = self.consumer.get_watermark_offsets(TopicPartition(self.reply_topic, p), timeout=10)
                    break
                except KafkaException as e:  # a topic created a moment ago may still be electing its leaders
                    if not e.args[0].retriable() and e.args[0].code() != KafkaError.NOT_LEADER_FOR_PARTITION \
                            or time.monotonic() > deadline:
                        raise DawnstreamError(f"cannot read the end of {self.reply_topic}: {e.args[0].str()}") from None
                    time.sleep(0.2)
            tps.append(TopicPartition(self.reply_topic, p, high))
        self.consumer.assign(tps)  # explicit offsets: ready now, nothing produced from here on is missed

    def _read(self) -> None:
        while not self._stop.is_set():
            # poll() returns as soon as one reply is there; consume(n, t) would wait for n or for t.
            first = self.consumer.poll(0.05)
            if first is None:
                continue
            got: list[tuple[str, dict[str, Any], float]] = []
            for m in [first, *self.consumer.consume(1000, timeout=0)]:
                if m.error() is not None:
                    continue
                now = time.monotonic()
                try:
                    body: Any = orjson.loads(m.value() or b"null")
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(body, dict):
                    continue
                cid = dict(m.headers() or []).get(CORRELATION_ID)
                key = cid.decode() if isinstance(cid, bytes) else body.get("correlation_id")
                if key is not None:
                    got.append((key, body, now))
            if got:
                self._keep(got)

    def _keep(self, got: list[tuple[str, dict[str, Any], float]]) -> None:
        # One lock per fetched batch, not per reply: the sending thread waits on it less.
        with self._cond:
            for key, body, now in got:
                if key in self.replies:
                    self.duplicates += 1
                    prior = self.replies[key]
                    if (prior.get("kind"), prior.get("prediction")) != (body.get("kind"), body.get("prediction")):
                        self.conflicts += 1
                    continue
                body["correlation_id"] = key
                self.replies[key] = body
                self.arrived[key] = now
            self._cond.notify_all()

    # -- sending ----------------------------------------------------------------------------------
    def send(self, row: dict[str, Any], correlation_id: str | None = None, reply: bool = True,
             topic: str | None = None) -> str:
        """Produce one request (or feedback, when ``row`` has the label); returns its correlation id
        (``correlation_id``, else this client's 16 random hex digits, ``-`` and a counter in hex).
        ``topic``: where to (default the requests topic; a ``predict`` topology's ``input.feedback_topic``
        for feedback sent later under its request's ``correlation_id``)."""
        cid = correlation_id or f"{self._id_prefix}{next(self._ids):x}"
        headers: list[tuple[str, str | bytes | None]] = [(CORRELATION_ID, cid.encode())]
        if reply:
            headers.append((REPLY_TO, self.reply_topic.encode()))
        key = row.get(self.key_field)
        while True:
            try:
                self.producer.produce(topic or self.requests_topic, orjson.dumps(row),
                                      None if key is None else str(key).encode(), headers=headers)
                break
            except BufferError:
                self.producer.poll(0.01)
        self.sent[cid] = time.monotonic()
        self.producer.poll(0)
        return cid

    def feedback(self, user: int, item: int, rating: float, ack: bool = False, **fields: Any) -> str:
        """Send one piece of feedback (``ack``: ask for a reply carrying the prediction made before it)."""
        return self.send({self.key_field: user, "item_id": item, "rating": rating, **fields}, reply=ack)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every sent message is acknowledged by the broker."""
        self.producer.flush(timeout_s)

    # -- receiving --------------------------------------------------------------------------------
    def wait(self, ids: Iterable[str], timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
        """Replies for ``ids`` (those that arrived within ``timeout_s``)."""
        want = list(ids)
        deadline = time.monotonic() + timeout_s
        self.producer.flush(timeout_s)
        with self._cond:
            while any(i not in self.replies for i in want):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
            return {i: self.replies[i] for i in want if i in self.replies}

    def request(self, row: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        """Send one request and wait for its reply.

        Raises:
            ReplyTimeout: no reply within ``timeout_s``.
        """
        cid = self.send(row)
        got = self.wait([cid], timeout_s)
        self.forget([cid])
        if cid not in got:
            raise ReplyTimeout(f"no reply to {cid} on {self.reply_topic} within {timeout_s} s: is a worker running "
                               f"the topology that reads {self.requests_topic}? (`dawnstream run <topology>`)")
        return got[cid]

    def forget(self, ids: Iterable[str]) -> None:
        """Drop what is kept of ``ids`` (reply, send and arrival times): a client that lives long would
        otherwise keep every reply it ever got. A reply that arrives later is kept again."""
        with self._cond:
            for i in ids:
                self.replies.pop(i, None)
                self.arrived.pop(i, None)
                self.sent.pop(i, None)

    def close(self) -> None:
        """Stop reading replies, flush and close both clients."""
        self._stop.set()
        self._reader.join(timeout=5)
        self.producer.flush(10)
        self.consumer.close()

    def __enter__(self) -> PredictClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
