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
from dawnstream.topics.schema import RowSchema

CORRELATION_ID = "correlation-id"
REPLY_TO = "reply-to"


class RequestsCodec(Codec):
    """Requests: one JSON object (one row) per message, with request headers added as columns.

    Decoded rows gain ``correlation_id`` (string) and ``reply_to`` (string, null when absent).
    ``encode`` writes one JSON response per row with the ``correlation-id`` header, addressed to the
    row's ``reply_to`` topic when set.
    """

    name = "requests"
    content_type = "application/json"

    def __init__(self, max_message_bytes: int = 1 << 20) -> None:
        self._json = JsonRowsCodec(max_message_bytes=max_message_bytes)

    def decode(self, messages: list[Message], schema: RowSchema) -> Decoded:
        rejected: list[Rejected] = []
        ok_idx: list[int] = []
        for i, m in enumerate(messages):
            cid = m.header(CORRELATION_ID)
            if not cid:
                rejected.append(Rejected(m, "request without a correlation-id header"))
            else:
                ok_idx.append(i)
        sub = [messages[i] for i in ok_idx]
        inner = self._json.decode(sub, schema)
        rejected.extend(inner.rejected)
        if inner.table is None:
            return Decoded(None, rejected=rejected)
        kept = [ok_idx[j] for j in inner.kept]
        cids = [messages[i].header(CORRELATION_ID) for i in kept]
        replies = [messages[i].header(REPLY_TO) for i in kept]
        table = inner.table.append_column(
            "correlation_id", pa.array([c.decode("utf-8", "replace") if c else None for c in cids])
        ).append_column(
            "reply_to", pa.array([r.decode("utf-8", "replace") if r else None for r in replies], pa.string())
        )
        return Decoded(table, kept, [1] * len(kept), rejected)

    def encode(self, batch: pa.RecordBatch, key_field: str | None = None) -> Encoded:
        names = batch.schema.names
        cids = batch.column("correlation_id").to_pylist() if "correlation_id" in names else [None] * batch.num_rows
        replies = batch.column("reply_to").to_pylist() if "reply_to" in names else [None] * batch.num_rows
        body = batch.drop_columns([c for c in ("correlation_id", "reply_to") if c in names])
        enc = self._json.encode(body, key_field)
        ctype = (CONTENT_TYPE_HEADER, self.content_type.encode())
        per: list[Headers] = []
        for cid in cids:
            per.append([ctype, (CORRELATION_ID, str(cid).encode())] if cid is not None else [ctype])
        enc.record_headers = per
        enc.headers = None
        enc.topics = [str(r) if r else None for r in replies]
        return enc
