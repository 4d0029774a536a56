"""A corpus of 26 kinds of bad input (rows, frames, requests) interleaved with 100,000 good rows: every bad
message lands in <topic>.dlq with its reason and original bytes, every good row is processed exactly once,
and no topic but each job's output, dead-letter topic and changelog receives a record. (The request
surface in full: ``test_hostile_requests.py``; stage-level cases: ``test_hostile_corpus.py``.)"""

from __future__ import annotations

import io
import threading
import uuid

import orjson
import pyarrow as pa
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from faultkit import topic_ends
from PIL import Image

from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.runner import KafkaRunner
from dawnstream.streams.state import changelog_topic
from dawnstream.topics import get_codec
from dawnstream.topics.spec import TopicSpec

GOOD = 100_000
ARROW_CT = [("content-type", b"application/vnd.apache.arrow.stream")]
_good_arrow = get_codec("arrow").encode(pa.record_batch({"id": [1], "x": [1.0], "k": ["a"]})).values[0]
_wrong_arrow = get_codec("arrow").encode(pa.record_batch({"id": ["one"], "x": ["a"], "k": [1]})).values[0]

# (value, key, headers, expected reason fragment)
ROWS_CORPUS = [
    (b"{not json", b"a", [], "invalid JSON"),
    (b"[1, 2]", b"a", [], "is not an object"),
    (b'{"id": 1, "k": "a"}', b"a", [], "missing required column(s) ['x']"),
    (b'{"id": 1, "x": true, "k": "a"}', b"a", [], "is not a number"),
    (b'{"id": 1, "x": "12.5", "k": "a"}', b"a", [], "is not a number"),
    (b'{"id": 1, "x": NaN, "k": "a"}', b"a", [], "invalid JSON"),
    (b'{"id": 1, "x": Infinity, "k": "a"}', b"a", [], "invalid JSON"),
    (b"", b"a", [], "empty message"),
    (b'{"id": 1, "x": 1.0, "k": "a"}', None, [], "null key"),
    (b'{"id": 1, "x": 1.0, "k": "\xff\xfe"}', b"a", [], "invalid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, b"a", [], "invalid JSON"),
    (b'{"id": 1, "x": 1.0, "k": "' + b"z" * (5 << 20) + b'"}', b"a", [], "exceeds max_message_bytes"),
    (b'{"id": 1, "x": 1.0, "x": 2.0, "k": "a"}', b"a", [], "duplicate field name 'x'"),
    (_good_arrow[: len(_good_arrow) // 2], b"a", ARROW_CT, "not a readable Arrow IPC stream"),
    (_wrong_arrow, b"a", ARROW_CT, "wrong schema"),
    (b'{"id": 1, "x": 1.0, "k": "a"}', b"a", [("content-type", b"text/xml")], "unknown content-type"),
    (b'{"id": 1, "x": {"v": 1}, "k": "a"}', b"a", [], "nested"),
    (b'{"id": 1.5, "x": 1.0, "k": "a"}', b"a", [], "is not an integer"),
]


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, format="JPEG")
    return buf.getvalue()


def _image(size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, format=fmt, **({"quality": 1} if fmt == "JPEG" else {}))
    return buf.getvalue()


JPEG = _jpeg()
FRAMES_CORPUS = [
    (JPEG[:-100], b"cam", [], "truncated JPEG"),
    (b"GIF89a" + b"\x00" * 100, b"cam", [], "wrong magic bytes"),
    (b"\xff\xd8\xff" + b"\x00" * (9 << 20) + b"\xff\xd9", b"cam", [], "exceeds max_frame_bytes"),
    (JPEG, None, [], "camera id"),
    # A small JPEG declaring 36 Mpixels: refused from its header, never decoded.
    (_image((9000, 4000), "JPEG"), b"cam", [], "more than max_frame_pixels"),
    (_image((16, 16), "PNG"), b"cam", [("content-type", b"image/jpeg")],
     "content-type image/jpeg but the data is a PNG"),
    (JPEG + b"\x00", b"cam", [("frame-index", str(2**70).encode())], "header 'frame-index'"),
]
REQUESTS_CORPUS = [
    (b'{"x": 1.0}', b"r", [("reply-to", b"test.svc.replies.v1")], "correlation-id"),
]


def run(topo: object, stop_after: int) -> KafkaRunner:
    r = KafkaRunner(topo)  # type: ignore[arg-type]
    th = threading.Thread(target=r.run, kwargs={"max_rows": stop_after, "max_idle_s": 30})
    th.start()
    r._thread = th  # type: ignore[attr-defined]
    return r


def test_bad_input_corpus_goes_to_the_dlq_and_good_rows_pass_once(kafka_bootstrap: str, reader) -> None:
    tag = uuid.uuid4().hex[:8]
    names = {kind: (f"test.bad-{tag}.{kind}.v1", f"test.bad-{tag}.{kind}-out.v1") for kind in ("rows", "frames",
                                                                                                "requests")}
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=src, partitions=2) for src, _ in names.values()])
    # The whole corpus (> 100,000 messages, librdkafka's default queue size) is queued before the first flush.
    p = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 16 << 20, "linger.ms": 5,
                  "queue.buffering.max.messages": 1_000_000})
    src, _ = names["rows"]
    bad_at = {i * (GOOD // len(ROWS_CORPUS)): item for i, item in enumerate(ROWS_CORPUS)}
    for i in range(GOOD):
        if i in bad_at:
            value, key, headers, _ = bad_at[i]
            p.produce(src, value, key, headers=headers)
        p.produce(src, orjson.dumps({"id": i, "x": float(i % 100), "k": f"k{i % 9}"}), f"k{i % 9}".encode())
        if i % 10_000 == 0:
            p.poll(0)
    for kind, corpus in (("frames", FRAMES_CORPUS), ("requests", REQUESTS_CORPUS)):
        for j, (value, key, headers, _) in enumerate(corpus):
            p.produce(names[kind][0], value, key, headers=headers)
            if kind == "frames":
                p.produce(names[kind][0], JPEG, b"cam", headers=[("frame-index", str(j).encode())])
            else:
                p.produce(names[kind][0], b'{"x": 2.0}', b"r", headers=[("correlation-id", f"c{j}".encode())])
    assert p.flush(60) == 0
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    before = topic_ends(admin)

    def topo(kind: str, codec: str, **inp: object) -> object:
        s, d = names[kind]
        inp = {"topic": s, "codec": codec, "partitions": 2, **inp}
        return parse_topology({"name": f"bad-{kind}-{tag}", "input": inp,
                               "outputs": [{"topic": d, "codec": "frames" if kind == "frames" else "json"}],
                               "kafka": {"bootstrap": kafka_bootstrap}, "metrics": {"port": 0}})

    runners = [
        run(topo("rows", "json", require_key=True, schema={"id": "int64", "x": "float64", "k": "string"}),
            GOOD + len(ROWS_CORPUS)),
        run(topo("frames", "frames"), 2 * len(FRAMES_CORPUS)),
        run(topo("requests", "requests"), 2 * len(REQUESTS_CORPUS)),
    ]
    for r in runners:
        r._thread.join(180)  # type: ignore[attr-defined]
    rows_runner = runners[0]
    assert rows_runner.stats.rows_dead == len(ROWS_CORPUS)
    assert rows_runner.stats.rows_out == GOOD
    assert rows_runner.stats.rows_in == rows_runner.stats.rows_out + rows_runner.stats.rows_dead
    total_kinds = 0
    for kind, corpus in (("rows", ROWS_CORPUS), ("frames", FRAMES_CORPUS), ("requests", REQUESTS_CORPUS)):
        s, d = names[kind]
        dead = reader(s + ".dlq", len(corpus), timeout_s=60)
        assert len(dead) == len(corpus), kind
        reasons = [dict(m.headers())["dlq.error"].decode() for m in dead]
        originals = {bytes(m.value() or b"") for m in dead}
        for value, _, _, fragment in corpus:
            assert any(fragment in r for r in reasons), f"{kind}: no dead letter says {fragment!r}: {reasons}"
            assert value in originals, f"{kind}: original bytes not kept for {fragment!r}"
        for m in dead:
            h = dict(m.headers())
            assert h["dlq.topic"].decode() == s and int(h["dlq.offset"]) >= 0 and h["dlq.stage"] == b"decode"
        total_kinds += len(corpus)
    assert total_kinds >= 20
    out = reader(names["rows"][1], GOOD, timeout_s=120)
    ids = [orjson.loads(m.value())["id"] for m in out]
    assert len(ids) == GOOD and len(set(ids)) == GOOD and set(ids) == set(range(GOOD))
    # No topic but each job's output, dead-letter topic and changelog received a record.
    after = topic_ends(admin)
    moved = {t for t in set(before) | set(after) if before.get(t, 0) != after.get(t, 0)}
    allowed = {t for s, d in names.values() for t in (d, s + ".dlq")} | {
        changelog_topic(f"bad-{kind}-{tag}") for kind in names}
    assert moved <= allowed, moved - allowed
