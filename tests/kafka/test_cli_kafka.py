"""`dawnstream topics create|list|describe` and `dawnstream replay` against the real broker."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dawnstream.cli import app


def test_topics_create_list_describe(kafka_bootstrap: str, topic_name) -> None:
    name = topic_name("rows", "cli")
    r = CliRunner().invoke(app, ["topics", "create", name, "--partitions", "3", "--config", "retention.ms=3600000",
                                 "--bootstrap", kafka_bootstrap])
    assert r.exit_code == 0, r.output
    assert name in r.stdout and f"{name}.dlq" in r.stdout
    r = CliRunner().invoke(app, ["topics", "list", "--bootstrap", kafka_bootstrap])
    assert r.exit_code == 0 and name in r.stdout
    r = CliRunner().invoke(app, ["topics", "describe", name, "--bootstrap", kafka_bootstrap])
    doc = json.loads(r.stdout)
    assert len(doc["partitions"]) == 3 and doc["config"]["retention.ms"] == "3600000"
    bad = CliRunner().invoke(app, ["topics", "create", "NotAName", "--bootstrap", kafka_bootstrap])
    assert bad.exit_code == 2 and "<domain>.<dataset>.<event>.v<N>" in bad.output
    never = topic_name("never", "cli")
    missing = CliRunner().invoke(app, ["topics", "describe", never, "--bootstrap", kafka_bootstrap])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_replay_weather_dataset(kafka_bootstrap: str, topic_name, reader) -> None:
    name = topic_name("rows", "weather")
    r = CliRunner().invoke(app, ["replay", "weather", "--topic", name, "--limit", "500", "--key", "origin",
                                 "--bootstrap", kafka_bootstrap])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["rows"] == summary["messages"] == 500
    msgs = reader(name, 500)
    first = json.loads(msgs[0].value())
    assert {"origin", "temp", "humid", "pressure", "time_hour"} <= set(first)
    assert {m.key() for m in msgs} <= {b"EWR", b"JFK", b"LGA"}
    r = CliRunner().invoke(app, ["replay", "weather", "--topic", topic_name("rows", "w2"), "--format", "arrow",
                                 "--batch-rows", "100", "--limit", "1000", "--bootstrap", kafka_bootstrap])
    assert r.exit_code == 0 and json.loads(r.stdout.strip().splitlines()[-1])["messages"] == 10


def test_replay_starts_where_asked(kafka_bootstrap: str, topic_name, reader) -> None:
    from dawnstream.sources import weather

    name = topic_name("rows", "wstart")
    r = CliRunner().invoke(app, ["replay", "weather", "--topic", name, "--start", "300", "--limit", "350",
                                 "--bootstrap", kafka_bootstrap])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["rows"] == 50
    want = weather().slice(300, 50).column("temp").to_pylist()
    assert [json.loads(m.value())["temp"] for m in reader(name, 50)] == want
    frames = topic_name("frames", "vstart")
    r = CliRunner().invoke(app, ["replay", "vtest", "--topic", frames, "--start", "790", "--camera", "lawn",
                                 "--bootstrap", kafka_bootstrap])
    assert r.exit_code == 0, r.output
    assert [int(dict(m.headers())["frame-index"]) for m in reader(frames, 5)] == [790, 791, 792, 793, 794]


def test_ensure_returns_once_a_fresh_consumer_sees_the_topics(kafka_bootstrap: str, topic_name) -> None:
    import pytest

    from dawnstream.errors import DawnstreamError
    from dawnstream.streams.kafka_clients import TopicAdmin
    from dawnstream.topics.spec import TopicSpec

    names = [topic_name(f"t{i}", "visible") for i in range(3)]
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=n, partitions=4) for n in names])
    # what another process sees right after: a new client of its own (a second worker of the job)
    seen = TopicAdmin(kafka_bootstrap).list_topics()
    assert all(seen.get(n) == 4 for n in names)
    with pytest.raises(DawnstreamError, match="did not appear"):
        TopicAdmin(kafka_bootstrap).wait_visible({topic_name("never", "visible"): 1}, timeout_s=0.5)
