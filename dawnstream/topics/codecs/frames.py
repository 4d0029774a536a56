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


def _int_header(m: Message, name: str, default: int) -> int:
    raw = m.header(name)
    if raw is None:
        return default
    return int(raw.decode("ascii"))


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
    """

    name = "frames"
    content_type = "image/jpeg"

    def __init__(self, max_frame_bytes: int = 8 << 20) -> None:
        self.max_frame_bytes = max_frame_bytes

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
        try:
            with Image.open(io.BytesIO(v)) as img:
                w, h = img.size
        except (UnidentifiedImageError, OSError, ValueError) as e:
            return f"unreadable {fmt} header: {e}"
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
            except (ValueError, UnicodeDecodeError) as e:
                rejected.append(Rejected(m, f"bad frame-index/timestamp header: {e}"))
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
