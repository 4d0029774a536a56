"""Codecs: round trips (hypothesis), bad messages with their reasons, frames, requests, DLQ envelope."""

from __future__ import annotations

import io
import math

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from propkit import examples

from dawnstream.topics import Message, RowSchema, dead_letter, get_codec
from dawnstream.topics.codecs.frames import FramesCodec
from dawnstream.topics.codecs.requests import RequestsCodec
from dawnstream.topics.dlq import dlq_reason
from dawnstream.topics.message import Rejected

TOPIC = "test.codecs.rows.v1"


def msgs(values: list[bytes | None], headers: list | None = None) -> list[Message]:
    return [Message(v, None, list(headers or []), TOPIC, 0, i) for i, v in enumerate(values)]


rows_strategy = st.lists(
    st.fixed_dictionaries({
        "i": st.one_of(st.none(), st.integers(-(2**53), 2**53)),
        "f": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64)),
        "s": st.one_of(st.none(), st.text(max_size=20)),
        "b": st.one_of(st.none(), st.booleans()),
    }),
    min_size=1, max_size=40,
)
SCHEMA = {"i": "int64", "f": "float64", "s": "string", "b": "bool"}


@settings(max_examples=examples(150), deadline=None)
@given(rows_strategy)
def test_json_round_trip(rows: list[dict]) -> None:
    codec = get_codec("json")
    table = pa.Table.from_pylist(rows, schema=RowSchema(SCHEMA).arrow_schema())
    enc = codec.encode(table.to_batches()[0])
    assert len(enc) == len(rows)
    d = codec.decode(msgs(enc.values), RowSchema(SCHEMA))
    assert not d.rejected
    assert d.table is not None and d.table.to_pylist() == rows


value_strategy = st.one_of(st.none(), st.integers(-(2**60), 2**60), st.floats(width=64), st.text(max_size=8),
                           st.booleans(), st.just("2013-01-03T13:00:00+00:00"),
                           st.lists(st.integers(-9, 9), max_size=2))
raw_rows_strategy = st.lists(
    st.one_of(
        st.dictionaries(st.sampled_from(["i", "f", "s", "b", "t"]), value_strategy, max_size=5).map(
            lambda d: orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS) if all(
                not isinstance(v, float) or math.isfinite(v) for v in d.values()) else b'{"i": NaN}'),
        st.sampled_from([b"not json", b"[1, 2]", b'{"i": 1, "i": 2}', b'{"i": 1e400}', b'{"new": 1}',
                         b'{"i": 3, "new": "2013-01-03T13:00:00"}']),
    ),
    min_size=1, max_size=31,
)


