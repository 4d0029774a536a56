"""Codecs turn lists of Kafka messages into Arrow tables and Arrow batches back into records.

Registry: ``json`` (one row per message), ``arrow`` (Arrow IPC stream, one record batch per
message), ``frames`` (one JPEG/PNG image per message), ``requests`` (prediction requests with
``correlation-id``/``reply-to`` headers). A message's ``content-type`` header overrides the
topic's codec for that message.
"""

from __future__ import annotations

from dawnstream.topics.codecs.arrow_ipc import ArrowStreamCodec
from dawnstream.topics.codecs.base import CONTENT_TYPE_HEADER, Codec, Decoded
from dawnstream.topics.codecs.frames import FramesCodec
from dawnstream.topics.codecs.json_rows import JsonRowsCodec
from dawnstream.topics.codecs.requests import RequestsCodec

CODECS: dict[str, type[Codec]] = {
    "json": JsonRowsCodec,
    "arrow": ArrowStreamCodec,
    "frames": FramesCodec,
    "requests": RequestsCodec,
}

_BY_CONTENT_TYPE: dict[str, str] = {
    JsonRowsCodec.content_type: "json",
    "application/x-ndjson": "json",
    "text/json": "json",
    ArrowStreamCodec.content_type: "arrow",
    "application/vnd.apache.arrow.file": "arrow",
    "image/jpeg": "frames",
    "image/png": "frames",
}


def get_codec(name: str, **options: object) -> Codec:
    """Instantiate the codec registered as ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    try:
        cls = CODECS[name]
    except KeyError:
        raise KeyError(f"unknown codec {name!r}; expected one of {sorted(CODECS)}") from None
    return cls(**options)


def codec_for_content_type(content_type: str) -> str | None:
    """Codec name for a ``content-type`` header value (parameters after ';' ignored), or ``None``."""
    return _BY_CONTENT_TYPE.get(content_type.split(";", 1)[0].strip().lower())


__all__ = [
    "CODECS",
    "CONTENT_TYPE_HEADER",
    "ArrowStreamCodec",
    "Codec",
    "Decoded",
    "FramesCodec",
    "JsonRowsCodec",
    "RequestsCodec",
    "codec_for_content_type",
    "get_codec",
]
