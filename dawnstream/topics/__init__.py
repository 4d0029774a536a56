"""Topic specs, message codecs and dead-letter envelopes (no Kafka client code lives here)."""

from dawnstream.topics.codecs import CODECS, Codec, codec_for_content_type, get_codec
from dawnstream.topics.dlq import DLQ_HEADERS, dead_letter
from dawnstream.topics.message import Message, OutRecord, Rejected
from dawnstream.topics.schema import RowSchema
from dawnstream.topics.spec import TopicSpec, dlq_topic_name, validate_topic_name

__all__ = [
    "CODECS",
    "DLQ_HEADERS",
    "Codec",
    "Message",
    "OutRecord",
    "Rejected",
    "RowSchema",
    "TopicSpec",
    "codec_for_content_type",
    "dead_letter",
    "dlq_topic_name",
    "get_codec",
    "validate_topic_name",
]