@settings(max_examples=examples(200), deadline=None)
@given(raw_rows_strategy)
def test_small_batches_decode_row_by_row_exactly_as_the_reader_does(values: list[bytes]) -> None:
    """Below SMALL_DECODE messages the codec parses row by row, and below KNOWN_DECODE it first tries
    a column at a time; whatever the rows hold (bad values, wrong types, nested values, repeated keys,
    new columns), the table, the rejections and their reasons, and the learned schema are those of the
    bulk reader's path."""
    from dawnstream.topics.codecs import json_rows

    def decode(small: bool, known: bool) -> tuple:
        schema = RowSchema({**SCHEMA, "t": "timestamp[s]"}, required={"i"})
        old = json_rows.SMALL_DECODE, json_rows.KNOWN_DECODE
        json_rows.SMALL_DECODE = 10**6 if small else 0
        json_rows.KNOWN_DECODE = 10**6 if known else 0
        try:
            d = get_codec("json").decode(msgs(values), schema)
        finally:
            json_rows.SMALL_DECODE, json_rows.KNOWN_DECODE = old
        # The table itself, not to_pylist(): a timestamp before year 1 is valid Arrow but no datetime.
        return (d.table, d.kept, [(r.message.offset, r.reason) for r in d.rejected], schema.arrow_schema())

    reader = decode(small=False, known=False)
    assert decode(small=True, known=False) == reader
    assert decode(small=True, known=True) == reader
    assert decode(small=False, known=True) == reader


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "i": st.integers(-(2**63), 2**63 - 1),
    "f": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64),
                   st.integers(-(2**60), 2**60)),
    "s": st.one_of(st.none(), st.text(max_size=8)),
    "b": st.one_of(st.none(), st.booleans()),
}), min_size=1, max_size=40))
def test_known_columns_decode_clean_rows_as_the_row_path_does(rows: list[dict]) -> None:
    """Rows that only hold known columns (the serving case), decoded a column at a time: the same table
    as row by row - or, where a value needs the row path's judgement (an integer beyond 2**53 in a float
    column), the row path's answer."""
    from dawnstream.topics.codecs import json_rows

    values = [orjson.dumps(r) for r in rows]

    def decode(known: bool) -> tuple:
        old = json_rows.SMALL_DECODE, json_rows.KNOWN_DECODE
        json_rows.SMALL_DECODE, json_rows.KNOWN_DECODE = 10**6, (10**6 if known else 0)
        try:
            d = get_codec("json").decode(msgs(values), RowSchema(SCHEMA, required={"i"}))
        finally:
            json_rows.SMALL_DECODE, json_rows.KNOWN_DECODE = old
        return (None if d.table is None else d.table.to_pylist(), d.kept, [(r.message.offset, r.reason)
                                                                           for r in d.rejected])

    assert decode(known=True) == decode(known=False)


@settings(max_examples=examples(100), deadline=None)
@given(rows_strategy, st.integers(1, 50))
def test_arrow_round_trip(rows: list[dict], per_message: int) -> None:
    codec = get_codec("arrow", max_rows_per_message=per_message)
    table = pa.Table.from_pylist(rows, schema=RowSchema(SCHEMA).arrow_schema())
    enc = codec.encode(table.to_batches()[0])
    assert len(enc) == math.ceil(len(rows) / per_message)
    d = codec.decode(msgs(enc.values), RowSchema(SCHEMA))
    assert d.table is not None and d.table.to_pylist() == rows and sum(d.rows_per_kept) == len(rows)


GOOD = b'{"x": 1.5, "k": "a"}'
BAD_JSON = [
    (b"{not json", "invalid JSON"),
    (b"[1, 2, 3]", "is not an object"),
    (b'"just a string"', "is not an object"),
    (b"", "empty message"),
    (None, "empty message"),
    (b'{"k": "a"}', "missing required column(s) ['x']"),
    (b'{"x": "fast", "k": "a"}', "is not a number"),
    (b'{"x": true, "k": "a"}', "is not a number"),
    (b'{"x": {"nested": 1}, "k": "a"}', "nested"),
    (b'{"x": 1, "k": ["a"]}', "nested"),
    (b"\xff\xfe\x00garbage", "invalid JSON"),
    (b'{"x": 1, "k": "a"' , "invalid JSON"),
    (b'{"x": 1, "k": 7}', "is not a string"),
    (b'{"x": NaN, "k": "a"}', "invalid JSON"),
    (b'{"x": -Infinity, "k": "a"}', "invalid JSON"),
    (b"[" * 5000 + b"]" * 5000, "invalid JSON"),
    (b'{"x": 1, "k": "' + b"z" * (2 << 20) + b'"}', "exceeds max_message_bytes"),
]


@pytest.mark.parametrize("value, reason", BAD_JSON, ids=[r for _, r in BAD_JSON])
def test_bad_json_is_rejected_alone_with_its_reason(value: bytes | None, reason: str) -> None:
    schema = RowSchema({"x": "float64", "k": "string"}, required={"x", "k"})
    batch = msgs([GOOD, value, GOOD])
    d = get_codec("json").decode(batch, schema)
    assert [r.message.offset for r in d.rejected] == [1]
    assert reason in d.rejected[0].reason
    assert d.table is not None and d.table.num_rows == 2 and d.kept == [0, 2]


