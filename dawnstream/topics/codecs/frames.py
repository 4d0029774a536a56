"""Video frames: one JPEG or PNG image per message; key = camera id.

Headers: ``frame-index`` (int), ``timestamp`` (ms since epoch), ``size`` (bytes), ``content-type``.
Decoding checks magic bytes and the end marker (JPEG EOI ``FFD9``, PNG ``IEND``), reads width and
height with Pillow, and decodes the image at 1/8 scale with OpenCV (~0.8 ms) to catch corrupt data;
full-size pixels are decoded by the operators that need them.
"""

from __future__ import annotations

import io

import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from dawnstream.topics.codecs.base import CONTENT_TYPE_HEADER, Codec, Decoded
from dawnstream.topics.message import Encoded, Headers, Message, Rejected
from dawnstream.topics.schema import RowSchema

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FRAME_SCHEMA = pa.schema(
    [
        ("camera_id", pa.string()),
        ("frame_index", pa.int64()),
        ("timestamp_ms", pa.int64()),
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("image", pa.binary()),
    ]
)


MAX_FRAME_PIXELS = 7680 * 4320
"""Frames declaring more pixels than this (8K UHD) are dead-lettered before any decoding: a 13000x13000
JPEG of a few KB took 0.5 s and 1.4 GB to decode (``input`` of a frames topic: ``max_frame_pixels``)."""
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _int_header(m: Message, name: str, default: int) -> int:
    """An integer header, or ``default`` when absent.

    Raises:
        ValueError: not an integer, or outside int64 (the message names the header and the range).
    """
    raw = m.header(name)
    if raw is None:
        return default
    try:
        v = int(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"header {name!r} is {raw[:40]!r}: expected an integer") from None
    if not _INT64[0] <= v <= _INT64[1]:
        raise ValueError(f"header {name!r} is {v}: expected an integer in int64's range (|v| < 2**63)")
    return v


def _decodes(data: bytes) -> bool:
    """True when OpenCV decodes the image (at 1/8 scale, grayscale: ~0.8 ms for 768x576), so that a
    frame whose data is corrupt is dead-lettered here, alone, not by a stage with its whole batch."""
    import cv2
    import numpy as np

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8) is not None


class FramesCodec(Codec):
    """One image per message, decoded to rows of :data:`FRAME_SCHEMA`.

    Args:
        max_frame_bytes: larger messages are rejected (default 8 MiB; raise the broker's
            ``message.max.bytes`` together with it).
        max_frame_pixels: frames whose header declares more pixels are rejected before decoding
            (:data:`MAX_FRAME_PIXELS`).

    A ``content-type`` header must agree with the data's magic bytes (``image/png`` on a JPEG is refused).
    """

    name = "frames"
    content_type = "image/jpeg"

    def __init__(self, max_frame_bytes: int = 8 << 20, max_frame_pixels: int = MAX_FRAME_PIXELS) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_frame_pixels = max_frame_pixels

    def _check(self, m: Message) -> tuple[str, int, int] | str:
        v = m.value or b""
        if not v:
            return "empty message: expected a JPEG or PNG image"
        if len(v) > self.max_frame_bytes:
            return f"frame of {len(v)} bytes exceeds max_frame_bytes={self.max_frame_bytes}"
        if v.startswith(JPEG_MAGIC):
            fmt = "jpeg"
            if not v.rstrip(b"\x00").endswith(b"\xff\xd9"):
                return "truncated JPEG: no end-of-image marker FFD9"
        elif v.startswith(PNG_MAGIC):
            fmt = "png"
            if b"IEND" not in v[-16:]:
                return "truncated PNG: no IEND chunk"
        else:
            return f"wrong magic bytes {v[:4].hex()}: expected JPEG (ffd8ff) or PNG (89504e47)"
        ct = (m.header(CONTENT_TYPE_HEADER) or b"").decode("ascii", "replace").split(";")[0].strip().lower()
        if ct in ("image/jpeg", "image/png") and ct != f"image/{fmt}":
            return f"content-type {ct} but the data is a {fmt.upper()} (magic bytes {v[:4].hex()})"
        try:
            with Image.open(io.BytesIO(v)) as img:  # reads the header only
                w, h = img.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            return f"unreadable {fmt} header: {e}"
        if w * h > self.max_frame_pixels:
            return (f"the {fmt} declares {w}x{h} = {w * h:,} pixels, more than max_frame_pixels="
                    f"{self.max_frame_pixels:,}: not decoded")
        if not _decodes(v):
            return f"not a decodable {fmt}: the header is fine but the image data is corrupt"
        return fmt, w, h

    def decode(self, messages: list[Message], schema: RowSchema) -> Decoded:
        cols: dict[str, list[object]] = {f.name: [] for f in FRAME_SCHEMA}
        kept: list[int] = []
        rejected: list[Rejected] = []
        for i, m in enumerate(messages):
            checked = self._check(m)
            if isinstance(checked, str):
                rejected.append(Rejected(m, checked))
                continue
            if m.key is None:
                rejected.append(Rejected(m, "frame without a key: the key must be the camera id"))
                continue
            try:
                frame_index = _int_header(m, "frame-index", m.offset)
                ts = _int_header(m, "timestamp", m.timestamp_ms)
            except ValueError as e:
                rejected.append(Rejected(m, str(e)))
                continue
            fmt, w, h = checked
            for k, val in zip(
                cols,
                (m.key.decode("utf-8", "replace"), frame_index, ts, fmt, w, h, m.value),
                strict=True,
            ):
                cols[k].append(val)
            kept.append(i)
        if not kept:
            return Decoded(None, rejected=rejected)
        table = pa.Table.from_pydict(cols, schema=FRAME_SCHEMA)
        return Decoded(table, kept, [1] * len(kept), rejected)

    def encode(self, batch: pa.RecordBatch, key_field: str | None = None) -> Encoded:
        d = batch.to_pydict()
        values: list[bytes] = []
        keys: list[bytes | None] = []
        headers_per: list[Headers] = []
        for i in range(batch.num_rows):
            img: bytes = d["image"][i]
            fmt = d.get("format", ["jpeg"] * batch.num_rows)[i]
            headers = [
                (CONTENT_TYPE_HEADER, b"image/png" if fmt == "png" else b"image/jpeg"),
                ("frame-index", str(d["frame_index"][i]).encode()),
                ("timestamp", str(d["timestamp_ms"][i]).encode()),
                ("size", str(len(img)).encode()),
            ]
            values.append(img)
            keys.append(str(d["camera_id"][i]).encode())
            headers_per.append(headers)
        return Encoded(values, keys, record_headers=headers_per)
