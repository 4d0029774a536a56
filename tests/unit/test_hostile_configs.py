"""Topology files built to hurt: alias bombs, secrets in error messages, values that pass
validation and fail later. Each must fail at load with the key path and what was expected."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dawnstream.errors import ConfigError
from dawnstream.streams.config import load_topology, parse_topology, redact

BASE = {"name": "t", "input": {"topic": "a.b.rows.v1"}, "output": {"topic": "a.b.out.v1"}}

LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
name: t
input: {topic: a.b.rows.v1}
output: {topic: a.b.out.v1}
"""


def test_a_billion_laughs_file_fails_fast(tmp_path: Path) -> None:
    p = tmp_path / "bomb.yaml"
    p.write_text(LAUGHS)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="more than 100,000 values through YAML aliases"):
        load_topology(p)
    assert time.perf_counter() - t0 < 5  # it used to run at 100% CPU for minutes


def test_an_alias_that_contains_itself_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "cycle.yaml"
    p.write_text("name: t\ninput: {topic: a.b.rows.v1}\noutput: {topic: a.b.out.v1}\nx: &x [1, *x]\n")
    with pytest.raises(ConfigError, match="contains it"):
        load_topology(p)


def test_a_few_aliases_are_still_fine(tmp_path: Path) -> None:
    p = tmp_path / "ok.yaml"
    p.write_text("name: t\ninput: {topic: a.b.rows.v1}\noutputs:\n  - &o {topic: a.b.out.v1}\n"
                 "kafka: {settings: &s {acks: all}}\n")
    assert load_topology(p).kafka.settings == {"acks": "all"}


@pytest.mark.parametrize("doc", [
    {**BASE, "kafka": {"settings": ["sasl.password=hunter2"]}},            # a list where a mapping goes
    {**BASE, "kafka": {"settings": {"sasl.password": "hunter2"}, "bootstrap": ["x"]}},
    {**BASE, "kafka": "sasl.password=hunter2"},
    {**BASE, "password": "hunter2"},                                        # unknown key with a secret name
    {**BASE, "input": {"topic": "a.b.rows.v1", "partitions": "many", "sasl.password": "hunter2"}},
    {**BASE, "output": "x", "outputs": [], "kafka": {"settings": {"ssl.key.pem": "hunter2"}}},
    {"name": "t", "input": {"topic": "a.b.rows.v1"}, "kafka": {"settings": {"sasl.oauthbearer.client.secret":
                                                                          "hunter2"}}},
], ids=["settings-list", "bootstrap-list", "settings-string", "top-level", "input", "document", "missing-output"])
def test_config_errors_never_show_a_secret(doc: dict) -> None:
    with pytest.raises(ConfigError) as e:
        parse_topology(doc)
    assert "hunter2" not in str(e.value)


def test_client_setting_names_with_key_are_redacted_in_logs() -> None:
    r = redact({"ssl.key.pem": "-----BEGIN", "sasl.oauthbearer.client.secret": "s", "acks": "all"})
    assert r == {"ssl.key.pem": "***", "sasl.oauthbearer.client.secret": "***", "acks": "all"}


def test_a_million_partitions_fails_at_load_with_the_key_path() -> None:
    with pytest.raises(ConfigError, match=r"^input\.partitions: .*less than or equal to 10000"):
        parse_topology({**BASE, "input": {"topic": "a.b.rows.v1", "partitions": 1_000_000}})
    with pytest.raises(ConfigError, match=r"^outputs\.0\.partitions"):
        parse_topology({**BASE, "output": {"topic": "a.b.out.v1", "partitions": 1_000_000}})


@pytest.mark.parametrize("expr, says", [
    ("x + 1", "gives a number"),
    ("lower(s)", "gives a string"),
    ("'yes'", "gives a string"),
    ("coalesce(x, 0) * 2", "gives a number"),
    ("x > 99999999999999999999", "does not fit int64"),
    ("x > 1e999", "beyond the float64 range"),
])
def test_filters_that_cannot_be_true_or_false_fail_at_load(expr: str, says: str) -> None:
    with pytest.raises(ConfigError, match=r"^stages\.0\.expr: .*" + says):
        parse_topology({**BASE, "stages": [{"op": "filter", "expr": expr}]})


@pytest.mark.parametrize("expr", ["x", "x > 1", "not flag", "if(x > 1, true, false)", "coalesce(flag, false)",
                                  "x > -9223372036854775807", "s in ('a', 'b')"])
def test_boolean_or_column_filters_still_load(expr: str) -> None:
    parse_topology({**BASE, "stages": [{"op": "filter", "expr": expr}]})
