"""Topic specifications and the ``<domain>.<dataset>.<event>.v<N>`` naming convention."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dawnstream.errors import ConfigError

TOPIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.[a-z0-9][a-z0-9_-]*\.[a-z0-9][a-z0-9_-]*\.v[0-9]+$")
DLQ_SUFFIX = ".dlq"
MAX_PARTITIONS = 10_000
"""Most partitions a topic spec may ask for (Kafka's practical per-cluster scale is far below a million)."""


def validate_topic_name(name: str, path: str = "topic") -> str:
    """Check ``name`` follows ``<domain>.<dataset>.<event>.v<N>`` (or that plus ``.dlq``).

    Raises:
        ConfigError: with ``path`` and an example of a valid name.
    """
    base = name[: -len(DLQ_SUFFIX)] if name.endswith(DLQ_SUFFIX) else name
    if not TOPIC_NAME.match(base):
        raise ConfigError(
            path,
            f"topic name {name!r} must look like <domain>.<dataset>.<event>.v<N>, "
            "lower-case, e.g. 'sensors.flights.rows.v1'",
        )
    return name


def topic_field(v: str) -> str:
    """Pydantic field validator: a valid topic name, else ValueError with what is expected."""
    try:
        return validate_topic_name(v, "name")
    except ConfigError as e:
        raise ValueError(e.message) from None


def codec_field(v: str) -> str:
    """Pydantic field validator: a registered codec name, else ValueError listing them."""
    from dawnstream.topics.codecs import CODECS

    if v not in CODECS:
        raise ValueError(f"unknown codec {v!r}; expected one of {sorted(CODECS)}")
    return v


def dlq_topic_name(topic: str) -> str:
    """Dead-letter topic of ``topic``: ``<topic>.dlq``."""
    return topic + DLQ_SUFFIX


class TopicSpec(BaseModel):
    """What a topic is and how its messages are encoded.

    Attributes:
        name: ``<domain>.<dataset>.<event>.v<N>``.
        partitions: partition count (unit of parallelism), >= 1.
        replication_factor: 1 on a single local broker.
        key_field: column whose value becomes the message key (rows/requests), or ``None``.
        codec: ``json`` | ``arrow`` | ``frames`` | ``requests``.
        config: topic configs passed to Kafka as-is, e.g. ``{"retention.ms": "86400000"}``
            or ``{"cleanup.policy": "compact"}``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    partitions: int = Field(default=1, ge=1, le=MAX_PARTITIONS)
    replication_factor: int = Field(default=1, ge=1)
    key_field: str | None = None
    codec: str = "json"
    config: dict[str, str] = Field(default_factory=dict)

    _name = field_validator("name")(topic_field)
    _codec = field_validator("codec")(codec_field)

    @field_validator("config", mode="before")
    @classmethod
    def _config(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): str(val).lower() if isinstance(val, bool) else str(val) for k, val in v.items()}
        return v

    def dlq(self) -> TopicSpec:
        """The spec of this topic's dead-letter topic (same partitions, 7 days retention, records up to 16 MiB:
        a dead letter is the whole message plus its ``dlq.*`` headers, :mod:`dawnstream.topics.dlq`)."""
        return TopicSpec(
            name=dlq_topic_name(self.name),
            partitions=self.partitions,
            replication_factor=self.replication_factor,
            codec=self.codec,
            config={"retention.ms": str(7 * 24 * 3600 * 1000), "max.message.bytes": str(16 << 20)},
        )
