"""docker/compose.yaml is valid compose YAML wiring Kafka (KRaft), workers and Prometheus."""

from __future__ import annotations

from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_compose_file_is_well_formed() -> None:
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = doc["services"]
    assert {"kafka", "worker", "prometheus", "replay"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in ("worker", "replay"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
        assert services[name]["environment"]["DAWNSTREAM_KAFKA_BOOTSTRAP"] == "kafka:19092"
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
    mount = services["prometheus"]["volumes"][0].split(":")[0]
    prom = yaml.safe_load((DOCKER / mount).read_text())
    assert prom["scrape_configs"][0]["dns_sd_configs"][0]["names"] == ["worker"]
    assert (DOCKER / "Dockerfile").read_text().startswith("#")