def test_pretty_printed_is_accepted_and_duplicate_keys_are_not() -> None:
    schema = RowSchema(required={"x"})
    d = get_codec("json").decode(msgs([b'{\n  "x": 1\n}', b'{"x": 2, "x": 3}', b'{"x": 4}']), schema)
    assert [r.reason for r in d.rejected] == ["duplicate field name 'x': each column may appear once"]
    assert d.table is not None and d.table.column("x").to_pylist() == [1, 4]
    # colons inside strings neither hide a repeated key nor make one up
    d = get_codec("json").decode(msgs([b'{"s": "a:b", "s": "c"}', b'{"s": "10:30", "x": 5}', b'{"x":6,"x":6}']),
                                 RowSchema(required={"x"}))
    assert [r.message.offset for r in d.rejected] == [0, 2]
    assert all("duplicate field name" in r.reason for r in d.rejected)


def test_learned_schema_rejects_later_type_changes_and_never_widens() -> None:
    schema = RowSchema(required={"x"})
    codec = get_codec("json")
    codec.decode(msgs([b'{"x": 1, "s": "a"}']), schema)
    d = codec.decode(msgs([b'{"x": 2.5, "s": "b"}', b'{"x": 3, "s": 4}', b'{"x": 4, "s": "c"}']), schema)
    assert schema.fields["x"] == pa.int64()
    assert [r.reason.split(" (")[0] for r in d.rejected] == ["column 'x': float 2.5 is not an integer",
                                                             "column 's': int 4 is not a string"]
    assert d.table is not None and d.table.column("x").to_pylist() == [4]


def test_timestamps_with_a_zone_offset_decode_the_same_on_both_paths() -> None:
    """Rows a small batch (all-null floats) or a bad neighbour sends down the row-by-row path are
    accepted exactly as the bulk path accepts them (flights' time_hour carries +00:00)."""
    schema = RowSchema({"d": "float64"})
    codec = get_codec("json")
    first = codec.decode(msgs([b'{"t": "2013-01-03T13:00:00+00:00", "d": 1.5}']), schema)
    assert schema.fields["t"] == pa.timestamp("s") and not first.rejected
    nulls = codec.decode(msgs([b'{"t": "2013-01-03T14:00:00+00:00", "d": null}']), schema)
    assert not nulls.rejected and nulls.table is not None
    mixed = codec.decode(msgs([b'{"t": "2013-01-03T15:00:00+02:00", "d": 2}', b"not json",
                               b'{"t": "2013-01-03T16:00:00", "d": 3}', b'{"t": "soon", "d": 4}']), schema)
    assert [r.message.offset for r in mixed.rejected] == [1, 3]
    assert mixed.table is not None
    assert [str(v) for v in mixed.table.column("t").to_pylist()] == ["2013-01-03 13:00:00", "2013-01-03 16:00:00"]


def test_numeric_hint_rejects_strings_even_in_the_first_batch() -> None:
    schema = RowSchema(required={"x"}, numeric={"x"})
    d = get_codec("json").decode(msgs([b'{"x": "abc"}', b'{"x": 2}']), schema)
    assert len(d.rejected) == 1 and "is not a number" in d.rejected[0].reason


