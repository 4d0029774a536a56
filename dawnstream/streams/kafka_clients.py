"""librdkafka client settings (confluent-kafka) and topic administration.

Security settings (``security.protocol``, ``ssl.*``, ``sasl.*``) come from the topology's
``kafka.settings`` and from ``DAWNSTREAM_KAFKA_<SETTING>`` environment variables (dots as
underscores, e.g. ``DAWNSTREAM_KAFKA_SASL_PASSWORD``) and reach every client: consumer,
producer and admin. Values are never logged unredacted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from dawnstream.errors import DawnstreamError
from dawnstream.logs import event, get_logger
from dawnstream.streams.config import redact
from dawnstream.topics.spec import TopicSpec

log = get_logger(__name__)
ENV_PREFIX = "DAWNSTREAM_KAFKA_"


def env_settings() -> dict[str, str]:
    """librdkafka settings from ``DAWNSTREAM_KAFKA_*`` variables (``_`` -> ``.``, lower-case)."""
    out = {}
    for k, v in os.environ.items():
        if k.startswith(ENV_PREFIX) and k != ENV_PREFIX + "BOOTSTRAP":
            out[k[len(ENV_PREFIX):].lower().replace("_", ".")] = v
    return out


def base_settings(bootstrap: str | None = None, settings: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Common client settings: bootstrap (``$DAWNSTREAM_KAFKA_BOOTSTRAP`` overrides), then topology
    settings, then environment settings."""
    addr = os.environ.get(ENV_PREFIX + "BOOTSTRAP", bootstrap or "127.0.0.1:9092")
    conf: dict[str, Any] = {"bootstrap.servers": addr}
    conf.update(settings or {})
    conf.update(env_settings())
    return conf


PRODUCER_ONLY = ("linger.ms", "queue.buffering.max.ms", "batch.size", "batch.num.messages", "acks",
                 "compression.type", "compression.codec", "partitioner", "enable.idempotence")
"""Settings librdkafka warns about when a consumer gets them (a topology's ``kafka.settings`` serve both)."""


def client_only(conf: Mapping[str, Any], consumer: bool) -> dict[str, Any]:
    """``conf`` less the settings meant for the other kind of client (a consumer's or a producer's)."""
    if consumer:
        return {k: v for k, v in conf.items() if k not in PRODUCER_ONLY}
    return {k: v for k, v in conf.items() if not k.startswith(("fetch.", "isolation.", "auto.offset", "group."))}


def consumer_settings(base: Mapping[str, Any], group: str, start: str = "earliest", **extra: Any) -> dict[str, Any]:
    """Consumer for micro-batches: manual commits after delivery, offsets stored by us,
    ``read_committed`` so transactional outputs upstream are seen only once committed."""
    conf: dict[str, Any] = {}
    conf.update(
        {
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": start,
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.max.bytes": 64 << 20,
            "max.partition.fetch.bytes": 16 << 20,
            "queued.max.messages.kbytes": 256 * 1024,
            "session.timeout.ms": 6000,  # the broker's minimum: a dead worker's partitions move quickly
            "heartbeat.interval.ms": 1500,
        }
    )
    conf.update(client_only(base, consumer=True))  # `kafka.settings` (and DAWNSTREAM_KAFKA_*) win over these defaults,
    # except what the delivery guarantees rest on: offsets are committed by the runner, never automatically.
    conf.update({"group.id": group, "enable.auto.commit": False, "enable.auto.offset.store": False})
    conf.update(extra)
    return conf


def producer_settings(base: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """Producer tuned for throughput on one host: idempotent, acks=all, 5 ms linger, 1 MiB batches.
    The topology's ``kafka.settings`` win (a serving topology sets ``linger.ms: 0``)."""
    conf: dict[str, Any] = {}
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 1 << 20,
            "message.max.bytes": 16 << 20,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1 << 20,
        }
    )
    conf.update(client_only(base, consumer=False))
    conf.update({"enable.idempotence": True, "acks": "all"})  # retries must not duplicate records
    conf.update(extra)
    return conf


