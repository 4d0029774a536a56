"""Serving through a real broker: request/reply, error replies, dead letters, a kafka-python client,
a θ swap mid-stream, and a serving worker killed with SIGKILL (no reply lost, the same weights)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from dashkit import check_idle_job, job_selector, stage_values, stages_of

from dawnstream.models.mf import fit_als
from dawnstream.models.registry import Registry
from dawnstream.operators.serving.serve import Serve
from dawnstream.sources import movielens
from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import ensure_job_topics
from dawnstream.streams.request_reply import PredictClient
from dawnstream.streams.runner import KafkaRunner

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ratings():
    t = movielens().slice(0, 6000)
    return [tuple(r.values()) for r in t.select(["user_id", "item_id", "rating"]).to_pylist()]


@pytest.fixture
def registry(tmp_path, ratings):
    reg = Registry(tmp_path / "registry")
    u, i, r = (np.asarray(c) for c in zip(*ratings[:3000], strict=True))
    theta = fit_als(u, i, r, k=8, iters=6)
    reg.promote("movielens-theta", reg.register("movielens-theta", theta.to_npz(), "npz").version)
    reg.promote("movielens-svd", reg.register("movielens-svd", theta.to_onnx(), "onnx").version)
    return reg


def topology_doc(registry: Registry, partitions: int = 2) -> dict:
    doc = yaml.safe_load((ROOT / "topologies" / "movie-ratings.yaml").read_text())
    tag = uuid.uuid4().hex[:8]
    doc["name"] = f"test-serve-{tag}"
    doc["input"]["topic"] = f"test.serve-{tag}.events.v1"
    doc["input"]["partitions"] = partitions
    doc["outputs"][0]["topic"] = f"test.serve-{tag}.replies.v1"
    doc["stages"][0]["registry"] = str(registry.root)
    doc["stages"][0]["refresh_s"] = 0.2
    doc["metrics"]["port"] = 0
    return doc


class Worker:
    """A KafkaRunner on a thread (stopped and joined by :meth:`stop`)."""

    def __init__(self, doc: dict) -> None:
        self.runner = KafkaRunner(parse_topology(doc), metrics_port=0)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as e:  # noqa: BLE001 - asserted by the test
            self.error = e

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join(60)
        assert self.error is None, self.error


@contextlib.contextmanager
def serving(doc: dict):
    """A worker on ``doc``, with its partitions assigned: yields the topology, a client and the worker's runner;
    the worker is stopped after."""
    topo = parse_topology(doc)
    worker = Worker(doc)
    try:
        wait_assigned(worker, topo.input.partitions)
        with PredictClient(topo.kafka.bootstrap, topo.input.topic, topo.outputs[0].topic) as client:
            yield topo, client, worker.runner
    finally:
        worker.stop()


def wait_assigned(worker: Worker, partitions: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(worker.runner.assigned) < partitions or worker.runner.recovery.pending:
        assert time.monotonic() < deadline, "the worker did not get its partitions"
        time.sleep(0.1)


def serving_shown(topo):
    """The serving panels, per partition: p50/p99 against the SLO, requests, and each model's version, AIMD batch
    size and weight as the gauges say; the registry says which version the job serves."""
    sel = job_selector(topo.name)
    stage = topo.stages[0].name or "serve"

    def check(dash, url: str) -> list[str]:
        problems = []
        for p, panel in stages_of(url)["stages"][stage].items():
            cap = f'{sel} [data-cap="serving"][data-partition="{p}"]'
            kpis = dash.values(cap)
            for key in ("latency_p50_ms", "latency_p99_ms"):
                want = stage_values([url], stage, key).get(p)
                if kpis.get(key) != want:
                    problems.append(f"partition {p} {key}: page {kpis.get(key)} != metrics {want}")
            if kpis.get("requests") != panel["counters"]["requests"]:
                problems.append(f"partition {p} requests: page {kpis.get('requests')} != {panel['counters']}")
            for model, row in dash.rows(cap, "model").items():
                for key in ("version", "batch", "weight"):
                    want = stage_values([url], stage, f"{key}.{model}").get(p)
                    if row.get(key) != want:
                        problems.append(f"partition {p} {model} {key}: page {row.get(key)} != metrics {want}")
        served = dash.page.locator('#registry [data-model="movielens-theta"] h3').inner_text()
        if f"{topo.name}/{stage}: v1" not in served:
            problems.append(f"registry: {served!r} does not say {topo.name} serves v1")
        return problems

    return check


def test_request_reply_errors_and_dead_letters(kafka_bootstrap, registry, ratings, reader, tmp_path) -> None:
    with serving(topology_doc(registry)) as (topo, client, runner):
        acks = [client.feedback(u, i, r, ack=True) for u, i, r in ratings[:500]]
        asks = [client.send({"user_id": u, "item_id": i}) for u, i, _ in ratings[500:700]]
        cold = client.send({"user_id": 10_000_000, "item_id": ratings[0][1]})  # a user never seen
        bad = client.send({"user_id": 1, "item_id": "not-an-id"})
        missing = client.send({"user_id": 1})
        got = client.wait(acks + asks + [cold, bad, missing], timeout_s=60)
        assert len(got) == len(acks) + len(asks) + 3  # nobody is left waiting
        for cid in asks + [cold]:
            reply = got[cid]
            assert reply["kind"] == "prediction" and 1.0 <= reply["prediction"] <= 5.0 and not reply["default"]
            assert "svd" in reply["versions"]
        assert all(got[c]["kind"] == "feedback" for c in acks)
        assert got[bad]["kind"] == "error" and "item_id" in got[bad]["error"]
        assert got[missing]["kind"] == "error" and "item_id" in got[missing]["error"]
        errs = [got[c]["prediction"] - r for c, (_, _, r) in zip(acks, ratings[:500], strict=True)]
        assert np.sqrt(np.mean(np.square(errs))) < 1.2
        client.forget(acks + asks)
        assert not set(acks + asks) & (set(client.replies) | set(client.sent) | set(client.arrived))
        assert client.request({"user_id": 1, "item_id": 1})["kind"] == "prediction"
        assert len(client.replies) == len(client.sent) == 3  # request() keeps nothing of its own
        # A request without a correlation-id cannot be answered: it is dead-lettered with the reason.
        p = Producer({"bootstrap.servers": kafka_bootstrap})
        p.produce(topo.input.topic, orjson.dumps({"user_id": 1, "item_id": 2}), b"1",
                  headers=[("reply-to", topo.outputs[0].topic.encode())])
        p.flush(10)
        dead = reader(f"{topo.input.topic}.dlq", expected=1)
        assert len(dead) == 1 and b"correlation-id" in dict(dead[0].headers())["dlq.error"]
        shots = {'{job} [data-cap="serving"]': "ui-serving", "#registry": "ui-registry"}
        check_idle_job(kafka_bootstrap, topo, runner, serving_shown(topo), shots, tmp_path, dead=1, registry=registry)


def test_a_kafka_python_client_gets_its_reply(kafka_bootstrap, registry) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP

    doc = topology_doc(registry)
    topo = parse_topology(doc)
    ensure_job_topics(topo)
    worker = Worker(doc)
    try:
        wait_assigned(worker, 2)
        replies = topo.outputs[0].topic
        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        tps = [KTP(replies, p) for p in consumer.partitions_for_topic(replies)]
        consumer.assign(tps)
        consumer.seek_to_end()
        for tp in tps:
            consumer.position(tp)  # resolve the end offsets before the request leaves
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)  # Java's murmur2 partitioner
        producer.send(topo.input.topic, key=b"196", value=b'{"user_id": 196, "item_id": 242}',
                      headers=[("correlation-id", b"kp-1"), ("reply-to", replies.encode())])
        producer.flush()
        deadline = time.monotonic() + 60
        reply = None
        while reply is None and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    if dict(rec.headers).get("correlation-id") == b"kp-1":
                        reply = orjson.loads(rec.value)
        consumer.close()
        producer.close()
        assert reply is not None and reply["kind"] == "prediction" and reply["user_id"] == 196
    finally:
        worker.stop()


def test_a_theta_swap_mid_stream_loses_and_repeats_nothing(kafka_bootstrap, registry, ratings) -> None:
    with serving(topology_doc(registry)) as (_topo, client, _runner):
        sent = []
        for n, (u, i, r) in enumerate(ratings[:3000]):
            sent.append(client.feedback(u, i, r, ack=True))
            sent.append(client.send({"user_id": u, "item_id": i}))
            if n == 1500:  # promote a retrained θ while requests are in flight
                client.wait(sent[:1000], timeout_s=60)  # the worker is mid-stream, answering with v1
                uu, ii, rr = (np.asarray(c) for c in zip(*ratings[:1500], strict=True))
                theta = fit_als(uu, ii, rr, k=8, iters=6)
                registry.promote("movielens-theta", registry.register("movielens-theta", theta.to_npz(), "npz",
                                                                      parent=1).version)
                registry.promote("movielens-svd", registry.register("movielens-svd", theta.to_onnx(), "onnx",
                                                                    parent=1).version)
        # The worker looks for a new version every second and loads it on a thread: keep asking until it answers
        # with it (a fast worker may have answered everything above before the swap).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            probe = client.send({"user_id": ratings[0][0], "item_id": ratings[0][1]})
            sent.append(probe)
            if "velox:2" in client.wait([probe], timeout_s=30).get(probe, {}).get("versions", ""):
                break
            time.sleep(0.2)
        got = client.wait(sent, timeout_s=90)
        assert len(got) == len(sent) and client.conflicts == 0
        versions = {got[c]["versions"] for c in sent}
        assert any("velox:2" in v for v in versions) and any("velox:1" in v for v in versions)


def worker_process(supervisor: int) -> int | None:
    """The pid of the worker process `dawnstream run` started (its child), or None yet."""
    try:
        kids = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        workers = [int(k) for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]
    except OSError:
        return None
    return workers[0] if workers else None  # (the other child is multiprocessing's resource tracker)


def _replay_reference(bootstrap: str, doc: dict, registry: Registry, probes: list[dict]) -> dict[str, float]:
    """What an uninterrupted worker answers to ``probes``: each partition's messages, as stored in the
    input topic, fed in order to a fresh ``serve`` stage."""
    topo = parse_topology(doc)
    params = {k: v for k, v in doc["stages"][0].items() if k != "op"}
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ref-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False})
    answers: dict[str, float] = {}
    probe_ids = {p["correlation_id"] for p in probes}
    for part in range(topo.input.partitions):
        _, high = c.get_watermark_offsets(TopicPartition(topo.input.topic, part), timeout=10)
        c.assign([TopicPartition(topo.input.topic, part, 0)])
        rows = []
        while len(rows) < high:
            for m in c.consume(1000, timeout=1.0):
                if m.error() is None:
                    body = orjson.loads(m.value())
                    h = {k: v.decode() for k, v in (m.headers() or [])}
                    rows.append({"correlation_id": h.get("correlation-id"), "reply_to": h.get("reply-to"),
                                 "user_id": body["user_id"], "item_id": body["item_id"],
                                 "rating": float(body["rating"]) if "rating" in body else None})
        op = Serve(**params)
        out = op.process(pa.RecordBatch.from_pylist(rows))
        for r in out[0].to_pylist() if out else []:
            if r["correlation_id"] in probe_ids:
                answers[r["correlation_id"]] = r["prediction"]
    c.close()
    return answers


@pytest.mark.slow
def test_kill_9_of_a_serving_worker_loses_no_reply_and_applies_feedback_once(kafka_bootstrap, registry, ratings,
                                                                              tmp_path) -> None:
    doc = topology_doc(registry)
    doc["stages"][0]["models"] = [m for m in doc["stages"][0]["models"] if m["kind"] != "onnx"]  # no timing
    topo = parse_topology(doc)
    ensure_job_topics(topo)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "DAWNSTREAM_LOG_LEVEL": os.environ.get("DAWNSTREAM_TEST_WORKER_LOG", "WARNING")}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "dawnstream", "run", str(path)], env=env)

    worker = start()
    try:
        with PredictClient(kafka_bootstrap, topo.input.topic, topo.outputs[0].topic) as client:
            sent = [client.send({"user_id": 1, "item_id": 1})]
            assert client.wait(sent, timeout_s=120), "the worker did not answer"  # it is up and assigned
            for n, (u, i, r) in enumerate(ratings):
                sent.append(client.feedback(u, i, r, ack=True))
                if n % 3 == 0:
                    sent.append(client.send({"user_id": u, "item_id": i}))
                if n == 2500:
                    # Mid-stream, busy, with checkpoints behind it and replies sent since the last commit:
                    # the replacement re-reads those requests and must not answer them again.
                    client.flush()
                    child = worker_process(worker.pid)
                    os.kill(child, signal.SIGKILL)  # the worker itself; its supervisor starts another
                    deadline = time.monotonic() + 60
                    while worker_process(worker.pid) in (child, None):
                        assert time.monotonic() < deadline and worker.poll() is None, "no replacement worker"
                        time.sleep(0.2)
                if n % 200 == 0:
                    time.sleep(0.05)
            got = client.wait(sent, timeout_s=180)
            assert len(got) == len(sent), f"{len(sent) - len(got)} replies lost"
            assert client.duplicates == 0, "requests answered before the kill were answered again"
            assert client.conflicts == 0
            probes = [{"correlation_id": f"probe-{k}", "user_id": u, "item_id": i}
                      for k, (u, i, _) in enumerate(ratings[::97])]
            ids = [client.send({"user_id": p["user_id"], "item_id": p["item_id"]}, correlation_id=p["correlation_id"])
                   for p in probes]
            live = client.wait(ids, timeout_s=60)
        reference = _replay_reference(kafka_bootstrap, doc, registry, probes)
        assert len(live) == len(probes) == len(reference)
        for cid in ids:  # the restored weights are those of a worker that never died
            assert live[cid]["prediction"] == pytest.approx(reference[cid], rel=1e-9, abs=1e-9), cid
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_reply_topics_the_broker_will_not_take_dead_letter_their_requests(kafka_bootstrap, registry, reader,
                                                                          guarantee) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    doc = topology_doc(registry, partitions=1)
    doc["guarantee"] = guarantee
    tag = doc["name"].rsplit("-", 1)[1]
    doc["input"]["reply_topics"] = [doc["outputs"][0]["topic"], f"test.callers-{tag}.*"]
    # librdkafka fails records for a topic gone from its metadata after this long (30 s by default)
    doc["kafka"]["settings"]["topic.metadata.propagation.max.ms"] = "3000"
    missing, gone = f"test.callers-{tag}.missing.v1", f"test.callers-{tag}.gone.v1"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(gone, 1, 1)])[gone].result(30)
    with serving(doc) as (topo, client, _runner):
        def ask(reply_to: str, user: int) -> str:
            cid = uuid.uuid4().hex
            client.producer.produce(topo.input.topic, orjson.dumps({"user_id": user, "item_id": 1}), str(user).encode(),
                                    headers=[("correlation-id", cid.encode()), ("reply-to", reply_to.encode())])
            client.producer.flush(10)
            return cid

        ask(missing, 1)  # declared by the pattern, but never created: dead-lettered, nothing produced
        ask(gone, 2)  # answered there
        assert len(reader(gone, expected=1)) == 1
        admin.delete_topics([gone])[gone].result(30)
        time.sleep(2)
        ask(gone, 3)  # deleted after the worker had answered on it: refused at produce time, dead-lettered
        assert client.request({"user_id": 4, "item_id": 1}, timeout_s=60)["kind"] == "prediction"  # still serving
        dead = reader(f"{topo.input.topic}.dlq", expected=2, timeout_s=90)
        reasons = sorted(dict(m.headers())["dlq.error"].decode() for m in dead)
        assert len(dead) == 2, reasons
        assert any(missing in r and "does not exist" in r for r in reasons), reasons
        assert any(gone in r and ("does not exist" in r or "refused by the broker" in r) for r in reasons), reasons
        assert client.request({"user_id": 5, "item_id": 1}, timeout_s=60)["kind"] == "prediction"
    assert missing not in admin.list_topics(timeout=10).topics  # nothing created it


def test_a_serving_job_whose_model_has_no_loadable_version_fails_at_start(kafka_bootstrap, registry, tmp_path) -> None:
    import io

    with np.load(io.BytesIO(registry.get("movielens-theta").read_bytes())) as z:
        arrays = {k: z[k] for k in z.files}
    buf = io.BytesIO()
    np.savez(buf, **{**arrays, "mu": np.zeros(0)})
    registry.promote("movielens-theta", registry.register("movielens-theta", buf.getvalue(), "npz").version)
    (registry.root / "movielens-theta" / "1" / "artifact.npz").write_bytes(b"not a model")  # the last good one, gone
    doc = topology_doc(registry)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(doc))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "dawnstream", "run", str(tmp_path / "t.yaml"), "--max-idle", "30"],
                       capture_output=True, text=True, timeout=120)
    err = " ".join(r.stderr.split())
    assert r.returncode != 0 and time.monotonic() - t0 < 30, err  # at start, not after the idle time
    assert "no promoted version of 'movielens-theta'" in err and "version 2:" in err and "version 1:" in err, err
