"""What an Arrow IPC stream will cost to decode, read from its metadata before anything is decoded.

A 12,536-byte message of compressed buffers decoded to 400 MB: pyarrow decompresses a record batch as it
reads it and has no cap. Every IPC message carries its header as a flatbuffer (``Message.fbs``): a record
batch's ``length`` (rows) and its ``buffers`` (offset and length in the body); in a compressed body each
buffer starts with its uncompressed length as a little-endian int64 (-1: stored uncompressed). Summing
those gives the decoded size exactly, for the price of reading a few hundred bytes
(Arrow columnar format, "Serialization and Interprocess Communication" and "Compression").

The flatbuffer reading here is the minimum the format needs (root table, vtable, scalar, offset, vector
of structs); any inconsistency is a reason to refuse the message, never an exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pyarrow as pa

_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3  # MessageHeader union tags


class _Malformed(ValueError):
    pass


class _Flat:
    """Read-only access to one flatbuffer (bounds-checked)."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def _u(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.buf):
            raise _Malformed("a flatbuffer offset points outside the metadata")
        return int(struct.unpack_from(fmt, self.buf, pos)[0])

    def root(self) -> int:
        return self._u("<I", 0)

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field ``index`` of the table at ``table``, or None when absent."""
        vtable = table - self._u("<i", table)
        vsize = self._u("<H", vtable)
        slot = 4 + 2 * index
        if slot + 2 > vsize:
            return None
        off = self._u("<H", vtable + slot)
        return table + off if off else None

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        pos = self.field(table, index)
        return default if pos is None else self._u(fmt, pos)

    def ref(self, table: int, index: int) -> int | None:
        """The table or vector an offset field points to."""
        pos = self.field(table, index)
        return None if pos is None else pos + self._u("<I", pos)

    def structs(self, vector: int, size: int, fmt: str) -> list[tuple[int, ...]]:
        n = self._u("<I", vector)
        if vector + 4 + n * size > len(self.buf):
            raise _Malformed("a vector is longer than the metadata")
        return [struct.unpack_from(fmt, self.buf, vector + 4 + i * size) for i in range(n)]


@dataclass
class DecodeCost:
    """What decoding a whole IPC stream takes: ``rows`` of its record batches and ``bytes`` of their buffers
    once decompressed (dictionary batches counted too)."""

    rows: int = 0
    bytes: int = 0


def decode_cost(stream: bytes) -> DecodeCost:
    """Rows and decoded bytes of the IPC *stream* ``stream``, from its metadata only (nothing decompressed).

    Raises:
        ValueError: the stream or a message header is malformed (the message is refused, with why).
    """
    cost = DecodeCost()
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(stream))
        for message in reader:
            meta = _Flat(message.metadata.to_pybytes())
            root = meta.root()
            kind = meta.scalar(root, 1, "<B")
            header = meta.ref(root, 2)
            if kind == _DICTIONARY_BATCH and header is not None:
                header = meta.ref(header, 1)  # DictionaryBatch.data: a RecordBatch
            elif kind != _RECORD_BATCH:
                continue
            if header is None:
                raise _Malformed("a record batch message without its header")
            cost.rows += meta.scalar(header, 0, "<q")
            body = message.body
            body_len = 0 if body is None else body.size
            buffers = meta.ref(header, 2)
            compressed = meta.field(header, 3) is not None
            if buffers is None or not compressed:
                cost.bytes += body_len
                continue
            view = body.to_pybytes() if body is not None else b""
            for offset, length in meta.structs(buffers, 16, "<qq"):
                if length == 0:
                    continue
                if offset < 0 or length < 8 or offset + length > body_len:
                    raise _Malformed("a compressed buffer lies outside the message body")
                raw = struct.unpack_from("<q", view, offset)[0]
                cost.bytes += length - 8 if raw == -1 else raw
                if raw < -1:
                    raise _Malformed("a compressed buffer declares a negative size")
    except (_Malformed, pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, struct.error) as e:
        raise ValueError(f"not a readable Arrow IPC stream: {e}") from None
    return cost


__all__ = ["DecodeCost", "decode_cost"]
