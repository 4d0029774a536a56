"""The Kafka runner: consume micro-batches, process per partition, produce, then commit.

Exactly-once (the default): each micro-batch is one Kafka transaction holding its outputs, dead
letters, due state snapshots and consumed offsets. At-least-once: offsets are committed only after
every output and dead-letter record of the batch was acknowledged by the broker.

Failures: transport errors are retried; errors that cannot heal (a missing topic, refused
credentials, a fenced producer, an operator bug) end :meth:`KafkaRunner.run` with a
:class:`~dawnstream.errors.DawnstreamError` (or the operator's exception) after marking
``/healthz`` failed - see :mod:`dawnstream.streams.kafka_errors` and :mod:`dawnstream.streams.workers`.

Parallelism is by partition: N runners in one consumer group share the input partitions, each
keeping operator state per partition (``BatchProcessor.chains``).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from dawnstream.errors import ConfigError, DawnstreamError
from dawnstream.logs import event, get_logger
from dawnstream.streams.config import Topology
from dawnstream.streams.kafka_clients import (
    TopicAdmin,
    base_settings,
    consumer_settings,
    describe_settings,
    producer_settings,
)
from dawnstream.streams.kafka_errors import MISSING_GRACE_S, TopicMissing, explain, heals, is_missing
from dawnstream.streams.metrics import MetricsServer, WorkerMetrics
from dawnstream.streams.processor import BatchProcessor, BatchResult
from dawnstream.streams.state import changelog_spec, changelog_topic, read_latest, snapshot_key
from dawnstream.topics.message import Encoded, KafkaMessage, Message
from dawnstream.topics.spec import TopicSpec

log = get_logger(__name__)
LAG_REFRESH_S = 2.0


@dataclass
class RunnerStats:
    """Totals since start: rows in/out/dead, batches, and messages committed."""

    rows_in: int = 0
    rows_out: int = 0
    rows_dead: int = 0
    records_out: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    first_message: float | None = None  # monotonic time the first message arrived (after the group join)


class DeliveryFailed(DawnstreamError):
    """The broker refused or timed out some produced records; the batch is not committed."""


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


class KafkaRunner:
    """Runs one topology as one member of its consumer group.

    Args:
        topology: validated topology.
        worker: worker index (metrics port offset, client ids).
        create_topics: create missing input/output/dead-letter topics at start; when False they
            must exist (:class:`TopicMissing` otherwise). Internal topics (the state changelog)
            are always ensured.
        metrics_port: overrides ``topology.metrics.port + worker`` (0 = pick a free port,
            -1 = no HTTP endpoint). ``metrics.port: 0`` in the topology also turns it off.
        on_batch: optional callback after each committed batch (progress displays, tests).

    Call :meth:`run` (blocks until :meth:`stop`, SIGTERM/SIGINT, or ``max_idle_s`` without input).

    Raises:
        TopicMissing: a user topic is missing and ``create_topics`` is False.
        ConfigError: ``metrics.port`` cannot be bound.
        DawnstreamError: the broker cannot be reached or refuses the worker.
    """

    def __init__(
        self,
        topology: Topology,
        worker: int = 0,
        create_topics: bool = True,
        metrics_port: int | None = None,
        on_batch: Callable[[KafkaRunner, BatchResult], None] | None = None,
    ) -> None:
        self.topology = topology
        self.worker = worker
        self.processor = BatchProcessor(topology)
        self.stats = RunnerStats()
        self.metrics = WorkerMetrics(topology.name, worker)
        self.on_batch = on_batch
        self._stop = threading.Event()
        self._delivery_errors: list[str] = []
        self.assigned: set[int] = set()
        self.base = base_settings(topology.kafka.bootstrap, topology.kafka.settings)
        self.failure: BaseException | None = None  # why run() ended, when it did not end cleanly
        self._missing_since: float | None = None
        self._ensure_topics(create_topics)
        client_id = f"dawnstream-{topology.name}-{worker}"
        # Stable per (topology, host, worker index): a restarted worker's transactional producer fences
        # its crashed predecessor and aborts what that one left open. (Static group membership would
        # also skip a rebalance on restart, but librdkafka gets fenced by its own retried join after a
        # broker outage, so membership stays dynamic; a dead worker's partitions move after 6 s.)
        member = f"{topology.group_id}.{socket.gethostname()}.{worker}"
        self.eos = topology.guarantee == "exactly_once"
        self.changelog = changelog_topic(topology.name)
        self._consumer_conf = consumer_settings(
            self.base, topology.group_id, topology.input.start,
            **{"client.id": client_id, "error_cb": self._on_client_error},
        )
        self._consumer_fatal: str | None = None
        self.consumer = Consumer(self._consumer_conf)
        extra: dict[str, Any] = {"client.id": client_id, "on_delivery": self._on_delivery,
                                 "delivery.report.only.error": True}
        if self.eos:
            extra.update({"transactional.id": member, "transaction.timeout.ms": 60_000})
        self._producer_conf = producer_settings(self.base, **extra)
        # Clients that hung inside librdkafka: kept referenced so their destructors (which would block
        # too) never run on the worker's thread.
        self._abandoned: list[Any] = []
        self.producer = self._new_producer()
        self._last_checkpoint: dict[int, float] = {}
        self._position: dict[int, int] = {}  # next input offset per partition, as far as state reflects
        event(log, "runner.clients", worker=worker, settings=describe_settings(self.base))
        if metrics_port is None:
            port = topology.metrics.port + worker if topology.metrics.port else -1
        else:
            port = metrics_port
        self._init_series()
        self.metrics_server: MetricsServer | None = None
        if port >= 0:
            try:
                self.metrics_server = MetricsServer(self.metrics, topology.metrics.host, port).start()
            except OSError as e:
                raise ConfigError("metrics.port", f"cannot serve metrics on {topology.metrics.host}:{port} "
                                                  f"({e.strerror}): another process uses it; pick a free port, "
                                                  "or 0 to turn the endpoint off") from None
            event(log, "metrics.listening", host=topology.metrics.host, port=self.metrics_server.port)

    def _init_series(self) -> None:
        """Create every labelled series at 0 so an idle worker exposes the same metrics as a busy one."""
        m, name, t = self.metrics, self.topology.name, self.topology
        m.rows_in.labels(name, t.input.topic)
        for o in t.outputs:
            m.rows_out.labels(name, o.topic)
        m.dead.labels(name, t.input.topic, "decode")
        for stage in ["decode", *(op.name for op in self.processor.chain(-1).operators), "encode"]:
            m.op_seconds.labels(name, stage)
            m.stage_in.labels(name, stage)
            m.stage_out.labels(name, stage)
        self.processor.drop_partition(-1)
        m.batch_seconds.labels(name)
        m.assigned.labels(name).set(0)

    def _ensure_topics(self, create_user_topics: bool) -> None:
        """User topics are created, or checked to exist; internal topics are always ensured (the
        runner owns them, whatever the caller decided about the user's)."""
        t = self.topology
        admin = TopicAdmin(t.kafka.bootstrap, t.kafka.settings)
        user: list[TopicSpec] = t.user_topics()
        internal = [changelog_spec(t.name, t.input.partitions)]
        if create_user_topics:
            admin.ensure(user + internal)
            return
        existing = admin.list_topics()
        missing = [s.name for s in user if s.name not in existing]
        if missing:
            raise TopicMissing(missing, t.input.partitions if t.input.topic in missing else None)
        admin.ensure(internal)

    # -- group membership ---------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._restore(p.partition)
        self.assigned |= {p.partition for p in partitions}
        self.metrics.assigned.labels(self.topology.name).set(len(self.assigned))
        event(log, "partitions.assigned", worker=self.worker, partitions=sorted(p.partition for p in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Every batch is committed before consume() is called again, so nothing is pending here.
        for p in partitions:
            self.assigned.discard(p.partition)
            self.processor.drop_partition(p.partition)
            self._position.pop(p.partition, None)
            try:
                self.metrics.lag.remove(self.topology.name, p.topic, str(p.partition))
            except KeyError:
                pass
        self.metrics.assigned.labels(self.topology.name).set(len(self.assigned))
        event(log, "partitions.revoked", worker=self.worker, partitions=sorted(p.partition for p in partitions))

    def _on_client_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._consumer_fatal = err.str()

    def _new_producer(self) -> Producer:
        """A producer from the worker's settings; transactional ones are initialised, which fences any
        earlier producer with the same ``transactional.id`` and aborts what it left open. Retries for up
        to 5 minutes while the broker cannot be reached."""
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

    def _replace_clients(self, reason: str) -> None:
        """A client call hung: abandon both clients (a new producer with the same transactional.id
        fences the old one and aborts its open transaction), rejoin with a fresh consumer, and restore
        every partition from the changelog on assignment."""
        event(log, "clients.replace", reason=reason)
        self._abandoned.append(self.producer)
        self.producer = self._new_producer()
        old = self.consumer
        try:
            # Leave the group if the old consumer still can, so its partitions move at once; if close
            # hangs too, the broker drops the member after max.poll.interval.ms.
            call_bounded("consumer.close", old.close, 15)
        except Exception as e:  # noqa: BLE001 - the old consumer is unusable anyway
            event(log, "consumer.close_failed", error=str(e))
            self._abandoned.append(old)
        for p in list(self.assigned):
            self.processor.drop_partition(p)
        self.assigned.clear()
        self._position.clear()
        self._consumer_fatal = None
        self.consumer = Consumer(self._consumer_conf)
        self._subscribe()

    def _subscribe(self) -> None:
        self.consumer.subscribe([self.topology.input.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)

    def _rebuild_consumer(self) -> None:
        """A fatal consumer error (e.g. fenced static member after a long broker outage): start over
        with a fresh consumer; partitions come back through assignment, state through the changelog."""
        event(log, "consumer.rebuild", error=self._consumer_fatal)
        self._consumer_fatal = None
        for p in list(self.assigned):
            self.processor.drop_partition(p)
        self.assigned.clear()
        self._position.clear()
        try:
            call_bounded("consumer.close", self.consumer.close, 15)
        except Exception as e:  # noqa: BLE001 - the old consumer is unusable anyway
            event(log, "consumer.close_failed", error=str(e))
            self._abandoned.append(self.consumer)
        self.consumer = Consumer(self._consumer_conf)
        self._subscribe()

    # -- state --------------------------------------------------------------------------------
    def _committed(self, partition: int) -> int:
        tp = self.consumer.committed([TopicPartition(self.topology.input.topic, partition)], timeout=30)[0]
        return int(tp.offset)

    def _restore(self, partition: int) -> None:
        """Rebuild ``partition``'s state: latest changelog snapshot, then replay up to the committed offset.

        Retries for up to 5 minutes while the broker cannot be reached; a missing changelog
        partition is waited for :data:`~dawnstream.streams.kafka_errors.MISSING_GRACE_S` only.

        Raises:
            DawnstreamError: an error that does not heal (missing topic, refused credentials), or
                the broker stayed away for 5 minutes.
        """
        start = time.monotonic()
        while True:
            try:
                self._restore_once(partition)
                return
            except KafkaException as e:
                err = e.args[0]
                waited = time.monotonic() - start
                if not heals(err) or waited > 300 or (is_missing(err) and waited > MISSING_GRACE_S):
                    raise explain(err, f"restoring partition {partition} from {self.changelog}") from None
                event(log, "state.restore_retry", partition=partition, error=err.str())
            except DawnstreamError as e:  # a replay that could not finish (broker away): retry
                if time.monotonic() - start > 300:
                    raise
                event(log, "state.restore_retry", partition=partition, error=str(e))
            time.sleep(1.0)

    def _restore_once(self, partition: int) -> None:
        self.processor.drop_partition(partition)
        self._last_checkpoint.pop(partition, None)
        self._position.pop(partition, None)
        data = read_latest(self.base, self.changelog, partition)
        if data is None:
            return
        start = self.processor.restore(partition, data)
        end = self._committed(partition)
        if end < start:
            # Snapshots commit in the same transaction as offsets at or past theirs, so this state is
            # from an earlier life of the input topic or consumer group (deleted and re-created).
            self.processor.drop_partition(partition)
            event(log, "state.discarded", level=logging.WARNING, partition=partition, snapshot_offset=start,
                  committed=end, reason="the snapshot is ahead of the committed offset")
            return
        replayed = self._replay(partition, start, end) if end > start else 0
        self._position[partition] = max(start, end)
        event(log, "state.restored", partition=partition, snapshot_offset=start, committed=end, replayed=replayed)

    def _replay(self, partition: int, start: int, end: int) -> int:
        """Re-process input offsets [start, end) with outputs discarded (they were committed before)."""
        topic = self.topology.input.topic
        c = Consumer(consumer_settings(self.base, f"{self.topology.group_id}.replay", "earliest"))
        n = 0
        try:
            c.assign([TopicPartition(topic, partition, start)])
            deadline = time.monotonic() + 600
            pos = start
            while pos < end and time.monotonic() < deadline:
                batch = [m for m in c.consume(self.topology.batch.max_messages, timeout=1.0)
                         if m.error() is None and (m.offset() or 0) < end]
                if batch:
                    self.processor.process(partition, [KafkaMessage(m) for m in batch])
                    n += len(batch)
                now_at: int | None = c.position([TopicPartition(topic, partition)])[0].offset
                if now_at is not None and now_at > pos:
                    pos = now_at
            if pos < end:
                raise DawnstreamError(f"could not replay partition {partition} from {start} to {end}")
        finally:
            c.close()
        return n

    def _checkpoints(self, last_offset: dict[int, int], force: bool = False) -> None:
        """Produce due snapshots (one per partition, at most every ``checkpoint_ms``)."""
        now = time.monotonic()
        every = self.topology.checkpoint_ms / 1000.0
        for p, off in last_offset.items():
            if force or now - self._last_checkpoint.get(p, -1e18) >= every:
                self._produce_to(self.changelog, p, snapshot_key(p), self.processor.snapshot(p, off + 1))
                self._last_checkpoint[p] = now

    def _produce_to(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, partition=partition)
                return
            except BufferError:
                self.producer.poll(0.05)

    # -- produce ------------------------------------------------------------------------------
    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err.str()}")

    def _produce(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> None:
        """Produce one record, waiting for room in librdkafka's queue if it is full."""
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.05)  # local queue full: let librdkafka send, then retry

    def _produce_encoded(self, topic: str, enc: Encoded) -> None:
        produce = self.producer.produce
        keys, per, topics = enc.keys, enc.record_headers, enc.topics
        shared: Any = enc.headers
        for i, value in enumerate(enc.values):
            t = (topics[i] or topic) if topics is not None else topic
            k = keys[i] if keys is not None else None
            h: Any = per[i] if per is not None else shared
            try:
                produce(t, value, k, headers=h)
            except BufferError:
                self._produce(t, value, k, h)

    def _produce_result(self, res: BatchResult) -> None:
        for topic, enc in res.outputs:
            self._produce_encoded(topic, enc)
        for topic, rec in res.dead_letters:
            self._produce(topic, rec.value, rec.key, rec.headers)
        self.producer.poll(0)

    def _flush(self, timeout_s: float = 60.0) -> None:
        remaining = self.producer.flush(timeout_s)
        if remaining or self._delivery_errors:
            errs = self._delivery_errors[:5]
            self._delivery_errors.clear()
            raise DeliveryFailed(f"{remaining} record(s) undelivered after {timeout_s}s; errors: {errs}")

    # -- the loop -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit, and return."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT -> :meth:`stop` (main thread only)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self, max_idle_s: float | None = None, max_rows: int | None = None, drain: bool = False) -> RunnerStats:
        """Consume until stopped.

        Args:
            max_idle_s: return after this long without any message (tests, one-shot jobs).
            max_rows: return once this many input rows were processed and committed.
            drain: on a normal exit, flush the operators (open windows, last explanations) and
                produce what they emit - for finite inputs such as a replayed file.
        """
        t = self.topology
        self._subscribe()
        self.metrics.status = {"state": "running", "group": t.group_id, "input": t.input.topic}
        event(log, "runner.start", worker=self.worker, topology=t.name, group=t.group_id, input=t.input.topic)
        last_msg = time.monotonic()
        last_lag = 0.0
        wait_s = t.batch.max_wait_ms / 1000.0
        try:
            while not self._stop.is_set():
                if self._consumer_fatal is not None:
                    self._rebuild_consumer()
                msgs = self.consumer.consume(num_messages=t.batch.max_messages, timeout=wait_s)
                now = time.monotonic()
                if msgs:
                    if self.stats.first_message is None:
                        self.stats.first_message = now
                    if self._process(msgs):
                        last_msg = now
                elif max_idle_s is not None and now - last_msg > max_idle_s:
                    break
                if now - last_lag > LAG_REFRESH_S:
                    self._refresh_lag()
                    last_lag = now
                self._tick()
                if max_rows is not None and self.stats.rows_in >= max_rows:
                    break
            if drain:
                final = self.processor.flush()
                if self.eos:
                    self._begin()
                self._produce_result(final)
                if self.eos:
                    self.producer.commit_transaction(60)
                else:
                    self._flush()
                self._account([final], 0.0)
        except Exception as e:
            self._fail(e)
            raise
        finally:
            self.close()
        return self.stats

    def _fail(self, e: BaseException) -> None:
        """Record why the loop ended: ``/healthz`` answers 503 with the reason; logged once here."""
        self.failure = e
        reason = str(e) if isinstance(e, DawnstreamError) else f"{type(e).__name__}: {e}"
        self.metrics.status = {"state": "failed", "error": reason}
        event(log, "runner.failed", level=logging.ERROR, worker=self.worker, topology=self.topology.name,
              error=reason, exc_info=None if isinstance(e, DawnstreamError) else e)

    def _tick(self) -> None:
        """Wall-clock emissions (e.g. ``emit_seconds``). Under exactly-once they are a transaction of
        their own together with fresh snapshots of every partition, so a restart neither repeats nor
        loses them."""
        tick = self.processor.tick(int(time.time() * 1000))
        if not tick.outputs:
            return
        if not self.eos:
            self._produce_result(tick)
            return
        self._begin()
        self._produce_result(tick)
        self._checkpoints({p: off - 1 for p, off in self._position.items()}, force=True)
        if self._commit_transaction([], sorted(self._position)):
            self._account([tick], 0.0)

    def _process(self, msgs: list[Any]) -> bool:
        t0 = time.perf_counter()
        by_partition: dict[int, list[Message]] = {}
        first_offset: dict[int, int] = {}
        last_offset: dict[int, int] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                self._consume_error(err)
                continue
            p = m.partition()
            lst = by_partition.get(p)
            if lst is None:
                lst = by_partition[p] = []
                first_offset[p] = m.offset()
            lst.append(KafkaMessage(m))
        for p, lst in by_partition.items():
            last_offset[p] = lst[-1].offset
            self._position[p] = lst[-1].offset + 1
        if not by_partition:
            return False
        self._missing_since = None
        topic = self.topology.input.topic
        offsets = [TopicPartition(topic, p, off + 1) for p, off in last_offset.items()]
        if self.eos:
            self._begin()
        results = []
        for p, pmsgs in by_partition.items():
            res = self.processor.process(p, pmsgs)
            self._produce_result(res)
            results.append(res)
        self._checkpoints(last_offset)
        if self.eos:
            if not self._commit_transaction(offsets, list(by_partition)):
                return True
        else:
            try:
                self._flush()
            except DeliveryFailed as e:
                # Not committed: rewind so the same messages are processed again (at-least-once).
                event(log, "batch.retry", error=str(e))
                self._rewind(first_offset)
                time.sleep(1.0)
                return True
            self.consumer.commit(offsets=offsets, asynchronous=False)
        self._account(results, time.perf_counter() - t0)
        return True

    def _consume_error(self, err: KafkaError) -> None:
        """Log what heals (broker away); raise what does not (refused, or the input topic is gone)."""
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

    def _rewind(self, first_offset: dict[int, int]) -> None:
        topic = self.topology.input.topic
        for p, off in first_offset.items():
            try:
                self.consumer.seek(TopicPartition(topic, p, off))
            except KafkaException as se:  # partition revoked meanwhile: its new owner re-reads it
                event(log, "batch.seek_skipped", partition=p, error=str(se))

    # -- transactions -------------------------------------------------------------------------
    def _begin(self) -> None:
        try:
            self.producer.begin_transaction()
        except KafkaException as e:
            if heals(e.args[0]):
                raise
            raise explain(e.args[0], "beginning a transaction") from None

    def _bounded(self, what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
        # librdkafka's own timeout plus a margin: past that the call is stuck, not slow.
        return call_bounded(what, fn, timeout_s + 15)

    def _commit_transaction(self, offsets: list[TopicPartition], partitions: list[int]) -> bool:
        """Send the consumed offsets and commit; on an abortable error abort, restore the partitions'
        state from the changelog and rewind to the committed offsets. Returns True when committed."""
        step = "send_offsets"
        attempts = 0
        while True:
            try:
                if step == "send_offsets" and offsets:
                    if not self.consumer.assignment():
                        # The session expired (e.g. a broker outage) and librdkafka revoked the partitions:
                        # these offsets can no longer be committed by this member.
                        raise KafkaException(KafkaError(KafkaError._STATE, "consumer lost its assignment"))
                    self._bounded("send_offsets_to_transaction", partial(
                        self.producer.send_offsets_to_transaction, offsets,
                        self.consumer.consumer_group_metadata(), 30), 30)
                step = "commit"
                self._bounded("commit_transaction", partial(self.producer.commit_transaction, 30), 30)
                return True
            except ClientStuck as e:
                # Nothing of this transaction is visible unless the stuck commit completes; if it does,
                # the restored state and committed offsets agree with it either way.
                self._replace_clients(str(e))
                return False
            except KafkaException as e:
                err = e.args[0]
                attempts += 1
                # A commit that timed out may still complete: retry it a few times. Offsets that could not
                # be added usually mean the consumer lost its group generation during an outage; only a
                # fresh consume() can rejoin, so abort instead of waiting for a group that will not answer.
                if err.retriable() and not err.txn_requires_abort() and step == "commit" and attempts <= 3:
                    event(log, "txn.retry", step=step, error=err.str())
                    time.sleep(0.5)
                    continue
                if err.fatal():
                    raise explain(err, "committing a transaction") from None
                event(log, "txn.abort", step=step, error=err.str())
                self._abort_and_recover(partitions)
                return False

    def _abort_and_recover(self, partitions: list[int]) -> None:
        """Abort the open transaction, then rejoin with a fresh consumer: assignment restores every
        partition from its changelog and resumes at the committed offsets."""
        deadline = time.monotonic() + 300
        while True:
            try:
                self._bounded("abort_transaction", partial(self.producer.abort_transaction, 30), 30)
                break
            except ClientStuck as e:
                self._replace_clients(str(e))
                return
            except KafkaException as e:
                if e.args[0].fatal() or time.monotonic() > deadline:
                    raise DawnstreamError(f"could not abort the transaction: {e.args[0].str()}") from None
                time.sleep(1.0)
        self._consumer_fatal = f"transaction aborted for partitions {sorted(partitions)}"
        self._rebuild_consumer()

    def _account(self, results: list[BatchResult], seconds: float) -> None:
        m, name, t = self.metrics, self.topology.name, self.topology
        for res in results:
            self.stats.rows_in += res.rows_in
            self.stats.rows_out += res.rows_out
            self.stats.rows_dead += res.rows_dead
            self.stats.records_out += sum(len(enc) for _, enc in res.outputs)
            m.rows_in.labels(name, t.input.topic).inc(res.rows_in)
            for o in t.outputs:
                m.rows_out.labels(name, o.topic).inc(res.rows_out)
            for stage, n in res.dead_by_stage.items():
                m.dead.labels(name, t.input.topic, stage).inc(n)
            for stage, (sec, rin, rout) in res.stage_stats.items():
                m.op_seconds.labels(name, stage).inc(sec)
                m.stage_in.labels(name, stage).inc(rin)
                m.stage_out.labels(name, stage).inc(rout)
            if self.on_batch is not None:
                self.on_batch(self, res)
        self.stats.batches += 1
        m.batch_seconds.labels(name).observe(seconds)
        m.last_batch = time.time()

    def _refresh_lag(self) -> None:
        if not self.assigned:
            return
        topic = self.topology.input.topic
        try:
            positions = self.consumer.position([TopicPartition(topic, p) for p in sorted(self.assigned)])
            for tp in positions:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0 and tp.offset >= 0:
                    self.metrics.lag.labels(self.topology.name, topic, str(tp.partition)).set(high - tp.offset)
        except Exception as e:  # noqa: BLE001 - metrics must never stop the worker
            event(log, "lag.unavailable", error=str(e))

    def close(self) -> None:
        """Flush what is queued, leave the group, stop the metrics endpoint (idempotent)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if self.failure is None:
            self.metrics.status = {"state": "stopping"}
        # After a failure the clients may be unusable (a fenced producer's flush fails inside the
        # library): nothing here may replace the error that ended the loop.
        for what, fn in (("producer.flush", lambda: self.producer.flush(30)), ("consumer.close", self.consumer.close)):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                event(log, "runner.close_failed", level=logging.WARNING, step=what, error=f"{type(e).__name__}: {e}")
        if self.metrics_server is not None:
            self.metrics_server.stop()
        s = self.stats
        event(log, "runner.stop", worker=self.worker, rows_in=s.rows_in, rows_out=s.rows_out,
              rows_dead=s.rows_dead, batches=s.batches)
