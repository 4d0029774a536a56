"""Prediction requests and responses: a JSON body plus ``correlation-id``/``reply-to``.

Follows Kafka request/reply as in Spring Kafka's ``ReplyingKafkaTemplate`` and Faust's
``agent.ask``: the requester sets ``correlation-id`` (required) and ``reply-to`` (topic for the
answer); each response carries the same ``correlation-id`` and is produced to that topic.
"""

from __future__ import annotations

import pyarrow as pa

from dawnstream.topics.codecs.base import CONTENT_TYPE_HEADER, Codec, Decoded
from dawnstream.topics.codecs.json_rows import JsonRowsCodec
from dawnstream.topics.message import Encoded, Headers, Message, Rejected
from dawnstream.topics.reply_topics import ReplyTopics
from dawnstream.topics.schema import RowSchema

CORRELATION_ID = "correlation-id"
REPLY_TO = "reply-to"
TIMESTAMP = "kafka_timestamp_ms"
"""Column of each request's Kafka message timestamp (ms since the epoch; 0 when unknown): the event time
a serving stage measures feedback delays in. A body field of that name is replaced: event time comes from
Kafka, not from the sender."""
REQUEST_ERROR = "request_error"
"""Column of the rows standing for requests whose body could not be read (the reason); the serving
stage answers them with an error reply, so a caller is never left waiting."""


class RequestsCodec(Codec):
    """Requests: one JSON object (one row) per message, with request headers added as columns.

    Decoded rows gain ``correlation_id`` (string) and ``reply_to`` (string, null when absent).
    A message with a correlation-id and a ``reply-to`` whose body is malformed (not JSON, a value of
    the wrong type) becomes a row with only those two columns and ``request_error`` (the reason),
    in its place in message order: the caller gets an error reply instead of silence. Without
    ``reply-to`` there is nobody to answer, and it goes to the dead-letter topic.
    ``encode`` writes one JSON response per row with the ``correlation-id`` header, addressed to the
    row's ``reply_to`` topic when set.

    A ``reply-to`` that ``replies`` refuses (:class:`~dawnstream.topics.reply_topics.ReplyTopics`: not a
    topic name, internal, the job's own, not declared) dead-letters its message with the reason: nothing
    is produced there and nothing of the message is processed.

    Args:
        max_message_bytes: as :class:`~.json_rows.JsonRowsCodec`.
        replies: the topics replies may go to (default: any valid topic that is not internal).
    """

    name = "requests"
    content_type = "application/json"

    def __init__(self, max_message_bytes: int = 1 << 20, replies: ReplyTopics | None = None) -> None:
        self._json = JsonRowsCodec(max_message_bytes=max_message_bytes)
        self.replies = replies or ReplyTopics(None)

    def decode(self, messages: list[Message], schema: RowSchema) -> Decoded:
        rejected: list[Rejected] = []
        ok_idx: list[int] = []
        for i, m in enumerate(messages):
            cid = m.header(CORRELATION_ID)
            reply_to = m.header(REPLY_TO)
            why = self.replies.refusal(reply_to.decode("utf-8", "replace")) if reply_to else None
            if not cid:
                rejected.append(Rejected(m, "request without a correlation-id header"))
            elif why is not None:
                rejected.append(Rejected(m, why))
            else:
                ok_idx.append(i)
        sub = [messages[i] for i in ok_idx]
        inner = self._json.decode(sub, schema)
        answer: list[tuple[int, str]] = []  # malformed requests that name a reply-to topic
        where = {id(m): j for j, m in enumerate(sub)}
        for r in inner.rejected:
            if r.message.header(REPLY_TO):
                answer.append((ok_idx[where[id(r.message)]], r.reason))
            else:
                rejected.append(r)
        if inner.table is None and not answer:
            return Decoded(None, rejected=rejected)
        kept = [ok_idx[j] for j in inner.kept]
        table = inner.table.append_column("correlation_id", _header_column(messages, kept, CORRELATION_ID)) \
            .append_column("reply_to", _header_column(messages, kept, REPLY_TO)) if inner.table is not None else None
        if table is not None:
            if TIMESTAMP in table.column_names:  # a body may not set its own event time
                table = table.drop_columns([TIMESTAMP])
            table = table.append_column(TIMESTAMP, pa.array([messages[i].timestamp_ms for i in kept], pa.int64()))
        if answer:
            bad = [i for i, _ in answer]
            errors = pa.table({"correlation_id": _header_column(messages, bad, CORRELATION_ID),
                               "reply_to": _header_column(messages, bad, REPLY_TO),
                               REQUEST_ERROR: pa.array([why for _, why in answer], pa.string()),
                               TIMESTAMP: pa.array([messages[i].timestamp_ms for i in bad], pa.int64())})
            table = errors if table is None else pa.concat_tables([table, errors], promote_options="default")
            kept = kept + bad
            order = sorted(range(len(kept)), key=kept.__getitem__)  # back to message order
            table = table.take(pa.array(order, pa.int64()))
            kept = [kept[j] for j in order]
        return Decoded(table, kept, [1] * len(kept), rejected)

    def encode(self, batch: pa.RecordBatch, key_field: str | None = None) -> Encoded:
        names = batch.schema.names
        cids = batch.column("correlation_id").to_pylist() if "correlation_id" in names else [None] * batch.num_rows
        replies = batch.column("reply_to").to_pylist() if "reply_to" in names else [None] * batch.num_rows
        body = batch.drop_columns([c for c in ("correlation_id", "reply_to", TIMESTAMP) if c in names])
        enc = self._json.encode(body, key_field)
        ctype = (CONTENT_TYPE_HEADER, self.content_type.encode())
        per: list[Headers] = []
        for cid in cids:
            per.append([ctype, (CORRELATION_ID, str(cid).encode())] if cid is not None else [ctype])
        enc.record_headers = per
        enc.headers = None
        enc.topics = [str(r) if r else None for r in replies]
        return enc


def _header_column(messages: list[Message], idx: list[int], name: str) -> pa.Array:
    values = [messages[i].header(name) for i in idx]
    return pa.array([v.decode("utf-8", "replace") if v else None for v in values], pa.string())
