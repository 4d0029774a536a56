"""The hostile corpus, case by case, through a real broker: one bad message costs that message only.

Each case produces good rows around its bad message(s) to a topic of its own and runs the job to the
end (``drain``). Then: every bad message is in ``<topic>.dlq`` with its reason; the counts balance
(rows in = rows decoded + rows dead-lettered); the group committed up to the end of the topic (the bad
message survives no restart); and the output equals a run of the same topology on the good rows alone
(``BatchProcessor``, no broker), so the state it left is the state without the bad message.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pytest
from confluent_kafka import Producer
from faultkit import committed, end_offsets

from dawnstream.sources import rotten_tomatoes
from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.processor import BatchProcessor
from dawnstream.streams.runner import KafkaRunner
from dawnstream.topics import Message
from dawnstream.topics.spec import TopicSpec

ARROW_CT = [("content-type", b"application/vnd.apache.arrow.stream")]
Record = tuple[bytes, bytes | None, list[tuple[str, bytes]]]


def ipc(table: pa.Table, compression: str | None = None, batches: int = 1) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        for _ in range(batches):
            w.write_table(table)
    return sink.getvalue().to_pybytes()


def flights(n: int, hours: int = 6) -> list[Record]:
    return [(orjson.dumps({"carrier": "UA AA DL B6".split()[i % 4], "dep_delay": float(i % 50),
                           "time_hour": f"2013-01-01T{(i * hours // n):02d}:00:00+00:00"}), b"k", [])
            for i in range(n)]


def row(d: dict[str, Any]) -> Record:
    return (orjson.dumps(d), b"k", [])


WINDOW = [{"op": "window_count", "key": "carrier", "time": "time_hour", "size": "1h"}]


def _bomb() -> bytes:
    zeros = pa.table({"carrier": pa.array(["UA"] * 1_000_000).dictionary_encode(),
                      "dep_delay": pa.array([0.0] * 1_000_000)})
    return ipc(zeros, "zstd", batches=40)


def _bad_utf8() -> bytes:
    data, offsets = pa.py_buffer(b"U\xffA"), pa.py_buffer(bytes(pa.array([0, 3], pa.int32()).buffers()[1]))
    carrier = pa.Array.from_buffers(pa.string(), 1, [None, offsets, data])
    return ipc(pa.table({"carrier": carrier, "dep_delay": [1.0], "time_hour": ["2013-01-01T00:00:00"]}))


def _reviews(n: int) -> list[dict]:
    t = rotten_tomatoes().slice(0, n).to_pylist()
    return [{"id": r["id"], "text": r["text"], "gold": ["rotten", "fresh"][r["label"]] if i % 7 == 0 else None}
            for i, r in enumerate(t)]


@dataclass
class Case:
    """One hostile message (or a few) among good rows, and what must become of it."""

    name: str
    stages: list[dict]
    good: Callable[[], list[Record]]
    bad: Callable[[], list[Record]]
    says: str  # a fragment of every bad message's dlq.error
    at: float = 0.5  # where the bad messages go among the good ones (0: first)
    input: dict[str, Any] = field(default_factory=dict)
    check: Callable[[list], None] | None = None  # more checks on the dead letters


CASES = [
    Case("first-batch-malformed", WINDOW, lambda: flights(400), lambda: [(b'{"carrier": "UA", "time_hour": ', b"k",
                                                                           [])],
         "invalid JSON", at=0.0),
    Case("ten-thousand-keys", [{"op": "filter", "expr": "dep_delay >= 0"}], lambda: flights(300),
         lambda: [row({"carrier": "UA", "dep_delay": 1.0, **{f"k{i}": i for i in range(10_000)}})],
         "input.max_columns", at=0.0),
    Case("integer-past-int64-first", [{"op": "filter", "expr": "dep_delay >= 0"}], lambda: flights(300),
         lambda: [(b'{"carrier": "UA", "dep_delay": 1.0, "seats": %d}' % 2**70, b"k", [])], "beyond int64", at=0.0),
    Case("event-time-9999", WINDOW, lambda: flights(400),
         lambda: [row({"carrier": "UA", "dep_delay": 1.0, "time_hour": "9999-12-31T23:59:59+00:00"})], "max_skew"),
    Case("numeric-time-overflow", [{**WINDOW[0], "time": "t", "time_unit": "s"}],
         lambda: [row({"carrier": "UA", "t": 1_356_998_400 + 60 * i}) for i in range(300)],
         lambda: [row({"carrier": "UA", "t": 9_223_372_036_854_775_807})], "not a usable event time"),
    Case("arrow-compression-bomb", [{"op": "filter", "expr": "dep_delay >= 0"}], lambda: flights(300),
         lambda: [(_bomb(), b"k", ARROW_CT)], "input.max_decoded_bytes"),
    Case("arrow-invalid-utf8", WINDOW, lambda: flights(300), lambda: [(_bad_utf8(), b"k", ARROW_CT)],
         "Invalid UTF8"),
    Case("near-the-size-limit", [{"op": "filter", "expr": "dep_delay >= 0"}], lambda: flights(200),
         lambda: [(b'{"carrier": "' + b"x" * ((16 << 20) - 8192) + b'"}', b"k", [])], "exceeds max_message_bytes",
         check=lambda dead: [dict(m.headers())["dlq.truncated"] for m in dead]),
    Case("gold-that-is-no-class",
         [{"op": "label", "lfs": ["dawnstream.operators.labeling.lfs.sentiment"], "classes": ["rotten", "fresh"],
           "gold": "gold", "refit_every": 100, "class_balance": "estimate"}],
         lambda: [row(r) for r in _reviews(700)], lambda: [row({**_reviews(1)[0], "gold": "maybe"})],
         "is not a class"),
]


def _reference(topology: Any, good: list[Record]) -> list[dict]:
    bp = BatchProcessor(topology)
    res = bp.process(0, [Message(v, k, h, topology.input.topic, 0, i) for i, (v, k, h) in enumerate(good)])
    fl = bp.flush()
    return sorted((orjson.loads(v) for r in (res, fl) for _, enc in r.outputs for v in enc.values),
                  key=orjson.dumps)


def _produce(bootstrap: str, topic: str, records: list[Record]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 16 << 20, "linger.ms": 5})
    for value, key, headers in records:
        p.produce(topic, value, key, headers=headers)
        p.poll(0)
    assert p.flush(60) == 0


def _run(doc: dict, rows: int, drain: bool = True) -> KafkaRunner:
    runner = KafkaRunner(parse_topology(doc))
    done: list[Any] = []
    th = threading.Thread(target=lambda: done.append(runner.run(max_rows=rows, max_idle_s=20, drain=drain)))
    th.start()
    th.join(300)
    assert not th.is_alive() and done, "the job did not come to the end of its input"
    return runner


def _job(name: str, bootstrap: str, stages: list[dict], **inp: Any) -> tuple[dict, str, str]:
    tag = uuid.uuid4().hex[:8]
    src, dst = f"test.hostile-{tag}.{name}.v1", f"test.hostile-{tag}.{name}-out.v1"
    TopicAdmin(bootstrap).ensure([TopicSpec(name=src, partitions=1)])
    doc = {"name": f"hostile-{name}-{tag}", "input": {"topic": src, "partitions": 1, **inp}, "stages": stages,
           "outputs": [{"topic": dst}], "kafka": {"bootstrap": bootstrap}, "metrics": {"port": 0},
           "batch": {"max_messages": 97}}
    return doc, src, dst


def _output(reader: Any, dst: str) -> list[dict]:
    return sorted((orjson.loads(m.value()) for m in reader(dst, None, timeout_s=60, idle_s=3)), key=orjson.dumps)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_one_hostile_message_costs_that_message_only(case: Case, kafka_bootstrap: str, reader) -> None:
    doc, src, dst = _job(case.name, kafka_bootstrap, case.stages, **case.input)
    good, bad = case.good(), case.bad()
    cut = int(len(good) * case.at)
    _produce(kafka_bootstrap, src, good[:cut] + bad + good[cut:])
    runner = _run(doc, len(good) + len(bad))
    stats = runner.stats
    assert stats.rows_dead == len(bad) and stats.rows_in == len(good) + len(bad)
    dead = reader(src + ".dlq", len(bad), timeout_s=60)
    assert len(dead) == len(bad)
    for m in dead:
        why = dict(m.headers())["dlq.error"].decode()
        assert case.says in why, why
    if case.check is not None:
        case.check(dead)
    group = parse_topology(doc).group_id
    assert committed(kafka_bootstrap, group, src, 1) == sum(end_offsets(kafka_bootstrap, src).values())
    assert _output(reader, dst) == _reference(parse_topology(doc), good)


def test_open_windows_past_one_message_survive_a_checkpoint_and_a_restart(kafka_bootstrap: str, reader) -> None:
    # 200,000 keys of 48 characters in one open window: as one blob, 20 MB of snapshot (the changelog takes 16 MiB)
    stages = [{"op": "window_count", "key": "k", "time": "t", "size": "1h", "max_skew": None}]
    doc, src, dst = _job("wide-window", kafka_bootstrap, stages)
    n = 200_000
    keys = [f"{i:048d}" for i in range(n)]
    _produce(kafka_bootstrap, src, [(ipc(pa.table({"k": keys[a:a + 10_000], "t": ["2013-01-01T00:10:00"] * 10_000})),
                                     b"k", ARROW_CT) for a in range(0, n, 10_000)])
    first = _run(doc, n, drain=False)  # stops after a checkpoint of every open count
    assert first.stats.rows_in == n and first.stats.rows_dead == 0
    _produce(kafka_bootstrap, src, [row({"k": "x", "t": "2013-01-01T02:00:00"})])  # closes the first window
    second = _run(doc, 1, drain=False)  # a new worker: the counts come back from the changelog, key by key
    assert second.stats.rows_in == 1
    out = reader(dst, n, timeout_s=120)
    counts = {orjson.loads(m.value())["k"]: orjson.loads(m.value())["count"] for m in out}
    assert len(out) == n and counts == dict.fromkeys(keys, 1)


def test_a_malformed_end_model_is_refused_and_labelling_goes_on(kafka_bootstrap: str, reader, tmp_path) -> None:
    import io

    import numpy as np

    from dawnstream.models.registry import Registry

    registry = Registry(tmp_path / "registry")
    buf = io.BytesIO()  # loads, but its coefficients fit no hashed text (IndexError / shape error when used)
    np.savez(buf, coef=np.zeros((1, 100), np.float32), intercept=np.zeros(1), settings=np.array([2, 1 << 18, 2]))
    registry.promote("end", registry.register("end", buf.getvalue(), "npz").version)
    stages = [{"op": "label", "lfs": ["dawnstream.operators.labeling.lfs.sentiment"], "classes": ["rotten", "fresh"],
               "refit_every": 100, "end_model": "end", "registry": str(registry.root), "refresh_s": 0.0}]
    doc, src, dst = _job("end-model", kafka_bootstrap, stages)
    good = [row(r) for r in _reviews(500)]
    _produce(kafka_bootstrap, src, good)
    runner = _run(doc, len(good))
    assert runner.stats.rows_dead == 0 and runner.stats.rows_out == len(good)
    plain = {**doc, "stages": [{k: v for k, v in stages[0].items() if k not in ("end_model", "registry", "refresh_s")}]}
    assert _output(reader, dst) == _reference(parse_topology(plain), good)


def test_a_kernel_cache_with_no_room_runs_the_job_uncompiled(kafka_bootstrap: str, reader, tmp_path,
                                                             monkeypatch) -> None:
    import dawnstream.accel.cpu as cpu

    (tmp_path / "full").write_text("")
    monkeypatch.setenv("DAWNSTREAM_CACHE", str(tmp_path / "full" / "cache"))  # cannot be created
    monkeypatch.setattr(cpu, "_MODULES", {})  # a fresh worker: nothing compiled in memory
    stages = [{"op": "filter", "expr": "dep_delay > 10"}, {"op": "derive", "columns": {"h": "dep_delay / 60"}}]
    doc, src, dst = _job("no-cache", kafka_bootstrap, stages)
    doc["accel"] = "cpu"
    good = flights(300)
    _produce(kafka_bootstrap, src, good)
    runner = _run(doc, len(good))
    assert runner.stats.rows_dead == 0 and runner.stats.rows_in == len(good)
    assert _output(reader, dst) == _reference(parse_topology(doc), good)


@pytest.mark.parametrize("stage,path,says", [
    ({"op": "label", "lfs": ["this"], "classes": ["a", "b"]}, "stages.0.lfs.0", "standard library"),
    ({"op": "label", "lfs": ["os.path"], "classes": ["a", "b"]}, "stages.0.lfs.0", "standard library"),
    ({"op": "window_count", "key": "k", "time": "t", "size": "1h", "max_skew": "later"}, "stages.0.max_skew",
     "expected a duration"),
])
def test_a_hostile_config_fails_at_load_naming_the_key_and_runs_nothing(stage, path, says, capsys) -> None:
    import sys

    from dawnstream.errors import ConfigError

    sys.modules.pop("this", None)
    with pytest.raises(ConfigError) as e:
        parse_topology({"name": "hostile-config", "input": {"topic": "test.hostile.config.v1"}, "stages": [stage],
                        "outputs": [{"topic": "test.hostile.config-out.v1"}]})
    assert e.value.path == path and says in e.value.message
    assert "this" not in sys.modules and "Beautiful is better" not in capsys.readouterr().out
