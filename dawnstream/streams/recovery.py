"""Recovery: rebuilding a newly assigned partition's operator state, as a phase of the main loop.

When a partition is assigned it is paused (no input is fetched for it) and queued here. Each turn
of the runner's loop advances one queued partition by one chunk: first the latest changelog
snapshot, then the input from the snapshot's offset up to the committed offset, re-processed with
outputs discarded (operators are deterministic per row, so the rebuilt state is the state at the
commit). When it reaches the committed offset the partition is resumed. Between chunks the loop
keeps consuming, so group heartbeats and ``max.poll.interval.ms`` stay satisfied however long a
recovery takes, and a revocation (another worker joined) simply drops the partition's unfinished
recovery. This is the shape of Quix Streams' ``RecoveryManager`` (``quixstreams/state/recovery.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition

from dawnstream.errors import DawnstreamError
from dawnstream.logs import event, get_logger
from dawnstream.streams.config import Topology
from dawnstream.streams.kafka_clients import consumer_settings
from dawnstream.streams.kafka_errors import MISSING_GRACE_S, explain, heals, is_missing
from dawnstream.streams.processor import BatchProcessor
from dawnstream.streams.state import keyed_at, read_records, snapshot_key, untag_keyed
from dawnstream.topics.message import KafkaMessage

log = get_logger(__name__)
GIVE_UP_S = 300.0
"""How long a recovery retries while the broker cannot be reached."""


@dataclass
class _Task:
    partition: int
    started: float = field(default_factory=time.monotonic)
    start: int | None = None  # snapshot offset, once loaded
    end: int = 0  # committed offset: where recovery stops
    pos: int = 0
    replayed: int = 0
    replay: Consumer | None = None
    stalled_since: float | None = None

    def close(self) -> None:
        if self.replay is not None:
            self.replay.close()
            self.replay = None


class Recovery:
    """The partitions of one worker whose state is being rebuilt.

    Args:
        topology: the job (input topic, group, chunk size = ``batch.max_messages``).
        processor: holds each partition's chain and schema; restored and fed here.
        base: client settings for the changelog reader and the replay consumer.
        changelog: the state changelog topic.
        consumer: returns the worker's current group consumer (it can be replaced).
        on_done: called with (partition, next input offset) once the partition is live again.
    """

    def __init__(self, topology: Topology, processor: BatchProcessor, base: dict, changelog: str,
                 consumer: Callable[[], Consumer], on_done: Callable[[int, int | None], None]) -> None:
        self.topology = topology
        self.processor = processor
        self.base = base
        self.changelog = changelog
        self.consumer = consumer
        self.on_done = on_done
        self.pending: dict[int, _Task] = {}
        self.chunk_messages = topology.batch.max_messages  # input messages re-processed per turn of the loop
        self.interrupted = 0  # recoveries dropped unfinished by a revocation
        self.replayed = 0  # input messages replayed by the finished recoveries

    def active(self, partition: int) -> bool:
        """True while ``partition``'s state is incomplete (it must not be snapshotted or fed)."""
        return partition in self.pending

    def assign(self, partitions: list[int]) -> None:
        """Queue newly assigned partitions and pause them until their state is rebuilt."""
        topic = self.topology.input.topic
        self.consumer().pause([TopicPartition(topic, p) for p in partitions])
        for p in partitions:
            self.revoke(p)
            self.processor.drop_partition(p)
            self.pending[p] = _Task(p)

    def revoke(self, partition: int) -> None:
        """Drop an unfinished recovery (the partition moved to another worker)."""
        task = self.pending.pop(partition, None)
        if task is not None:
            task.close()
            if task.start is not None:
                self.interrupted += 1
                event(log, "state.recovery_interrupted", partition=partition, replayed=task.replayed,
                      remaining=max(task.end - task.pos, 0))

    def clear(self) -> None:
        """Drop every recovery (the worker's clients were replaced)."""
        for p in list(self.pending):
            self.revoke(p)

    def step(self) -> None:
        """Advance the oldest queued recovery by one chunk.

        Raises:
            DawnstreamError: an error that does not heal (missing changelog, refused credentials), or
                the broker stayed away for :data:`GIVE_UP_S`.
        """
        if not self.pending:
            return
        task = next(iter(self.pending.values()))
        try:
            self._advance(task)
        except KafkaException as e:
            err = e.args[0]
            waited = time.monotonic() - task.started
            if not heals(err) or waited > GIVE_UP_S or (is_missing(err) and waited > MISSING_GRACE_S):
                raise explain(err, f"restoring partition {task.partition} from {self.changelog}") from None
            self._restart(task, err.str())
        except DawnstreamError as e:  # a replay that stalled (broker away): start the partition over
            if time.monotonic() - task.started > GIVE_UP_S:
                raise
            self._restart(task, str(e))

    def _restart(self, task: _Task, why: str) -> None:
        event(log, "state.restore_retry", partition=task.partition, error=why)
        task.close()
        self.processor.drop_partition(task.partition)
        self.pending[task.partition] = _Task(task.partition, started=task.started)
        time.sleep(1.0)

    def _advance(self, task: _Task) -> None:
        p = task.partition
        if task.start is None:
            blob_key, data = snapshot_key(p), None
            versions: dict[bytes, list[tuple[int, bytes | None]]] = {}
            for key, value in read_records(self.base, self.changelog, p):
                if key == blob_key:
                    data = value
                elif key is not None:
                    kept = versions.setdefault(key, [])
                    kept.append(untag_keyed(value))  # later records win; tombstones (None) delete
                    del kept[:-2]
            if data is None:
                return self._finish(task, None)
            task.start = self.processor.restore(p, data)
            self.processor.apply_keyed(p, keyed_at(versions, task.start))
            tp = self.consumer().committed([TopicPartition(self.topology.input.topic, p)], timeout=30)[0]
            task.end = int(tp.offset)
            if task.end < task.start and self.topology.guarantee == "at_least_once":
                # At-least-once writes a snapshot only after the outputs of every offset below it were
                # acknowledged; the offsets commit just after. A crash between the two leaves this state
                # ahead: it is right, and the input resumes from it.
                self.consumer().seek(TopicPartition(self.topology.input.topic, p, task.start))
                event(log, "state.ahead_of_commit", partition=p, snapshot_offset=task.start, committed=task.end)
                return self._finish(task, task.start)
            if task.end < task.start:
                # Snapshots commit in the same transaction as offsets at or past theirs, so this state is
                # from an earlier life of the input topic or consumer group (deleted and re-created).
                self.processor.drop_partition(p)
                event(log, "state.discarded", level=logging.WARNING, partition=p, snapshot_offset=task.start,
                      committed=task.end, reason="the snapshot is ahead of the committed offset")
                return self._finish(task, None)
            task.pos = task.start
            if task.end > task.start:
                task.replay = Consumer(consumer_settings(self.base, f"{self.topology.group_id}.replay", "earliest"))
                task.replay.assign([TopicPartition(self.topology.input.topic, p, task.start)])
        if task.pos < task.end:
            self._replay_chunk(task)
        if task.pos >= task.end:
            self._finish(task, max(task.start, task.end))

    def _replay_chunk(self, task: _Task) -> None:
        """Re-process up to ``chunk_messages`` input messages with outputs discarded (they were
        committed before)."""
        assert task.replay is not None
        topic, p = self.topology.input.topic, task.partition
        batch = [m for m in task.replay.consume(self.chunk_messages, timeout=1.0)
                 if m.error() is None and (m.offset() or 0) < task.end]
        if batch:
            self.processor.process(p, [KafkaMessage(m) for m in batch])
            task.replayed += len(batch)
        now_at: int | None = task.replay.position([TopicPartition(topic, p)])[0].offset
        if now_at is not None and now_at > task.pos:
            task.pos, task.stalled_since = now_at, None
        else:
            task.stalled_since = task.stalled_since or time.monotonic()
            if time.monotonic() - task.stalled_since > 60:
                raise DawnstreamError(f"could not replay partition {p} from {task.pos} to {task.end}")

    def _finish(self, task: _Task, position: int | None) -> None:
        task.close()
        self.replayed += task.replayed
        self.pending.pop(task.partition, None)
        self.consumer().resume([TopicPartition(self.topology.input.topic, task.partition)])
        if task.start is not None and position is not None:
            event(log, "state.restored", partition=task.partition, snapshot_offset=task.start, committed=task.end,
                  replayed=task.replayed)
        self.on_done(task.partition, position)