class TopicAdmin:
    """Create, list and describe topics (``confluent_kafka.admin.AdminClient``)."""

    def __init__(self, bootstrap: str | None = None, settings: Mapping[str, str] | None = None) -> None:
        conf = client_only(base_settings(bootstrap, settings), consumer=False)
        self.bootstrap = conf["bootstrap.servers"]
        self.admin = AdminClient(conf)

    def list_topics(self, timeout_s: float = 10.0) -> dict[str, int]:
        """``{topic: partition count}`` without internal topics.

        Raises:
            DawnstreamError: the cluster did not answer in ``timeout_s``.
        """
        try:
            md = self.admin.list_topics(timeout=timeout_s)
        except KafkaException as e:
            raise DawnstreamError(
                f"Kafka at {self.bootstrap} did not answer: {e}. Is the broker running? (dawnstream broker start)"
            ) from None
        return {name: len(t.partitions) for name, t in md.topics.items() if not name.startswith("__")}

    def ensure(self, specs: Iterable[TopicSpec], timeout_s: float = 30.0) -> list[str]:
        """Create missing topics; grow partition counts that are too small; return once the broker's
        metadata shows them all (:meth:`wait_visible`). Returns created names.

        Raises:
            DawnstreamError: the broker refused, or did not show the topics within ``timeout_s``.
        """
        specs = list(specs)
        existing = self.list_topics()
        new = [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=s.config)
            for s in specs
            if s.name not in existing
        ]
        created: list[str] = []
        if new:
            for name, fut in self.admin.create_topics(new, operation_timeout=timeout_s).items():
                try:
                    fut.result(timeout=timeout_s)
                    created.append(name)
                    event(log, "topic.created", topic=name)
                except KafkaException as e:
                    if "TOPIC_ALREADY_EXISTS" not in str(e):
                        raise DawnstreamError(f"could not create topic {name}: {e}") from None
        grow = [NewPartitions(s.name, s.partitions) for s in specs if existing.get(s.name, s.partitions) < s.partitions]
        if grow:
            for name, fut in self.admin.create_partitions(grow).items():
                fut.result(timeout=timeout_s)
                event(log, "topic.partitions_added", topic=name)
        if new or grow:
            self.wait_visible({s.name: s.partitions for s in specs}, timeout_s)
        return created

    def wait_visible(self, want: Mapping[str, int], timeout_s: float = 30.0) -> dict[str, int]:
        """Wait until the metadata shows every topic of ``want`` ({name: partitions}) with at least that
        many partitions; returns what it showed last. A broker applies a created topic to its metadata a
        little after the controller accepted it (KRaft), so a process started right after a create -
        another worker of the job - could otherwise find it missing.

        Raises:
            DawnstreamError: some are still missing after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            existing = self.list_topics()
            missing = sorted(n for n, p in want.items() if existing.get(n, 0) < p)
            if not missing:
                return existing
            if time.monotonic() >= deadline:
                raise DawnstreamError(f"topic(s) {', '.join(missing)} did not appear in the metadata of "
                                      f"{self.bootstrap} within {timeout_s:.0f}s of their creation")
            time.sleep(0.1)

    def describe(self, name: str, timeout_s: float = 10.0) -> dict[str, object]:
        """Partitions (leader, replicas, low/high offsets) and non-default configs of one topic.

        Raises:
            DawnstreamError: no such topic.
        """
        from confluent_kafka import Consumer, TopicPartition
        from confluent_kafka.admin import ConfigResource, ResourceType

        md = self.admin.list_topics(timeout=timeout_s)  # asking for one topic by name may auto-create it
        t = md.topics.get(name)
        if t is None or t.error is not None:
            raise DawnstreamError(f"topic {name!r} does not exist (dawnstream topics list shows what does)")
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "dawnstream.describe"})
        parts = []
        try:
            for pid, p in sorted(t.partitions.items()):
                low, high = consumer.get_watermark_offsets(TopicPartition(name, pid), timeout=timeout_s)
                parts.append({"partition": pid, "leader": p.leader, "replicas": list(p.replicas),
                              "low": low, "high": high, "messages": high - low})
        finally:
            consumer.close()
        res = ConfigResource(ResourceType.TOPIC, name)
        configs = self.admin.describe_configs([res])[res].result(timeout=timeout_s)
        overrides = {k: v.value for k, v in configs.items() if not v.is_default}
        return {"topic": name, "partitions": parts, "config": overrides}

    def reset(self, specs: Iterable[TopicSpec], timeout_s: float = 60.0) -> None:
        """Delete and re-create topics empty (demos, benchmarks); waits until deletion completed."""
        import time

        specs = list(specs)
        self.list_topics()  # a broker that does not answer is reported as such, in 10 s
        self.delete([s.name for s in specs], timeout_s)
        deadline = time.monotonic() + timeout_s
        while set(self.list_topics()) & {s.name for s in specs}:
            if time.monotonic() > deadline:
                raise DawnstreamError(f"topics {[s.name for s in specs]} were not deleted within {timeout_s}s")
            time.sleep(0.2)
        while True:
            try:
                self.ensure(specs, timeout_s)
                return
            except DawnstreamError as e:  # deletion still finishing on the broker
                if "marked for deletion" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def delete(self, names: Iterable[str], timeout_s: float = 30.0) -> None:
        """Delete topics (missing ones are ignored).

        Raises:
            DawnstreamError: the broker refused or did not answer within ``timeout_s``.
        """
        import concurrent.futures

        todo = [n for n in names]
        if not todo:
            return
        for name, fut in self.admin.delete_topics(todo, operation_timeout=timeout_s).items():
            try:
                fut.result(timeout=timeout_s)
            except KafkaException as e:
                if "UNKNOWN_TOPIC" not in str(e):
                    raise DawnstreamError(f"could not delete topic {name}: {e}") from None
            except concurrent.futures.TimeoutError:
                raise DawnstreamError(f"Kafka at {self.bootstrap} did not delete {name} within {timeout_s:.0f} s; "
                                      "is the broker running? (dawnstream broker status)") from None


TOPIC_WAIT_S = 10.0
"""How long a worker that does not create topics waits for missing ones to appear before it fails."""


def ensure_job_topics(topology: Any, create_user_topics: bool = True) -> None:
    """Make sure a job's topics exist before it runs: the internal ones (the state changelog) always,
    the user's (input, dead letters, outputs) created when ``create_user_topics``, else checked.

    Raises:
        TopicMissing: a user topic is missing and may not be created (the message says how to).
        DawnstreamError: the broker did not answer or refused.
    """
    from dawnstream.streams.kafka_errors import TopicMissing
    from dawnstream.streams.state import changelog_spec

    t = topology
    admin = TopicAdmin(t.kafka.bootstrap, t.kafka.settings)
    # ``state.*`` topics are the job's own (its changelog, a group_by's repartition topic): always created
    topics = t.user_topics()
    users = [s for s in topics if not s.name.startswith("state.")]
    internal = [changelog_spec(t.name, t.input.partitions), *(s for s in topics if s.name.startswith("state."))]
    if create_user_topics:
        admin.ensure(users + internal)
        return
    existing = admin.list_topics()
    missing = [s.name for s in users if s.name not in existing]
    if missing:  # just created by another process (the job's first worker)? metadata can lag a moment
        try:
            admin.wait_visible(dict.fromkeys(missing, 1), timeout_s=TOPIC_WAIT_S)
        except DawnstreamError:
            raise TopicMissing(missing, t.input.partitions if t.input.topic in missing else None) from None
    admin.ensure(internal)


def describe_settings(conf: Mapping[str, Any]) -> dict[str, str]:
    """Client settings safe to log."""
    return redact({k: str(v) for k, v in conf.items()})
