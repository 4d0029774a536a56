"""Which Kafka client errors heal by themselves, and what to tell the user about the ones that don't.

A worker retries what can heal: a broker it cannot reach (yet), a coordinator that moves or is
loading, a leader election. Everything else (a topic or partition that does not exist, an
authorization or authentication failure, a bad setting, a fenced producer) is reported at once
with what to do, instead of being retried for minutes (Kafka Streams draws the same line between
retriable and fatal errors for its uncaught-exception handler).

Error codes are librdkafka's (``confluent_kafka.KafkaError``); names with a leading underscore
are client-side ("local") errors.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

from dawnstream.errors import DawnstreamError

MISSING = frozenset({KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART})
"""The topic or partition does not exist (right after it is created, metadata may lag for a moment)."""

DENIED = frozenset({
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION, KafkaError._SSL,
})
"""Credentials or ACLs refuse this worker: retrying cannot change that."""

FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})
"""Another producer with the same ``transactional.id`` took over."""

HEALS = frozenset({
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT,
    KafkaError._WAIT_COORD, KafkaError._RESOLVE, KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.NETWORK_EXCEPTION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.REBALANCE_IN_PROGRESS, KafkaError._STATE,
})
"""Transport and coordination errors that go away once the broker answers again."""

MISSING_GRACE_S = 10.0
"""How long a missing topic or partition is waited for (metadata of a just-created topic)."""


def heals(err: KafkaError) -> bool:
    """True when retrying ``err`` can succeed later (transport, coordinator, leadership).

    A missing topic counts as healing only for :data:`MISSING_GRACE_S`: callers check
    :func:`is_missing` first and give up after that grace.
    """
    code = err.code()
    if code in DENIED or code in FENCED or err.fatal():
        return False
    return code in HEALS or code in MISSING or bool(err.retriable())


def is_missing(err: KafkaError) -> bool:
    """The topic or partition named in the request does not exist."""
    return err.code() in MISSING


class TopicMissing(DawnstreamError):
    """Topics the worker needs do not exist, and this worker may not create them."""

    def __init__(self, topics: list[str], partitions: int | None = None) -> None:
        self.topics = topics
        create = "; ".join(f"dawnstream topics create {t}" + (f" --partitions {partitions}" if partitions else "")
                           for t in topics)
        super().__init__(
            f"topic(s) {', '.join(topics)} do not exist and this worker does not create topics "
            f"(--no-create-topics, or the broker's auto-creation is off): create them ({create}), "
            "or run without --no-create-topics"
        )


def explain(err: KafkaError, what: str) -> DawnstreamError:
    """A :class:`DawnstreamError` for an error that does not heal: what failed, why, and what to do.

    Args:
        err: the client error.
        what: what the worker was doing, e.g. ``"restoring partition 3 from state.x.changelog.v1"``.
    """
    code = err.code()
    if code in FENCED or "fenced" in err.str().lower():
        return DawnstreamError(
            f"{what}: this worker was fenced ({err.str()}): another worker with the same transactional id "
            "(same topology, host and worker index) started and owns its partitions now. Run each worker "
            "with its own index (dawnstream run --workers N numbers them) and stop stray copies")
    if code in DENIED:
        return DawnstreamError(
            f"{what}: the broker refused this worker ({err.str()}): check the credentials and ACLs in "
            "kafka.settings / DAWNSTREAM_KAFKA_* (the principal needs read, write and transactional-id rights)")
    if code in MISSING:
        return DawnstreamError(f"{what}: {err.str()}: the topic or partition does not exist "
                               "(dawnstream topics list shows what does)")
    return DawnstreamError(f"{what}: {err.str()}")
