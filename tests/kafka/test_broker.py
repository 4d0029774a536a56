"""The project's own broker management: start, answer, stop only our pid; CLI prints the address."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dawnstream.broker import BrokerManager, kafka_answers
from dawnstream.cli import app


def test_session_broker_answers_a_real_protocol_round_trip(kafka_bootstrap: str) -> None:
    assert kafka_answers(kafka_bootstrap)


def test_cli_start_reuses_a_running_broker_and_prints_bootstrap(kafka_bootstrap: str) -> None:
    port = kafka_bootstrap.rsplit(":", 1)[1]
    res = CliRunner().invoke(app, ["broker", "start", "--port", port])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == kafka_bootstrap
    status = CliRunner().invoke(app, ["broker", "status", "--port", port])
    assert status.exit_code == 0 and '"answers": true' in status.stdout


@pytest.mark.slow
def test_fresh_broker_formats_starts_and_stops_only_its_own_pid(tmp_path: Path, kafka_bootstrap: str) -> None:
    mgr = BrokerManager(port=39192, home=tmp_path / "broker")
    assert mgr.pid() is None and not mgr.stop()
    addr = mgr.start(timeout_s=120)
    try:
        assert addr == "127.0.0.1:39192" and kafka_answers(addr)
        assert (tmp_path / "broker" / "data" / "meta.properties").exists()
        pid = mgr.pid()
        assert pid is not None
        # the collector asked for (Shenandoah unless this JVM lacks it), as its GC log reports it
        assert mgr.status()["collector"] == {"shenandoah": "Shenandoah", "g1": "G1"}[mgr.jvm_collector()]
        if shutil.which("jcmd"):  # its GC log, read back: a collection asked for shows up as a pause
            t0 = time.time()
            subprocess.run(["jcmd", str(pid), "GC.run"], check=True, capture_output=True, timeout=60)
            deadline = time.monotonic() + 10
            # G1 names the cause; Shenandoah's cycle (run concurrently, ExplicitGCInvokesConcurrent) starts
            # with its init-mark pause
            want = "Diagnostic Command" if mgr.jvm_collector() == "g1" else "Pause Init Mark"
            while not any(want in p.kind for p in mgr.gc_pauses(t0, time.time() + 1) or []):
                assert time.monotonic() < deadline, (tmp_path / "broker" / "gc.log").read_text()
                time.sleep(0.2)
        other = BrokerManager(port=39192, home=tmp_path / "elsewhere")
        assert other.pid() is None and not other.stop()  # a manager never stops a broker it did not start
        assert kafka_answers(addr)
    finally:
        assert mgr.stop()
    assert not kafka_answers(addr, timeout_s=1.0)
    assert kafka_answers(kafka_bootstrap)  # the session broker is untouched
    assert "Kafka" in mgr.logs(200) or mgr.logs(200) != ""