def test_arrow_bad_messages() -> None:
    codec = get_codec("arrow")
    good = codec.encode(pa.record_batch({"x": [1.0, 2.0], "k": ["a", "b"]})).values[0]
    wrong = codec.encode(pa.record_batch({"x": ["no", "pe"], "k": ["a", "b"]})).values[0]
    missing = codec.encode(pa.record_batch({"k": ["a"]})).values[0]
    schema = RowSchema({"x": "float64"}, required={"x", "k"})
    d = codec.decode(msgs([good, good[: len(good) // 2], b"\x00\x01junk", wrong, missing, good]), schema)
    reasons = [r.reason for r in d.rejected]
    assert "not a readable Arrow IPC stream" in reasons[0] and "not a readable" in reasons[1]
    assert "wrong schema" in reasons[2] and "missing required column(s) ['x']" in reasons[3]
    assert d.table is not None and d.table.num_rows == 4 and d.kept == [0, 5]


def _ipc(table: pa.Table, compression: str | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def test_an_arrow_compression_bomb_is_refused_before_it_is_decompressed() -> None:
    zeros = pa.record_batch({"x": pa.array([0.0] * 1_000_000)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, zeros.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        for _ in range(50):  # 400 MB of zeros in a few hundred KB
            w.write_batch(zeros)
    bomb = sink.getvalue().to_pybytes()
    small = _ipc(pa.table({"x": [1.0, 2.0]}), "lz4")
    d = get_codec("arrow").decode(msgs([small, bomb, small]), RowSchema())
    assert len(bomb) < 1 << 20 and d.table is not None and d.table.num_rows == 4
    assert len(d.rejected) == 1 and "decodes to 50,000,000 rows and 400,000,000 bytes" in d.rejected[0].reason
    assert "input.max_decoded_bytes" in d.rejected[0].reason


def test_arrow_limits_are_per_message_and_configurable() -> None:
    table = pa.table({"x": [float(i) for i in range(1000)]})
    tight = get_codec("arrow", max_decoded_bytes=4000, max_message_rows=10_000)
    d = tight.decode(msgs([_ipc(table), _ipc(table, "zstd"), _ipc(table.slice(0, 400))]), RowSchema())
    assert [r.message.offset for r in d.rejected] == [0, 1] and d.table is not None and d.table.num_rows == 400
    assert get_codec("arrow", max_message_rows=999).decode(msgs([_ipc(table)]), RowSchema()).table is None


def test_arrow_strings_that_are_not_utf8_refuse_their_message_only() -> None:
    good = _ipc(pa.table({"s": ["ok"]}))
    data, offsets = pa.py_buffer(b"ok\xff\xfe"), pa.py_buffer(bytes(pa.array([0, 4], pa.int32()).buffers()[1]))
    bad_strings = pa.Array.from_buffers(pa.string(), 1, [None, offsets, data])
    d = get_codec("arrow").decode(msgs([good, _ipc(pa.table({"s": bad_strings})), good]), RowSchema())
    assert d.kept == [0, 2] and "Invalid UTF8" in d.rejected[0].reason


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


def test_frames_decode_and_bad_frames() -> None:
    jpeg, png = _image("JPEG"), _image("PNG")
    codec = FramesCodec(max_frame_bytes=100_000)
    ms = [
        Message(jpeg, b"cam-1", [("frame-index", b"7"), ("timestamp", b"1700000000000")], "t", 0, 0),
        Message(png, b"cam-2", [], "t", 0, 1, 123),
        Message(jpeg[:-200], b"cam-1", [], "t", 0, 2),
        Message(b"GIF89a....", b"cam-1", [], "t", 0, 3),
        Message(jpeg, None, [], "t", 0, 4),
        Message(b"\xff\xd8\xff" + b"\x00" * 200_000 + b"\xff\xd9", b"cam-1", [], "t", 0, 5),
        Message(png, b"cam-2", [("frame-index", b"seven")], "t", 0, 6),
    ]
    d = codec.decode(ms, RowSchema())
    assert d.table is not None
    assert d.table.select(["camera_id", "frame_index", "timestamp_ms", "format", "width", "height"]).to_pylist() == [
        {"camera_id": "cam-1", "frame_index": 7, "timestamp_ms": 1700000000000, "format": "jpeg",
         "width": 32, "height": 24},
        {"camera_id": "cam-2", "frame_index": 1, "timestamp_ms": 123, "format": "png", "width": 32, "height": 24},
    ]
    reasons = [r.reason for r in d.rejected]
    assert "truncated JPEG" in reasons[0] and "wrong magic bytes" in reasons[1]
    assert "camera id" in reasons[2] and "exceeds max_frame_bytes" in reasons[3] and "frame-index" in reasons[4]
    enc = codec.encode(d.table.to_batches()[0])
    assert enc.values[0] == jpeg and enc.keys == [b"cam-1", b"cam-2"]
    assert dict(enc.record_headers[1])["content-type"] == b"image/png"  # type: ignore[index]


def test_frames_are_checked_before_they_are_decoded() -> None:
    big = io.BytesIO()
    Image.new("L", (13_000, 13_000)).save(big, format="JPEG", quality=1)  # a few hundred KB, 169 Mpixels
    jpeg, png = _image("JPEG"), _image("PNG")
    codec = FramesCodec(max_frame_bytes=16 << 20)
    ms = [
        Message(big.getvalue(), b"cam", [], "t", 0, 0),
        Message(png, b"cam", [("content-type", b"image/jpeg")], "t", 0, 1),
        Message(jpeg, b"cam", [("frame-index", str(2**70).encode())], "t", 0, 2),
        Message(jpeg, b"cam", [("timestamp", b"-9223372036854775809")], "t", 0, 3),
        Message(jpeg, b"cam", [("content-type", b"image/jpeg"), ("frame-index", b"9")], "t", 0, 4),
    ]
    d = codec.decode(ms, RowSchema())
    reasons = [r.reason for r in d.rejected]
    assert "13000x13000 = 169,000,000 pixels, more than max_frame_pixels=33,177,600" in reasons[0]
    assert "content-type image/jpeg but the data is a PNG" in reasons[1]
    assert "header 'frame-index' is 1180591620717411303424: expected an integer in int64's range" in reasons[2]
    assert "header 'timestamp'" in reasons[3] and d.kept == [4]
    assert FramesCodec(max_frame_pixels=100).decode(ms[4:], RowSchema()).table is None


def test_requests_need_correlation_id_and_replies_go_to_reply_to() -> None:
    codec = RequestsCodec()
    ms = [
        Message(b'{"x": 1}', None, [("correlation-id", b"c1"), ("reply-to", b"app.svc.replies.v1")], "t", 0, 0),
        Message(b'{"x": 2}', None, [], "t", 0, 1),
        Message(b'{"x": 3}', None, [("correlation-id", b"c3")], "t", 0, 2),
    ]
    d = codec.decode(ms, RowSchema())
    assert [r.reason for r in d.rejected] == ["request without a correlation-id header"]
    assert d.table is not None and d.table.column("correlation_id").to_pylist() == ["c1", "c3"]
    out = d.table.append_column("y", pa.array([10, 30])).to_batches()[0]
    recs = codec.encode(out).records()
    assert [r.topic for r in recs] == ["app.svc.replies.v1", None]
    assert [dict(r.headers)["correlation-id"] for r in recs] == [b"c1", b"c3"]
    assert orjson.loads(recs[0].value) == {"x": 1, "y": 10}


def test_dead_letter_envelope_keeps_original_bytes() -> None:
    m = Message(b"\xff raw", b"key", [("trace", b"1")], "sensors.x.rows.v1", 3, 42)
    topic, rec = dead_letter(Rejected(m, "invalid JSON: boom", stage="decode"))
    assert topic == "sensors.x.rows.v1.dlq"
    assert rec.value == b"\xff raw" and rec.key == b"key" and rec.headers[0] == ("trace", b"1")
    assert dlq_reason(rec.headers) == {"dlq.error": "invalid JSON: boom", "dlq.stage": "decode",
                                       "dlq.topic": "sensors.x.rows.v1", "dlq.partition": "3", "dlq.offset": "42"}
