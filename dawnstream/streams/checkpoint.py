"""The commit of one micro-batch: its outputs, dead letters, due state snapshots and consumed offsets.

Exactly-once: everything goes in one Kafka transaction (``send_offsets_to_transaction`` carries the
offsets), so it all becomes visible together or not at all. At-least-once: the offsets are committed
every ``checkpoint_ms``, only after every record was acknowledged (records refused: the state is
recovered and the input re-read from the last commit); snapshots are written after the outputs are
acknowledged and before the offsets commit (:mod:`~dawnstream.streams.recovery` resumes from a
snapshot found ahead of the commit). A checkpoint is *staged* (offsets noted, snapshots taken) and then
finished: at once, waiting for the broker's acknowledgements (``producer.flush``, as Kafka Streams
commits), or - in a topology that never waits for a batch (``batch.max_wait_ms: 0``, request/reply) -
without blocking the loop: later batches go on while per-record delivery reports count its outputs
in; once they are all acknowledged its snapshots are produced, and once those are, its offsets commit.
(Counting every record costs a callback per record, ~5-10% of a JSON row-per-message job's
throughput; a blocked loop costs a serving topology its tail latency.)
Snapshots go to the changelog at most every ``checkpoint_ms`` per partition (:mod:`dawnstream.streams.state`).
Quix Streams keeps the same responsibilities in its ``Checkpoint`` (``quixstreams/checkpointing/checkpoint.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from dawnstream.errors import DawnstreamError
from dawnstream.logs import event, get_logger
from dawnstream.streams.clients import ClientStuck, DeliveryErrors, WorkerClients, call_bounded
from dawnstream.streams.kafka_errors import heals
from dawnstream.streams.processor import BatchProcessor, BatchResult
from dawnstream.streams.state import snapshot_key, tag_keyed
from dawnstream.topics.message import Encoded

log = get_logger(__name__)


REBALANCED = (KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS,
              KafkaError._ASSIGNMENT_LOST)
"""Commit errors that mean the consumer group rebalanced under an at-least-once batch (nothing is lost)."""


REFUSED_AT_PRODUCE = (KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART,
                      KafkaError.TOPIC_AUTHORIZATION_FAILED)
"""What ``produce()`` raises at once for a topic the client knows it cannot write."""


class DeliveryFailed(DawnstreamError):
    """The broker refused or timed out some produced records; the batch is not committed."""


class _Acks:
    """Delivery reports of the records produced in one stretch of batches (at-least-once): ``outstanding``
    counts those not yet acknowledged or refused; a refusal is recorded where the synchronous path looks."""

    __slots__ = ("errors", "outstanding")

    def __init__(self, errors: DeliveryErrors) -> None:
        self.outstanding = 0
        self.errors = errors

    def done(self, err: KafkaError | None, msg: Any) -> None:
        self.outstanding -= 1
        if err is not None:
            self.errors.add(msg.topic(), err)


class _Staged:
    """An at-least-once checkpoint on its way: the offsets it commits, the snapshot records taken when it
    was staged, the outputs they wait for, then the snapshot records' own acknowledgements."""

    __slots__ = ("outputs", "pending", "records", "written")

    def __init__(self, outputs: _Acks, pending: dict[int, int], records: list[tuple[bytes | None, bytes, int]]) -> None:
        self.outputs, self.pending, self.records = outputs, pending, records
        self.written: _Acks | None = None


