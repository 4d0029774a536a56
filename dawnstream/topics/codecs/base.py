"""The codec interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import pyarrow as pa

from dawnstream.topics.message import Encoded, Message, Rejected
from dawnstream.topics.schema import RowSchema

CONTENT_TYPE_HEADER = "content-type"


@dataclass(slots=True)
class Decoded:
    """Result of decoding a list of messages.

    Attributes:
        table: rows of every accepted message, in message order, conformed to the schema
            (``None`` when nothing was accepted).
        kept: index (into the input list) of the message each accepted *message* came from, in order.
        rows_per_kept: rows each kept message contributed (1 for JSON rows).
        rejected: one entry per message that could not be decoded, with the reason.
    """

    table: pa.Table | None
    kept: list[int] = field(default_factory=list)
    rows_per_kept: list[int] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return 0 if self.table is None else self.table.num_rows


class Codec(ABC):
    """Turns messages into Arrow rows and Arrow rows into records to produce.

    Subclasses set ``name`` (registry key) and ``content_type`` (header value they write).
    """

    name: str = ""
    content_type: str = ""

    @abstractmethod
    def decode(self, messages: list[Message], schema: RowSchema) -> Decoded:
        """Decode ``messages`` (any length, possibly 0); never raises for bad input."""

    @abstractmethod
    def encode(self, batch: pa.RecordBatch, key_field: str | None = None) -> Encoded:
        """Encode ``batch`` into records; ``key_field`` names the column that becomes the key."""


def keys_of(batch: pa.RecordBatch, key_field: str | None) -> list[bytes | None] | None:
    """Message keys for ``batch``: the ``key_field`` column as UTF-8 text (``None`` where null);
    ``None`` when there is no key column."""
    if key_field is None or key_field not in batch.schema.names:
        return None
    col = batch.column(key_field)
    if not (pa.types.is_string(col.type) or pa.types.is_binary(col.type)):
        col = col.cast(pa.string())
    return [None if v is None else (v if isinstance(v, bytes) else v.encode()) for v in col.to_pylist()]
