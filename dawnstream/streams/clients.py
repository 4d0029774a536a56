"""A worker's librdkafka clients: one consumer in the job's group and one producer (transactional
under exactly-once), and what to do when one of them hangs or fails for good.

librdkafka can block past its own timeouts after a long broker outage (seen in
``send_offsets_to_transaction``), so transaction calls go through :func:`call_bounded`; a client
that hung is abandoned and both are replaced (a new producer with the same ``transactional.id``
fences the stuck one and aborts its open transaction). Partitions then come back through a fresh
group assignment and their state through recovery (:mod:`dawnstream.streams.recovery`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from dawnstream.errors import DawnstreamError
from dawnstream.logs import event, get_logger
from dawnstream.streams.config import Topology
from dawnstream.streams.kafka_clients import consumer_settings, producer_settings
from dawnstream.streams.kafka_errors import MISSING_GRACE_S, TopicMissing, explain, heals, is_missing

log = get_logger(__name__)


class ClientStuck(DawnstreamError):
    """A librdkafka call did not return within its deadline (seen after broker outages longer than the
    session timeout: ``send_offsets_to_transaction`` can block past its own timeout)."""


def call_bounded(what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
    """Run ``fn`` in a daemon thread and wait at most ``timeout_s`` seconds.

    confluent-kafka releases the GIL inside librdkafka calls, so the waiting thread stays responsive.

    Returns:
        what ``fn`` returned.
    Raises:
        ClientStuck: ``fn`` is still running after ``timeout_s``; it is left running in the background
            and the caller must stop using the client it was calling.
        Exception: whatever ``fn`` raised.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    th = threading.Thread(target=target, name=f"bounded-{what}", daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        raise ClientStuck(f"{what} did not return within {timeout_s:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


class DeliveryErrors(list):
    """The records the broker refused since the last flush, as ``"topic: reason"`` strings; each refusal
    is also told to ``listeners`` (``f(topic, reason)``: e.g. a reply topic to stop answering on)."""

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[Callable[[str, str], None]] = []

    def add(self, topic: str, err: KafkaError) -> None:
        """Record one refused record."""
        self.append(f"{topic}: {err.str()}")
        for listener in self.listeners:
            listener(topic, err.str())


class WorkerClients:
    """The consumer and producer of one worker, rebuilt whole when needed.

    Args:
        topology: the job (group id, start position, guarantee).
        worker: worker index: client ids, and the ``transactional.id``, stable per (topology, host,
            worker index) so a restarted worker fences its crashed predecessor.
        base: common client settings (:func:`~dawnstream.streams.kafka_clients.base_settings`).
        on_reset: called when both clients were replaced: every partition's state must be dropped
            (the new consumer gets its partitions through a fresh assignment).
    """

    def __init__(self, topology: Topology, worker: int, base: dict[str, Any], on_reset: Callable[[], None]) -> None:
        self.topology = topology
        self.eos = topology.guarantee == "exactly_once"
        self.on_reset = on_reset
        client_id = f"dawnstream-{topology.name}-{worker}"
        # (Static group membership would also skip a rebalance on restart, but librdkafka gets fenced by
        # its own retried join after a broker outage, so membership stays dynamic; a dead worker's
        # partitions move after 6 s.)
        member = f"{topology.group_id}.{socket.gethostname()}.{worker}"
        self.fatal: str | None = None  # set by the consumer's error callback: rebuild before the next consume
        self.delivery_errors = DeliveryErrors()  # records the broker refused since the last flush
        self.producer_fatal: KafkaError | None = None  # the producer's fatal error (why later calls fail)
        self._missing_since: float | None = None
        self._consumer_conf = consumer_settings(base, topology.group_id, topology.input.start,
                                                **{"client.id": client_id, "error_cb": self._on_error})
        # At-least-once in a topology that never waits for a batch, the checkpoint counts every record's
        # delivery report to commit without blocking (:mod:`dawnstream.streams.checkpoint`); otherwise only
        # refusals are reported.
        self.count_deliveries = not self.eos and topology.batch.max_wait_ms == 0
        extra: dict[str, Any] = {"client.id": client_id, "on_delivery": self._on_delivery,
                                 "error_cb": self._on_producer_error,
                                 "delivery.report.only.error": not self.count_deliveries}
        if self.eos:
            extra.update({"transactional.id": member, "transaction.timeout.ms": 60_000})
        self._producer_conf = producer_settings(base, **extra)
        # Clients that hung inside librdkafka: kept referenced so their destructors (which would block
        # too) never run on the worker's thread.
        self.abandoned: list[Any] = []
        self._callbacks: dict[str, Any] = {}
        self.consumer = Consumer(self._consumer_conf)
        self.producer = self.new_producer()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err.str()

    def _on_producer_error(self, err: KafkaError) -> None:
        # Once fenced, every producer call fails with a generic _FATAL; this keeps the reason.
        if err.fatal():
            self.producer_fatal = err

    def fatal_error(self, err: KafkaError, what: str) -> DawnstreamError:
        """What to tell the user about a fatal producer error: the underlying one, not librdkafka's
        generic ``_FATAL`` (``produce()`` raises that before the error callback has been served)."""
        if self.producer_fatal is None and err.code() == KafkaError._FATAL:
            try:
                self.producer.poll(0)  # serve the queued error event that says why
            except Exception:  # noqa: BLE001 - delivery callbacks of a dead producer may raise too
                pass
        if self.producer_fatal is None and err.code() == KafkaError._FATAL and self.eos:
            try:
                self.producer.abort_transaction(5)  # a fatal producer answers with the specific error
            except KafkaException as e:
                if e.args[0].code() != KafkaError._FATAL:
                    self.producer_fatal = e.args[0]
            except Exception:  # noqa: BLE001
                pass
        return explain(self.producer_fatal or err, what)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.delivery_errors.add(msg.topic(), err)

    def consume_error(self, err: KafkaError) -> None:
        """Log what heals (broker away); raise what does not (refused, or the input topic is gone).

        Raises:
            DawnstreamError: the error cannot heal, or the input topic stayed missing for
                :data:`~dawnstream.streams.kafka_errors.MISSING_GRACE_S`.
        """
        if err.code() == KafkaError._PARTITION_EOF:
            return
        topic = self.topology.input.topic
        if not heals(err):
            raise explain(err, f"consuming {topic}")
        if is_missing(err):
            now = time.monotonic()
            self._missing_since = self._missing_since or now
            if now - self._missing_since > MISSING_GRACE_S:
                raise TopicMissing([topic], self.topology.input.partitions)
        event(log, "consume.error", error=err.str())

    def consumed(self) -> None:
        """Messages arrived: the input topic exists."""
        self._missing_since = None

    def new_producer(self) -> Producer:
        """A producer from the worker's settings; transactional ones are initialised, which fences any
        earlier producer with the same ``transactional.id`` and aborts what it left open. Retries for up
        to 5 minutes while the broker cannot be reached.

        Raises:
            DawnstreamError: the broker refused, or did not answer for 5 minutes.
        """
        self.producer_fatal = None
        producer = Producer(self._producer_conf)
        if not self.eos:
            return producer
        deadline = time.monotonic() + 300
        while True:
            try:
                producer.init_transactions(60)
                return producer
            except KafkaException as e:
                err = e.args[0]
                if not err.retriable() or time.monotonic() > deadline:
                    raise DawnstreamError(f"could not initialise the transactional producer: {err.str()}") from None
                event(log, "txn.init_retry", error=err.str())
                time.sleep(1.0)

    def subscribe(self, **callbacks: Any) -> None:
        """Subscribe to the input topic with ``on_assign`` / ``on_revoke`` / ``on_lost`` callbacks (kept for
        the consumers that replace this one)."""
        self._callbacks = callbacks
        self.consumer.subscribe([self.topology.input.topic], **callbacks)

    def replace(self, reason: str) -> None:
        """A client call hung: abandon both clients and rejoin with fresh ones."""
        event(log, "clients.replace", reason=reason)
        self.abandoned.append(self.producer)
        self.producer = self.new_producer()
        self.rebuild_consumer(reason)

    def rebuild_consumer(self, reason: str | None = None) -> None:
        """A fatal consumer error (e.g. fenced member after a long broker outage) or an aborted
        transaction: start over with a fresh consumer; partitions come back through assignment."""
        event(log, "consumer.rebuild", error=reason or self.fatal)
        self.fatal = None
        self.on_reset()
        old = self.consumer
        try:
            # Leave the group if the old consumer still can, so its partitions move at once; if close
            # hangs too, the broker drops the member after max.poll.interval.ms.
            call_bounded("consumer.close", old.close, 15)
        except Exception as e:  # noqa: BLE001 - the old consumer is unusable anyway
            event(log, "consumer.close_failed", error=str(e))
            self.abandoned.append(old)
        self.consumer = Consumer(self._consumer_conf)
        self.consumer.subscribe([self.topology.input.topic], **self._callbacks)
