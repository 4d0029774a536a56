"""Topology configs fail fast with the key path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from dawnstream.errors import ConfigError
from dawnstream.streams.config import load_topology, parse_topology, redact

ROOT = Path(__file__).resolve().parents[2]
BASE = {"name": "t", "input": {"topic": "a.b.rows.v1"}, "output": {"topic": "a.b.out.v1"}}


def with_(**changes: object) -> dict:
    import copy

    d = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = d
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        node[keys[-1]] = value
    return d


@pytest.mark.parametrize(
    "doc, path, fragment",
    [
        (with_(input__topic="Flights"), "input.topic", "<domain>.<dataset>.<event>.v<N>"),
        (with_(input__codec="xml"), "input", "unknown codec"),
        (with_(input__partitions=0), "input.partitions", "greater than or equal to 1"),
        (with_(input__schema={"x": "decimal"}), "input.schema", "unknown type 'decimal'"),
        (with_(guarantee="maybe"), "guarantee", "'at_least_once' or 'exactly_once'"),
        (with_(batch__max_messages=0), "batch.max_messages", "greater than or equal to 1"),
        (with_(stages=[{"op": "filter", "expr": "x >> 1"}]), "stages.0.expr", "unexpected"),
        (with_(stages=[{"op": "select"}]), "stages.0.columns", "required parameter"),
        (with_(stages=[{"expr": "x"}]), "stages.0.op", "required key is missing"),
        (with_(extra_key=1), "extra_key", "unknown key"),
        ({"name": "t", "input": {"topic": "a.b.rows.v1"}}, "outputs", "required key is missing"),
        (with_(output={"topic": "a.b.rows.v1"}), "outputs", "loops forever"),
        (with_(kafka__bootstrap="${NOPE_NOT_SET}"), "kafka.bootstrap", "NOPE_NOT_SET is not set"),
    ],
)
def test_config_errors_name_the_key_path(doc: dict, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_topology(doc)
    assert e.value.path.startswith(path), e.value
    assert fragment in str(e.value)


def test_env_substitution_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_BOOT", "10.1.2.3:9092")
    t = parse_topology(with_(kafka__bootstrap="${MY_BOOT}", kafka__settings={"client.rack": "${RACK:-r1}"}))
    assert t.kafka.bootstrap == "10.1.2.3:9092" and t.kafka.settings == {"client.rack": "r1"}
    assert t.group_id == "dawnstream.t" and t.guarantee == "exactly_once" and t.checkpoint_ms == 5000


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    p = tmp_path / "t.yaml"
    p.write_text("name: t\ninput: {topic: a.b.c.v1\n")
    with pytest.raises(ConfigError, match="YAML syntax error at line"):
        load_topology(p)
    with pytest.raises(ConfigError, match="cannot read topology"):
        load_topology(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "topologies").glob("*.yaml")), ids=lambda p: p.name)
def test_example_topologies_are_valid(path: Path) -> None:
    t = load_topology(path)
    assert t.outputs and t.build_chain().operators


def test_secrets_are_redacted() -> None:
    r = redact({"sasl.password": "hunter2", "ssl.key.password": "x", "sasl.username": "me"})
    assert r == {"sasl.password": "***", "ssl.key.password": "***", "sasl.username": "me"}