class Checkpoint:
    """Produces micro-batch results and commits them with the consumed offsets.

    Args:
        clients: the worker's consumer and producer.
        processor: where partition snapshots come from.
        changelog: the state changelog topic (partition *p* holds input partition *p*'s snapshots).
        checkpoint_ms: least time between two snapshots of a partition (0 = every batch).
        skip_snapshot: partitions whose state must not be written (still being recovered).
    """

    def __init__(self, clients: WorkerClients, processor: BatchProcessor, changelog: str, checkpoint_ms: int,
                 skip_snapshot: Callable[[int], bool] = lambda p: False) -> None:
        self.clients = clients
        self.processor = processor
        self.changelog = changelog
        self.every_s = checkpoint_ms / 1000.0
        self.skip_snapshot = skip_snapshot
        self.eos = clients.eos
        self._last: dict[int, float] = {}
        self._snapped: dict[int, int] = {}  # the input offset each partition's last snapshot reflects
        self._due: dict[int, int] = {}  # at-least-once: snapshots to write once the batch is acknowledged
        self._uncommitted: dict[int, int] = {}  # at-least-once: offsets committed asynchronously
        self._pending: dict[int, int] = {}  # at-least-once: offsets processed, not yet committed
        self._committed_at = time.monotonic()
        # At-least-once without waiting for the broker (see the module docstring); the producer then
        # reports every record's delivery, not only refusals.
        self.pipelined = clients.count_deliveries
        self._acks = _Acks(clients.delivery_errors)  # pipelined: the records produced since the last staging
        self._staged: _Staged | None = None

    def forget(self, partition: int) -> None:
        """The partition left this worker: its next snapshot is due at once."""
        if not self.eos:
            self._drain_quietly(f"revoking partition {partition}")
        self._last.pop(partition, None)
        self._snapped.pop(partition, None)
        self._due.pop(partition, None)
        off = self._pending.pop(partition, None)
        if off is not None and not self.eos:  # commit what was processed before the partition moves
            try:
                self.flush(10.0)
                self.clients.consumer.commit(offsets=[TopicPartition(self.clients.topology.input.topic, partition,
                                                                     off)], asynchronous=False)
            except (DeliveryFailed, KafkaException) as e:  # the new owner re-reads from the last commit
                event(log, "revoke.commit_skipped", partition=partition, error=str(e))

    # -- produce ------------------------------------------------------------------------------
    def begin(self) -> None:
        """Open the transaction (exactly-once only).

        Raises:
            DawnstreamError: the producer was fenced or refused (:func:`~dawnstream.streams.kafka_errors.explain`).
        """
        if not self.eos:
            return
        try:
            self.clients.producer.begin_transaction()
        except KafkaException as e:
            raise self._unless_heals(e, "beginning a transaction") from None

    def produce(self, res: BatchResult) -> None:
        """Produce a result's outputs and dead letters.

        Raises:
            DawnstreamError: the producer failed for good (fenced, refused), saying why.
        """
        try:
            for topic, enc in res.outputs:
                self._produce_encoded(topic, enc)
            for topic, rec in res.dead_letters:
                self._produce(topic, rec.value, rec.key, rec.headers)
            for key, value in res.published:
                self._produce(self.processor.global_topic or "", value, key.encode(), None)
            self.clients.producer.poll(0)
        except KafkaException as e:
            raise self._unless_heals(e, "producing the batch's records") from None

    def _unless_heals(self, e: KafkaException, what: str) -> Exception:
        """``e`` itself when it can heal (the caller's retry handles it), else what to tell the user."""
        return e if heals(e.args[0]) else self.clients.fatal_error(e.args[0], what)

    def snapshots(self, last_offset: dict[int, int], force: bool = False) -> None:
        """Produce the due snapshots (one per partition, at most every ``checkpoint_ms``), each saying
        its state reflects every input offset up to ``last_offset[p]``.

        At-least-once, they are only noted here and written by :meth:`commit` once the batch's outputs
        are acknowledged, so a snapshot never gets ahead of outputs that could still be lost."""
        now = time.monotonic()
        due = {p: off for p, off in last_offset.items()
               if not self.skip_snapshot(p) and (force or now - self._last.get(p, -1e18) >= self.every_s)}
        if not self.eos:
            self._due.update(due)
            return
        try:
            self._write_snapshots(due)
        except KafkaException as e:
            raise self._unless_heals(e, "writing state snapshots") from None

    def _write_snapshots(self, due: dict[int, int]) -> None:
        self._produce_records(self._take_snapshots(due))

    def _take_snapshots(self, due: dict[int, int]) -> list[tuple[bytes | None, bytes, int]]:
        """The changelog records (key, value, partition) of ``due``'s snapshots, as the state is now."""
        now = time.monotonic()
        records: list[tuple[bytes | None, bytes, int]] = []
        for p, off in due.items():
            # The blob is taken first (an operator may move state into its keyed store as it snapshots), its
            # keyed records are written before it: a crash in between leaves records the restore ignores.
            blob = self.processor.snapshot(p, off + 1)
            for key, value in self.processor.keyed_changes(p):  # value None: a tombstone
                records.append((key, tag_keyed(value, off + 1), p))  # type: ignore[arg-type]
            records.append((snapshot_key(p), blob, p))
            self._last[p], self._snapped[p] = now, off
        return records

    def _produce_records(self, records: list[tuple[bytes | None, bytes, int]]) -> None:
        for key, value, p in records:
            self._produce(self.changelog, value, key, None, partition=p)

    def _produce(self, topic: str, value: bytes, key: bytes | None, headers: Any, partition: int = -1) -> None:
        """Produce one record, waiting for room in librdkafka's queue if it is full."""
        producer = self.clients.producer
        extra: dict[str, Any] = {"on_delivery": self._acks.done} if self.pipelined else {}
        if partition >= 0:
            extra["partition"] = partition
        if headers is not None:
            extra["headers"] = headers
        while True:
            try:
                producer.produce(topic, value, key, **extra)
                if self.pipelined:
                    self._acks.outstanding += 1
                return
            except BufferError:
                producer.poll(0.05)  # local queue full: let librdkafka send, then retry

    def _produce_encoded(self, topic: str, enc: Encoded) -> None:
        if enc.partitions is not None:
            for value, p in zip(enc.values, enc.partitions, strict=True):
                self._produce(topic, value, None, enc.headers, partition=p)
            return
        produce = self.clients.producer.produce
        keys, per, topics = enc.keys, enc.record_headers, enc.topics
        shared: Any = enc.headers
        acks = self._acks if self.pipelined else None
        for i, value in enumerate(enc.values):
            t = (topics[i] or topic) if topics is not None else topic
            k = keys[i] if keys is not None else None
            h: Any = per[i] if per is not None else shared
            try:
                if acks is None:
                    produce(t, value, k, headers=h)
                else:
                    produce(t, value, k, headers=h, on_delivery=acks.done)
                    acks.outstanding += 1
            except BufferError:
                self._produce(t, value, k, h)
            except KafkaException as e:
                if t == topic or e.args[0].code() not in REFUSED_AT_PRODUCE:
                    raise
                # A reply topic the client already knows is gone or forbidden: refused like a delivery, so
                # the batch is re-read and the request dead-lettered (the reply topic is remembered refused).
                self.clients.delivery_errors.add(t, e.args[0])

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until every produced record is acknowledged.

        Raises:
            DeliveryFailed: some were refused or are still queued after ``timeout_s``.
        """
        remaining = self.clients.producer.flush(timeout_s)
        errors = self.clients.delivery_errors
        if remaining or errors:
            errs = errors[:5]
            errors.clear()
            raise DeliveryFailed(f"{remaining} record(s) undelivered after {timeout_s}s; errors: {errs}")

    # -- commit -------------------------------------------------------------------------------
    def commit(self, offsets: list[TopicPartition], partitions: list[int], first_offsets: dict[int, int]) -> bool:
        """Make the batch visible with its offsets (the next offset to read, per partition). Returns
        False when it was not committed: the transaction was aborted, or, at-least-once, some records were
        refused; either way the partitions' state is recovered and their input re-read from the last commit.

        At-least-once commits at most every ``checkpoint_ms`` (as Kafka Streams does): outputs are produced
        without waiting, then flushed (or, pipelined, counted in by their delivery reports), the due snapshots
        written, and the offsets committed. A crash replays at most that much input; no batch waits for the
        broker's acknowledgement in between.
        """
        if self.eos:
            return self._commit_transaction(offsets, partitions)
        self._pending.update({tp.partition: tp.offset for tp in offsets})
        return self._step()

    def idle(self) -> None:
        """At-least-once, between batches: move the staged checkpoint on, and stage what is still pending
        once ``checkpoint_ms`` has passed (a worker whose input stopped must not keep its last offsets
        uncommitted)."""
        if self._pending or self._due or self._staged is not None:
            self._step()

    def _step(self) -> bool:
        """Serve delivery reports, move the staged checkpoint on, stage the next when due (pipelined, without
        waiting for the broker). False when records were refused (the state is being recovered) or the
        offsets could not be committed."""
        self.clients.producer.poll(0)  # delivery reports
        if self.clients.delivery_errors:
            try:
                self.flush()  # raises DeliveryFailed, naming them
            except DeliveryFailed as e:
                return self._refused(e)
        committed = self._advance()
        if self._staged is None and (self._due or (self._pending and
                                                   time.monotonic() - self._committed_at >= self.every_s)):
            self._stage()
            if not self.pipelined:
                return self._flush_and_commit()
            committed = self._advance() and committed
        return committed

    def _stage(self) -> None:
        due, self._due = self._due, {}
        pending, self._pending = self._pending, {}
        self._staged = _Staged(self._acks, pending, self._take_snapshots(due))  # taken here, produced later
        self._acks = _Acks(self.clients.delivery_errors)
        self._committed_at = time.monotonic()

    def _advance(self) -> bool:
        """The staged checkpoint's next step, once what it waits for is acknowledged. False when its offsets
        could not be committed (the group moved on)."""
        st = self._staged
        if st is None or not self.pipelined or st.outputs.outstanding > 0:
            return True
        if st.written is None:
            outputs, self._acks = self._acks, _Acks(self.clients.delivery_errors)
            try:
                self._produce_records(st.records)
            except KafkaException as e:
                raise self._unless_heals(e, "writing state snapshots") from None
            finally:
                st.written, self._acks = self._acks, outputs
        if st.written.outstanding > 0:
            return True
        self._staged = None
        return self._commit_offsets(st.pending)

    def _drain(self) -> None:
        """Finish the staged checkpoint now, waiting for the broker (a revocation, a clean stop).

        Raises:
            DeliveryFailed: records were refused, or are still unacknowledged after 60 s.
        """
        st = self._staged
        if st is None:
            return
        self.flush()
        if st.written is None:
            self._produce_records(st.records)
            self.flush()
        self._staged = None
        self._commit_offsets(st.pending)

    def _drain_quietly(self, why: str) -> None:
        try:
            self._drain()
        except (DeliveryFailed, KafkaException) as e:  # the next owner re-reads from the last commit
            self._staged = None
            event(log, "checkpoint.drain_skipped", reason=why, error=str(e))

    def _refused(self, e: DeliveryFailed) -> bool:
        """Records were refused: operator state has moved past records that were lost, so recover it and
        re-read from the last commit (what is staged is dropped: its offsets must not commit)."""
        self._staged, self._due, self._pending = None, {}, {}
        self.processor.replies.recheck()
        event(log, "batch.retry", error=str(e))
        time.sleep(1.0)
        self.clients.rebuild_consumer(f"records were refused: {e}")
        return False

    def _flush_and_commit(self) -> bool:
        """Stage what is pending and finish it now, waiting for the broker (a clean stop's snapshots; every
        checkpoint when not pipelined)."""
        if self._staged is None and (self._due or self._pending):
            self._stage()
        try:
            self._drain()
        except KafkaException as e:
            raise self._unless_heals(e, "writing state snapshots") from None
        except DeliveryFailed as e:
            return self._refused(e)
        return True

    def _commit_offsets(self, pending: dict[int, int]) -> bool:
        if not pending:
            return True
        topic = self.clients.topology.input.topic
        try:
            # Asynchronous: the outputs are acknowledged, so a commit lost in a crash only means a
            # replay; waiting would add a round trip.
            self.clients.consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in pending.items()],
                                         asynchronous=True)
            self._uncommitted.update(pending)
        except KafkaException as e:
            if e.args[0].code() not in REBALANCED:
                raise
            # The group moved on: these partitions belong to a newer generation, whose owner re-reads
            # them from the last commit (at-least-once).
            event(log, "batch.commit_skipped", error=e.args[0].str())
            return False
        return True

    def close_consumer(self) -> None:
        """Leave the group; at-least-once, first commit the last offsets once more, synchronously (the
        asynchronous commits of the last batches may still be in flight)."""
        consumer = self.clients.consumer
        if self._staged is not None:  # its snapshots are dropped; its outputs are acknowledged, as below
            self._pending = {**self._staged.pending, **self._pending}
            self._staged = None
        if self._pending:  # the runner flushed the producer before closing: these outputs are acknowledged
            self._uncommitted.update(self._pending)
            self._pending.clear()
        if self._uncommitted and consumer.assignment():
            topic = self.clients.topology.input.topic
            owned = {tp.partition for tp in consumer.assignment()}
            last = [TopicPartition(topic, p, off) for p, off in self._uncommitted.items() if p in owned]
            try:
                if last:
                    consumer.commit(offsets=last, asynchronous=False)
            except KafkaException as e:
                event(log, "close.commit_skipped", error=e.args[0].str())
        self._uncommitted.clear()
        consumer.close()

    def snapshot_on_stop(self, last_offset: dict[int, int]) -> None:
        """A clean stop: snapshot every partition whose state moved past its last snapshot (``last_offset``:
        the last input offset it reflects) and commit them, so that the next start - a deploy, a
        scale-down - restores without replaying input (Kafka Streams checkpoints on close the same way).
        A failure here is only logged: the next start then replays from the last snapshot, as after a crash.
        """
        if not self.eos:
            self._drain_quietly("stopping")  # what is staged first: it says which snapshots are already taken
        due = {p: off for p, off in last_offset.items()
               if not self.skip_snapshot(p) and self._snapped.get(p, -1) < off}
        if not due:
            return
        try:  # a batch with no input and no outputs, whose due snapshots are all of them
            self.begin()
            self.snapshots(due, force=True)
            if self.eos:
                self.commit([], sorted(due), {})
            else:
                self._flush_and_commit()
        except (KafkaException, DawnstreamError) as e:
            event(log, "stop.snapshot_skipped", level=logging.WARNING, partitions=sorted(due), error=str(e))
            if self.eos:
                try:
                    self.clients.producer.abort_transaction(10)
                except KafkaException:
                    pass  # nothing was open, or the producer is gone: either way nothing is committed

    def commit_final(self) -> None:
        """Commit what was produced outside a batch (the operators' flush at the end of a finite input)."""
        if self.eos:
            self.clients.producer.commit_transaction(60)
        else:
            self.flush()

    def _bounded(self, what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
        # librdkafka's own timeout plus a margin: past that the call is stuck, not slow.
        return call_bounded(what, fn, timeout_s + 15)

    def _commit_transaction(self, offsets: list[TopicPartition], partitions: list[int]) -> bool:
        """Send the consumed offsets and commit; on an abortable error abort, and rejoin so the
        partitions' state is recovered from the changelog and the input re-read from the committed
        offsets. Returns True when committed."""
        c = self.clients
        if c.delivery_errors:  # a record refused when produced (a reply topic): nothing of the batch may commit
            event(log, "txn.abort", step="produce", error=str(c.delivery_errors[:5]))
            self._abort_and_recover(partitions)
            return False
        step = "send_offsets"
        attempts = 0
        while True:
            try:
                if step == "send_offsets" and offsets:
                    if not c.consumer.assignment():
                        # The session expired (e.g. a broker outage) and librdkafka revoked the partitions:
                        # these offsets can no longer be committed by this member.
                        raise KafkaException(KafkaError(KafkaError._STATE, "consumer lost its assignment"))
                    self._bounded("send_offsets_to_transaction", partial(
                        c.producer.send_offsets_to_transaction, offsets, c.consumer.consumer_group_metadata(), 30), 30)
                step = "commit"
                self._bounded("commit_transaction", partial(c.producer.commit_transaction, 30), 30)
                return True
            except ClientStuck as e:
                # Nothing of this transaction is visible unless the stuck commit completes; if it does,
                # the recovered state and committed offsets agree with it either way.
                c.replace(str(e))
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
                    raise c.fatal_error(err, "committing a transaction") from None
                event(log, "txn.abort", step=step, error=err.str())
                self._abort_and_recover(partitions)
                return False

    def _abort_and_recover(self, partitions: list[int]) -> None:
        """Abort the open transaction, then rejoin with a fresh consumer: assignment recovers every
        partition from its changelog and resumes at the committed offsets."""
        c = self.clients
        self.processor.replies.recheck()  # a reply topic deleted since it was checked may be why
        deadline = time.monotonic() + 300
        while True:
            try:
                self._bounded("abort_transaction", partial(c.producer.abort_transaction, 30), 30)
                # The aborted transaction's refusals, and its records purged by the abort ("Purged in
                # queue"): the re-read batch starts afresh.
                c.producer.poll(0)
                c.delivery_errors.clear()
                break
            except ClientStuck as e:
                c.replace(str(e))
                return
            except KafkaException as e:
                if e.args[0].fatal():
                    raise c.fatal_error(e.args[0], "aborting a transaction") from None
                if time.monotonic() > deadline:
                    raise DawnstreamError(f"could not abort the transaction: {e.args[0].str()}") from None
                time.sleep(1.0)
        c.rebuild_consumer(f"transaction aborted for partitions {sorted(partitions)}")
