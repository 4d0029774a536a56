"""The Kafka runner: consume micro-batches, process per partition, produce, then commit.

One :class:`KafkaRunner` is one member of the job's consumer group. Its loop, per turn: advance the
recovery of newly assigned partitions by one chunk (:mod:`~dawnstream.streams.recovery`), consume
a micro-batch, run each partition's operator chain over it (:class:`~dawnstream.streams.processor.BatchProcessor`),
and commit outputs, dead letters, due state snapshots and consumed offsets together
(:mod:`~dawnstream.streams.checkpoint`: one Kafka transaction under exactly-once, the default).
The clients live in :mod:`~dawnstream.streams.clients`.

Failures: transport errors are retried; errors that cannot heal (a missing topic, refused
credentials, a fenced producer, an operator bug) end :meth:`KafkaRunner.run` with a
:class:`~dawnstream.errors.DawnstreamError` (or the operator's exception) after marking
``/healthz`` failed - see :mod:`dawnstream.streams.kafka_errors` and :mod:`dawnstream.streams.workers`.

Parallelism is by partition: N runners in one consumer group share the input partitions, each
keeping operator state per partition (``BatchProcessor.chains``).
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from dawnstream.errors import ConfigError, DawnstreamError
from dawnstream.logs import event, get_logger
from dawnstream.streams.checkpoint import Checkpoint
from dawnstream.streams.clients import WorkerClients
from dawnstream.streams.config import Topology
from dawnstream.streams.global_table import GlobalTopicReader, global_spec
from dawnstream.streams.kafka_clients import base_settings, describe_settings, ensure_job_topics
from dawnstream.streams.metrics import MetricsServer, RunnerStats, WorkerMetrics
from dawnstream.streams.processor import BatchProcessor, BatchResult
from dawnstream.streams.recovery import Recovery
from dawnstream.streams.reply_fence import ReplyFence
from dawnstream.streams.state import changelog_topic
from dawnstream.topics.message import KafkaMessage, Message

log = get_logger(__name__)
ANSWERING_STAGES = ("serve", "predict")
"""Stages that reply to requests (their at-least-once jobs get a :class:`ReplyFence`)."""
LAG_REFRESH_S = 2.0
IDLE_POLL_S = 0.05
"""With ``batch.max_wait_ms: 0``, how long one consume call waits for a first message while idle (s): the
loop still ticks, refreshes lag and sees a stop request this often."""


class KafkaRunner:
    """Runs one topology as one member of its consumer group.

    Args:
        topology: validated topology.
        worker: worker index (metrics port offset, client ids, transactional id).
        create_topics: create missing input/output/dead-letter topics at start; when False they
            must exist (``TopicMissing`` otherwise). Internal topics (the state changelog)
            are always ensured.
        metrics_port: overrides ``topology.metrics.port + worker`` (0 = pick a free port,
            -1 = no HTTP endpoint). ``metrics.port: 0`` in the topology also turns it off.
        on_batch: optional callback after each committed batch (progress displays, tests).
        snapshot_on_stop: a clean stop (``stop``, SIGTERM, ``max_rows``, ``max_idle_s``) snapshots every
            partition whose state moved since its last snapshot, so the next start replays no input
            (:meth:`~dawnstream.streams.checkpoint.Checkpoint.snapshot_on_stop`).
        restarts: how many times the supervisor replaced this worker index before (``dawnstream_worker_info``).

    Call :meth:`run` (blocks until :meth:`stop`, SIGTERM/SIGINT, or ``max_idle_s`` without input).

    Raises:
        ~dawnstream.streams.kafka_errors.TopicMissing: a user topic is missing and ``create_topics`` is False.
        ConfigError: ``metrics.port`` cannot be bound.
        DawnstreamError: the broker cannot be reached or refuses the worker.
    """

    def __init__(self, topology: Topology, worker: int = 0, create_topics: bool = True,
                 metrics_port: int | None = None,
                 on_batch: Callable[[KafkaRunner, BatchResult], None] | None = None,
                 snapshot_on_stop: bool = True, restarts: int = 0) -> None:
        t = self.topology = topology
        if any(st.op == "group_by" for st in t.stages):
            raise ConfigError("stages", "a topology with a group_by stage runs as two jobs: give each of "
                                        "topology.split() a runner (dawnstream run does)")
        if t.input.feedback_topic is not None:
            raise ConfigError("input.feedback_topic", "a topology with a feedback topic runs as two jobs: give each "
                                                      "of topology.split() a runner (dawnstream run does)")
        self.snapshot_on_stop = snapshot_on_stop
        self.worker = worker
        self.processor = BatchProcessor(topology)
        self.processor.preflight()  # a stage that cannot run at all fails the job here, saying why
        self.stats = RunnerStats()
        self.metrics = WorkerMetrics(topology.name, worker)
        self.metrics.describe(t.guarantee, t.group_id, t.input.topic, [o.topic for o in t.outputs], restarts)
        self.on_batch = on_batch
        self._stop = threading.Event()
        self.assigned: set[int] = set()
        self.failure: BaseException | None = None  # why run() ended, when it did not end cleanly
        self._position: dict[int, int] = {}  # next input offset per live partition, as far as state reflects
        self._outputs = [o.topic for o in t.outputs]
        self.base = base_settings(t.kafka.bootstrap, t.kafka.settings)
        ensure_job_topics(t, create_topics)
        self.changelog = changelog_topic(t.name)
        self.eos = t.guarantee == "exactly_once"
        self.recovery = Recovery(t, self.processor, self.base, self.changelog, lambda: self.clients.consumer,
                                 self._recovered)
        self.clients = WorkerClients(t, worker, self.base, self._forget_all)
        # Reply topics a request names: asked of the broker before producing, and refused deliveries noted,
        # so a missing or forbidden one dead-letters its requests instead of stalling or failing the worker.
        self.processor.replies.broker_check = self._reply_topic_refusal
        self.clients.delivery_errors.listeners.append(self.processor.replies.refused)
        self.checkpoint = Checkpoint(self.clients, self.processor, self.changelog, t.checkpoint_ms,
                                     skip_snapshot=self.recovery.active)
        self.global_reader: GlobalTopicReader | None = None
        self._global_read = False
        if self.processor.global_topic is not None:
            # Stages that learn from every partition (one label model per topology): rows leave at ticks, and
            # the worker keeps a copy of the job's global topic (streams.global_table).
            from dawnstream.streams.kafka_clients import TopicAdmin

            TopicAdmin(t.kafka.bootstrap, t.kafka.settings).ensure([global_spec(t.name)])
            self.processor.hold_until_tick = True
            self.global_reader = GlobalTopicReader(self.base, self.processor.global_topic, self.processor.global_table)
            # Offsets and watermarks asked of a client that fetches nothing: on the group consumer's connection
            # each answer would queue behind a long-polling fetch (~0.2 s each).
            from dawnstream.streams.kafka_clients import client_only

            self._offsets = Consumer({**client_only(self.base, consumer=True), "group.id": t.group_id,
                                      "enable.auto.commit": False})
        # Only stages that answer requests are fenced: feedback moved onto a serving topic shares its request's
        # correlation-id, so a fence there would take a re-read piece of feedback for an answered one and drop it.
        answers = any(st.op in ANSWERING_STAGES for st in t.stages)
        self.fence = ReplyFence(self.base, t.input.topic, enabled=not self.eos and answers, start=t.input.start)
        event(log, "runner.clients", worker=worker, settings=describe_settings(self.base))
        self.metrics.init_series(t.input.topic, self._outputs, [op.name for op in t.build_chain().operators])
        port = (t.metrics.port + worker if t.metrics.port else -1) if metrics_port is None else metrics_port
        self.metrics_server: MetricsServer | None = None
        if port >= 0:
            try:
                self.metrics_server = MetricsServer(self.metrics, t.metrics.host, port).start()
            except OSError as e:
                raise ConfigError("metrics.port", f"cannot serve metrics on {t.metrics.host}:{port} "
                                                  f"({e.strerror}): another process uses it; pick a free port, "
                                                  "or 0 to turn the endpoint off") from None
            event(log, "metrics.listening", host=t.metrics.host, port=self.metrics_server.port)

    @property
    def consumer(self) -> Consumer:
        """The worker's current group consumer (it is replaced after a fatal error or a hung call)."""
        return self.clients.consumer

    # -- group membership ---------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Assign, then pause until recovery has rebuilt their state in the main loop (never in here:
        # a long recovery inside this callback would outlive max.poll.interval.ms).
        consumer.incremental_assign(partitions)
        self.recovery.assign([p.partition for p in partitions])
        self.assigned |= {p.partition for p in partitions}
        self.metrics.assigned.labels(self.topology.name).set(len(self.assigned))
        event(log, "partitions.assigned", worker=self.worker, partitions=sorted(p.partition for p in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Every batch is committed before consume() is called again, so nothing is pending here.
        for p in partitions:
            self._forget(p.partition)
        self.metrics.assigned.labels(self.topology.name).set(len(self.assigned))
        event(log, "partitions.revoked", worker=self.worker, partitions=sorted(p.partition for p in partitions))

    def _forget(self, partition: int) -> None:
        self.recovery.revoke(partition)
        self.assigned.discard(partition)
        self.processor.drop_partition(partition)
        self.checkpoint.forget(partition)
        self.fence.forget(partition)
        self._position.pop(partition, None)
        self.metrics.forget_partition(self.topology.input.topic, partition)

    def _forget_all(self) -> None:
        for p in list(self.assigned | set(self.recovery.pending)):
            self._forget(p)

    def _recovered(self, partition: int, position: int | None) -> None:
        self.fence.recovered(self.clients.consumer, partition, position)
        if position is not None:
            self._position[partition] = position

    # -- the loop -----------------------------------------------------------------------------
    def _refresh_upstream(self) -> None:
        """After a ``group_by``: tell the windows which upstream partitions hold rows at all (their end
        offset past their start), so an empty one - fewer keys than partitions, a topic grown after it
        was filled - does not hold every window open. Kept as it was when the broker does not answer."""
        topic = self.topology.input.upstream_topic
        if topic is None:
            return
        try:
            md = self.consumer.list_topics(topic, timeout=5).topics.get(topic)
            if md is None or md.error is not None:
                return
            active = set()
            for p in md.partitions:
                lo, hi = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                if hi > lo:
                    active.add(p)
        except KafkaException:
            return
        if active != self.processor.upstream_active:
            event(log, "upstream.partitions", topic=topic, with_rows=sorted(active), partitions=len(md.partitions))
            self.processor.set_upstream_active(active)

    def _refresh_global(self) -> None:
        """The input partitions a global stage learns from: those holding rows (all, while none does), so an
        empty partition does not hold every model back. Kept as it was when the broker does not answer."""
        if self.global_reader is None:
            return
        topic = self.topology.input.topic
        client = self._offsets
        try:
            md = client.list_topics(topic, timeout=5).topics.get(topic)
            if md is None or md.error is not None:
                return
            tps = [TopicPartition(topic, p) for p in md.partitions]
            committed = {tp.partition: tp.offset for tp in client.committed(tps, timeout=5)}
            active, drained = set(), set()
            for p in md.partitions:
                lo, hi = client.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                if hi > lo:
                    active.add(p)
                done = self._position.get(p) if p in self.assigned else committed.get(p)
                if hi <= lo or (done is not None and done >= hi):
                    drained.add(p)
            # A partition read to its end published its blocks in the transactions that committed its offsets:
            # read the global topic up to now before trusting that a block it has not published will not come.
            self.global_reader.catch_up(quiet=self._global_read, offsets=client)
            self._global_read = True
        except KafkaException:
            return
        active = active or set(md.partitions)
        if active != self.processor.global_partitions:
            event(log, "global.partitions", topic=topic, with_rows=sorted(active), partitions=len(md.partitions))
        self.processor.set_global_partitions(active, drained)

    def _settle(self, limit_s: float) -> None:
        """Before a clean stop: label the rows global stages hold, as their models come in (up to ``limit_s``)."""
        if self.global_reader is None:
            return
        end = time.monotonic() + limit_s
        last = 0.0
        while self.processor.holding() and time.monotonic() < end:
            self.global_reader.poll(0.1)
            if time.monotonic() - last > LAG_REFRESH_S / 2:
                self._refresh_global()
                last = time.monotonic()
            self._tick()
        if self.processor.holding():
            event(log, "global.still_holding", level=logging.WARNING, rows=self.processor.holding(),
                  note="kept in the state snapshot; the next start labels them")

    def _reply_topic_refusal(self, topic: str) -> str | None:
        """Why the broker will not take replies on ``topic`` (missing, not authorized), or None; None
        too when the broker does not answer (the produce path waits for it as for any output)."""
        try:
            md = self.clients.producer.list_topics(topic, timeout=5)
        except KafkaException:
            return None
        tm = md.topics.get(topic)
        code = tm.error.code() if tm is not None and tm.error is not None else None
        if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            return (f"reply-to {topic!r}: this worker is not authorized to write it (the broker refused): nothing "
                    "was answered; grant the worker's principal WRITE on it, or have the caller use another")
        if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return (f"reply-to {topic!r} does not exist on the broker: nothing was answered; create it (the "
                    "broker does not create topics on first use), or have the caller name one that exists")
        return None  # there, or a transient answer (leader moving): the produce path copes with those

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
            max_idle_s: return after this long without any message (tests, one-shot jobs); time spent
                recovering state does not count.
            max_rows: return once this many input rows were processed and committed.
            drain: on a normal exit, flush the operators (open windows, last explanations) and
                produce what they emit - for finite inputs such as a replayed file.

        Raises:
            DawnstreamError: an error that cannot heal (see the module docstring); any exception an
                operator raises that is not a data error.
        """
        t = self.topology
        self.clients.subscribe(on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        self.metrics.status = {**self.metrics.status, "state": "running"}
        event(log, "runner.start", worker=self.worker, topology=t.name, group=t.group_id, input=t.input.topic)
        last_msg, last_lag = time.monotonic(), 0.0
        self._refresh_upstream()
        self._refresh_global()
        wait_s = t.batch.max_wait_ms / 1000.0
        try:
            while not self._stop.is_set():
                if self.clients.fatal is not None:
                    self.clients.rebuild_consumer()
                if self.recovery.pending:
                    self.recovery.step()
                    last_msg = time.monotonic()
                msgs = self._consume(0 if self.recovery.pending else wait_s)
                if self.global_reader is not None:
                    self.global_reader.poll(0)
                now = time.monotonic()
                if msgs:
                    if self.stats.first_message is None:
                        self.stats.first_message = now
                    if self._process(msgs):
                        last_msg = now
                        if self.stats.batches == 1:
                            # What the first batch loaded (lazily imported libraries, models) lives as long
                            # as the worker: out of the collector's sight, a full collection takes ms, not tens.
                            gc.freeze()
                elif max_idle_s is not None and now - last_msg > max_idle_s:
                    break
                elif self.global_reader is not None and now - last_lag > 0.25 and self.processor.holding():
                    self._refresh_global()  # idle with rows held: are the partitions they wait for drained?
                if now - last_lag > LAG_REFRESH_S:
                    self.metrics.refresh(self.consumer, t.input.topic, sorted(self._position), self.processor.chains)
                    self._refresh_upstream()
                    self._refresh_global()
                    last_lag = now
                self._tick()
                if max_rows is not None and self.stats.rows_in >= max_rows:
                    break
            if drain:
                final = self.processor.flush()
                self.checkpoint.begin()
                self.checkpoint.produce(final)
                self.checkpoint.commit_final()
                self._account([final], 0.0)
            elif self.snapshot_on_stop:
                # held rows are safe in the snapshot: a stop waits for them only briefly (a drained input
                # releases them within a second or two)
                self._settle(min(self._global_wait_s(), 10.0))
                self.checkpoint.snapshot_on_stop({p: off - 1 for p, off in self._position.items()})
        except Exception as e:
            self._fail(e)
            raise
        finally:
            self.close()
        return self.stats

    def _consume(self, wait_s: float) -> list[Any]:
        """The next micro-batch: up to ``batch.max_messages``, waiting up to ``wait_s`` for it to fill.
        ``max_wait_ms: 0`` never waits for a batch to fill: the first message is returned with whatever is
        already queued behind it, so an idle worker answers at once and a busy one batches what arrived
        while it worked (Clipper's batch queue, NSDI'17 section 4.3)."""
        n = self.topology.batch.max_messages
        if wait_s > 0 or self.recovery.pending:
            return self.consumer.consume(num_messages=n, timeout=wait_s)
        first = self.consumer.consume(num_messages=1, timeout=IDLE_POLL_S)
        if not first or n == 1:
            return first
        return first + self.consumer.consume(num_messages=n - 1, timeout=0)

    def _fail(self, e: BaseException) -> None:
        """Record why the loop ended: ``/healthz`` answers 503 with the reason; logged once here."""
        self.failure = e
        reason = str(e) if isinstance(e, DawnstreamError) else f"{type(e).__name__}: {e}"
        self.metrics.status = {**self.metrics.status, "state": "failed", "error": reason}
        event(log, "runner.failed", level=logging.ERROR, worker=self.worker, topology=self.topology.name,
              error=reason, exc_info=None if isinstance(e, DawnstreamError) else e)

    def _tick(self) -> None:
        """Wall-clock emissions (e.g. ``emit_seconds``). Under exactly-once they are a transaction of
        their own together with fresh snapshots of every live partition, so a restart neither repeats
        nor loses them. At-least-once, also the commit an idle worker still owes (``Checkpoint.idle``)."""
        tick = self.processor.tick(int(time.time() * 1000), skip=self.recovery.active)
        if not self.eos:
            self.checkpoint.produce(tick)
            self.checkpoint.idle()
        elif tick.outputs or tick.published or tick.touched:
            self.checkpoint.begin()
            self.checkpoint.produce(tick)
            touched = {p: off - 1 for p, off in self._position.items() if p in tick.touched}
            self.checkpoint.snapshots(touched, force=True)
            if self.checkpoint.commit([], sorted(self._position), {}):
                self._account([tick], 0.0)

    def _global_wait_s(self) -> float:
        waits = [getattr(op, "global_wait_s", 0.0) for c in self.processor.chains.values() for op in c.operators]
        return max(waits, default=0.0)

    def _process(self, msgs: list[Any]) -> bool:
        t0 = time.perf_counter()
        by_partition: dict[int, list[Message]] = {}
        first_offset: dict[int, int] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                self.clients.consume_error(err)
                continue
            p = m.partition()
            lst = by_partition.get(p)
            if lst is None:
                lst = by_partition[p] = []
                first_offset[p] = m.offset()
            lst.append(KafkaMessage(m))
        for p in [p for p in by_partition if self.recovery.active(p)]:
            del by_partition[p]  # fetched just before the pause took effect: read again once recovered
        if not by_partition:
            return False
        self.clients.consumed()
        last_offset = {p: lst[-1].offset for p, lst in by_partition.items()}
        self._position.update({p: off + 1 for p, off in last_offset.items()})
        offsets = [TopicPartition(self.topology.input.topic, p, off + 1) for p, off in last_offset.items()]
        self.checkpoint.begin()
        results = []
        for p, pmsgs in by_partition.items():
            res = self.processor.process(p, pmsgs)
            self.fence.filter(p, pmsgs, res.outputs)
            self.checkpoint.produce(res)
            results.append(res)
        self.checkpoint.snapshots(last_offset)
        t_commit = time.perf_counter()
        if self.checkpoint.commit(offsets, list(by_partition), first_offset):
            self.metrics.commit_seconds.labels(self.topology.name).observe(time.perf_counter() - t_commit)
            self._account(results, time.perf_counter() - t0)
        return True

    def _account(self, results: list[BatchResult], seconds: float) -> None:
        for res in results:
            self.stats.rows_in += res.rows_in
            self.stats.rows_out += res.rows_out
            self.stats.rows_dead += res.rows_dead
            self.stats.records_out += sum(len(enc) for _, enc in res.outputs)
            self.metrics.account(self.topology.input.topic, self._outputs, res)
            if self.on_batch is not None:
                self.on_batch(self, res)
        self.stats.batches += 1
        self.metrics.batch_seconds.labels(self.topology.name).observe(seconds)
        self.metrics.last_batch = time.time()

    def close(self) -> None:
        """Flush what is queued, leave the group, stop the metrics endpoint (idempotent)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if not self.failure:
            self.metrics.status = {**self.metrics.status, "state": "stopping"}
        self.recovery.clear()
        # After a failure the clients may be unusable (a fenced producer's flush fails inside the
        # library): nothing here may replace the error that ended the loop.
        for what, fn in (("producer.flush", lambda: self.clients.producer.flush(30)),
                         ("consumer.close", self.checkpoint.close_consumer)):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                event(log, "runner.close_failed", level=logging.WARNING, step=what, error=f"{type(e).__name__}: {e}")
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.global_reader is not None:
            try:
                self.global_reader.close()
                self._offsets.close()
            except Exception as e:  # noqa: BLE001
                event(log, "runner.close_failed", level=logging.WARNING, step="global.close", error=str(e))
        s = self.stats
        event(log, "runner.stop", worker=self.worker, rows_in=s.rows_in, rows_out=s.rows_out,
              rows_dead=s.rows_dead, batches=s.batches, replies_fenced=self.fence.dropped)
