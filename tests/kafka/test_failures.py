"""Failures a worker cannot heal are fast and loud; data errors still only dead-letter.

Each test here failed before the fix it guards (issue 10): a missing changelog retried for 5
minutes, a missing input topic was waited for forever, an operator bug was dead-lettered like bad
data, a fenced worker ended in ``SystemError``, a busy metrics port was a bare ``OSError``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from dawnstream.errors import ConfigError, DawnstreamError
from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.runner import KafkaRunner
from dawnstream.streams.state import changelog_topic

pytestmark = pytest.mark.kafka

# A stage only these tests know, registered in every process through sitecustomize (the workers of
# `dawnstream run` are spawned, so they import it too): x == bad is a data error, x == bug a bug.
PLUGIN = textwrap.dedent('''
    from dawnstream.errors import DataError
    from dawnstream.operators.base import Operator
    from dawnstream.operators.registry import register

    @register
    class Fragile(Operator):
        kind = "fragile"

        def __init__(self, bad: float, bug: float, name=None):
            super().__init__(name)
            self.bad, self.bug = bad, bug

        def required_columns(self):
            return {"x"}

        def process(self, batch):
            xs = batch.column("x").to_pylist()
            if self.bad in xs:
                raise DataError(f"x == {self.bad} is not a value this stage takes")
            if self.bug in xs:
                raise RuntimeError("injected bug in the fragile stage")
            return [batch]
''')


def topology(tag: str, bootstrap: str, stages: list | None = None, **extra: object) -> dict:
    return {"name": f"fail-{tag}", "input": {"topic": f"test.fail-{tag}.rows.v1", "partitions": 2},
            "stages": stages or [], "output": {"topic": f"test.fail-{tag}.out.v1"},
            "kafka": {"bootstrap": bootstrap}, "metrics": {"port": 0}, "checkpoint_ms": 0, **extra}


def write(tmp_path: Path, doc: dict) -> Path:
    import yaml

    p = tmp_path / f"{doc['name']}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def cli(args: list[str], bootstrap: str, plugin_dir: Path | None = None, **kw: object) -> subprocess.Popen:
    env = {**os.environ, "DAWNSTREAM_KAFKA_BOOTSTRAP": bootstrap, "DAWNSTREAM_LOG_LEVEL": "INFO"}
    if plugin_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(plugin_dir), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-m", "dawnstream", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, **kw)  # type: ignore[call-overload]


def produce(bootstrap: str, topic: str, rows: list[dict]) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for i, r in enumerate(rows):
        p.produce(topic, orjson.dumps(r), key=str(i).encode())
    assert p.flush(30) == 0


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, float]:
    t0 = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"still running after {timeout}s:\n{out.decode(errors='replace')[-4000:]}") from None
    return proc.returncode, out.decode(errors="replace"), time.monotonic() - t0


def test_a_missing_input_topic_with_no_create_topics_exits_fast_naming_it(kafka_bootstrap: str,
                                                                          tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    doc = topology(tag, kafka_bootstrap)
    t0 = time.monotonic()
    rc, out, _ = finish(cli(["run", str(write(tmp_path, doc)), "--no-create-topics"], kafka_bootstrap), 60)
    assert rc != 0
    assert time.monotonic() - t0 < 30, out
    assert f"test.fail-{tag}.rows.v1" in out and "dawnstream topics create" in out
    assert f"test.fail-{tag}.rows.v1" not in TopicAdmin(kafka_bootstrap).list_topics()


def test_the_runner_creates_its_changelog_when_the_caller_creates_only_the_user_topics(kafka_bootstrap: str) -> None:
    # The demo's bug: create_topics=False skipped the changelog, and every restore then retried for 5 min.
    tag = uuid.uuid4().hex[:8]
    topo = parse_topology(topology(tag, kafka_bootstrap))
    TopicAdmin(kafka_bootstrap).ensure(topo.user_topics())
    produce(kafka_bootstrap, topo.input.topic, [{"x": float(i)} for i in range(50)])
    runner = KafkaRunner(topo, create_topics=False, metrics_port=-1)
    assert changelog_topic(topo.name) in TopicAdmin(kafka_bootstrap).list_topics()
    t0 = time.monotonic()
    stats = runner.run(max_rows=50, max_idle_s=30)
    assert stats.rows_in == 50 and time.monotonic() - t0 < 30


def test_an_operator_bug_stops_the_job_and_a_data_error_only_dead_letters(kafka_bootstrap: str, tmp_path: Path,
                                                                          reader) -> None:
    tag = uuid.uuid4().hex[:8]
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "sitecustomize.py").write_text(PLUGIN)
    doc = topology(tag, kafka_bootstrap, [{"op": "fragile", "bad": 7, "bug": 13}])
    src, dlq, dst = doc["input"]["topic"], doc["input"]["topic"] + ".dlq", doc["output"]["topic"]
    proc = cli(["run", str(write(tmp_path, doc)), "--workers", "2"], kafka_bootstrap, tmp_path / "plugin")
    try:
        produce(kafka_bootstrap, src, [{"x": 7.0}])  # a data error: dead-lettered, the job runs on
        assert len(reader(dlq, 1, timeout_s=60)) == 1
        produce(kafka_bootstrap, src, [{"x": 1.0}, {"x": 2.0}])
        assert len(reader(dst, 2, timeout_s=60)) == 2
        assert proc.poll() is None, "a data error must not stop the job"
        produce(kafka_bootstrap, src, [{"x": 13.0}])  # a bug: the whole job stops, saying why
        rc, out, _ = finish(proc, 90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 1, out[-3000:]
    assert "error: worker" in out and "RuntimeError: injected bug in the fragile stage" in out
    # Each failing worker logs it once, with the traceback. (The failed worker's partition can reach the
    # other worker before the shutdown does; that one then fails on the same message and says so too.)
    failed = [ln for ln in out.splitlines() if "event=runner.failed" in ln]
    assert 1 <= len(failed) == len({ln.split("worker=")[1].split()[0] for ln in failed}), out[-3000:]
    assert "Traceback" in out and out.count("error: worker") == 1
    dead = reader(dlq, 1, timeout_s=10)
    assert len(dead) == 1, "the bug's row was dead-lettered as if it were bad data"
    assert len(reader(dst, None, timeout_s=10, idle_s=2)) == 2, "the failed batch must not be committed"


def test_a_fenced_worker_says_so(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    topo = parse_topology(topology(tag, kafka_bootstrap))
    first = KafkaRunner(topo, worker=0, metrics_port=-1)
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            first.run(max_idle_s=60)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    produce(kafka_bootstrap, topo.input.topic, [{"x": 1.0}] * 10)
    deadline = time.monotonic() + 30
    while first.stats.rows_in < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    second = KafkaRunner(topo, worker=0, metrics_port=-1)  # same transactional id: fences the first
    try:
        produce(kafka_bootstrap, topo.input.topic, [{"x": 2.0}] * 10)
        th.join(60)
        assert not th.is_alive(), "the fenced worker kept running"
        err = box.get("error")
        assert isinstance(err, DawnstreamError), repr(err)
        assert "fenced" in str(err) and "worker index" in str(err)
        assert first.metrics.health()["state"] == "failed"
    finally:
        second.close()


def test_a_busy_metrics_port_names_the_setting(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        topo = parse_topology(topology(tag, kafka_bootstrap, metrics={"port": port}))
        with pytest.raises(ConfigError, match=rf"^metrics\.port: cannot serve metrics on 127\.0\.0\.1:{port}"):
            KafkaRunner(topo)
