"""The Grafana dashboard and the Prometheus alert rules of docker/compose.yaml ask only for series the code
exports: every metric name is one :class:`~dawnstream.streams.metrics.WorkerMetrics` registers, and every
``dawnstream_stage_value`` name matches a gauge the stages report (taken from running them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_operator_conformance import EXAMPLES, chain

from dawnstream.operators.video.cascade import BOUND_GAUGES, LIVE_KEYS, STAGES, live_gauge
from dawnstream.streams.metrics import WorkerMetrics

DOCKER = Path(__file__).resolve().parents[2] / "docker"
METRIC = re.compile(r"\b(dawnstream_[a-z_]+)")
STAGE_NAME = re.compile(r'dawnstream_stage_value\{[^}]*name=~?"([^"]+)"')


def dashboard() -> dict:
    return json.loads((DOCKER / "grafana" / "dashboards" / "dawnstream.json").read_text())


def expressions() -> list[str]:
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    rules = yaml.safe_load((DOCKER / "alerts.yml").read_text())
    return exprs + [r["expr"] for g in rules["groups"] for r in g["rules"]]


def exported_series() -> set[str]:
    """Sample names the workers' /metrics carry (a counter ``x`` is exposed as ``x_total``...)."""
    names = set()
    for family in WorkerMetrics("t", 0).registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


@pytest.fixture(scope="module")
def stage_gauges() -> set[str]:
    """Gauge names of the stages with panels, from running each one's conformance example (and the cascade's
    live estimates, which exist only once it has checked frames, from the function that names them)."""
    names: set[str] = set()
    for kind in ("serve", "predict", "label"):
        c = chain(kind)
        for batch in EXAMPLES[kind][1]():
            c.process(batch)
        c.flush()
        names |= set(c.operators[0].gauges())
    names |= {f"frames_{s}" for s in STAGES} | {"reference_share", "alarms"} | {live_gauge(k) for k in LIVE_KEYS}
    names |= set(BOUND_GAUGES)
    return names


def test_the_dashboard_reads_the_provisioned_prometheus() -> None:
    source = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uid = source["datasources"][0]["uid"]
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    assert all(p["datasource"]["uid"] == uid and all(t["datasource"]["uid"] == uid for t in p["targets"])
               for p in panels)
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    mounts = dict(v.split(":")[:2] for v in compose["grafana"]["volumes"])
    provider = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "dashboards" / "dawnstream.yaml").read_text())
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    assert any(v.endswith(":" + prom["rule_files"][0] + ":ro") for v in compose["prometheus"]["volumes"])


def test_every_metric_the_dashboard_and_alerts_ask_for_is_exported() -> None:
    exported = exported_series()
    asked = {m for e in expressions() for m in METRIC.findall(e)}
    assert {"dawnstream_consumer_lag", "dawnstream_batch_seconds_bucket", "dawnstream_dead_letters_total"} <= asked
    assert asked <= exported, sorted(asked - exported)


def test_every_stage_value_name_matches_a_gauge_a_stage_reports(stage_gauges) -> None:
    patterns = [p for e in expressions() for p in STAGE_NAME.findall(e)]
    assert len(patterns) >= 10
    for pattern in patterns:
        for alternative in pattern.split("|"):
            assert any(re.fullmatch(alternative, g) for g in stage_gauges), (alternative, sorted(stage_gauges))
