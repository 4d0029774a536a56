"""Interop with an independent client: kafka-python produces, the topology runs, kafka-python reads."""

from __future__ import annotations

import json
import threading

from kafka import KafkaConsumer, KafkaProducer

from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.runner import KafkaRunner
from dawnstream.topics.spec import TopicSpec


def test_kafka_python_in_and_out_with_dead_letters(kafka_bootstrap: str, topic_name) -> None:
    src, dst = topic_name("rows", "interop"), topic_name("alerts", "interop")
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=src, partitions=3)])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    good, bad = 0, 0
    for i in range(3000):
        if i % 100 == 7:
            value, bad = b'{"device": "d1", "temp": "hot"}' if i % 200 == 7 else b"{{nope", bad + 1
        else:
            value, good = json.dumps({"device": f"d{i % 5}", "temp": 20 + (i % 50)}).encode(), good + 1
        producer.send(src, value=value, key=f"d{i % 5}".encode())
    producer.flush()
    producer.close()

    topo = parse_topology({
        "name": f"interop-{src}", "input": {"topic": src, "partitions": 3},
        "stages": [{"op": "filter", "expr": "temp >= 60"}, {"op": "derive", "columns": {"temp_f": "temp * 9 / 5 + 32"}},
                   {"op": "select", "columns": ["device", "temp", "temp_f"]}],
        "outputs": [{"topic": dst, "key_field": "device"}],
        "kafka": {"bootstrap": kafka_bootstrap}, "metrics": {"port": 0},
    })
    runner = KafkaRunner(topo)
    th = threading.Thread(target=runner.run, kwargs={"max_rows": 3000, "max_idle_s": 30})
    th.start()
    th.join(90)
    assert not th.is_alive()
    assert runner.stats.rows_in == 3000 and runner.stats.rows_dead == bad

    def read(topic: str, n: int) -> list:
        c = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                          consumer_timeout_ms=8000, group_id=None)
        out = []
        for m in c:
            out.append(m)
            if len(out) >= n:
                break
        c.close()
        return out

    expected = [20 + (i % 50) for i in range(3000) if i % 100 != 7 and 20 + (i % 50) >= 60]
    outs = read(dst, len(expected))
    assert len(outs) == len(expected) == runner.stats.rows_out
    rows = [json.loads(m.value) for m in outs]
    assert sorted(r["temp"] for r in rows) == sorted(expected)
    assert all(r["temp_f"] == r["temp"] * 9 / 5 + 32 and set(r) == {"device", "temp", "temp_f"} for r in rows)
    assert all(m.key.decode() == json.loads(m.value)["device"] for m in outs)
    dead = read(src + ".dlq", bad)
    assert len(dead) == bad
    reasons = {dict(m.headers)["dlq.error"].decode() for m in dead}
    assert any("invalid JSON" in r for r in reasons)
    assert any("column 'temp': str 'hot' is not a number" in r for r in reasons)  # compared with a number: float64
    assert all(dict(m.headers)["dlq.topic"].decode() == src for m in dead)
    assert good + bad == 3000 == runner.stats.rows_out + runner.stats.rows_dead + (good - len(expected))
