"""The request surface of a serving job, case by case, through a real broker: hostile ``reply-to`` headers,
poisoned feedback and malformed requests among good traffic.

For each case the expected outcome is named (a dead letter with its reason, or an error reply with
its reason); then the invariants: every message is accounted for once (replies + dead letters =
messages sent), the good requests are all answered, and **no topic other than the job's reply topic,
its dead-letter topic and its changelog receives a record** (the end offsets of every other topic on
the broker, before and after, are equal) - the worker writes nowhere a caller names.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from confluent_kafka.admin import AdminClient, NewTopic
from faultkit import topic_ends

from dawnstream.models.mf import fit_als
from dawnstream.models.registry import Registry
from dawnstream.sources import movielens
from dawnstream.streams.config import parse_topology
from dawnstream.streams.request_reply import PredictClient
from dawnstream.streams.runner import KafkaRunner
from dawnstream.streams.state import changelog_topic

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Case:
    """One hostile message: its body and headers (``{reply}``: the job's reply topic, ``{in}``: its input,
    ``{tag}``: the test's tag), and what must become of it."""

    name: str
    body: bytes
    reply_to: str | None
    outcome: str  # "dlq" or "error"
    says: str
    correlation: bool = True


CASES = [
    Case("reply-to-not-a-topic-name", b'{"user_id": 1, "item_id": 2}', "bad topic!", "dlq", "not a valid topic name"),
    Case("reply-to-too-long", b'{"user_id": 1, "item_id": 2}', "x" * 250, "dlq", "not a valid topic name"),
    Case("reply-to-another-jobs-input", b'{"user_id": 1, "item_id": 2}', "test.victim-{tag}.rows.v1", "dlq",
         "not a topic this job answers on"),
    Case("reply-to-own-input", b'{"user_id": 1, "item_id": 2}', "{in}", "dlq", "one of this job's own topics"),
    Case("reply-to-own-dlq", b'{"user_id": 1, "item_id": 2}', "{in}.dlq", "dlq", "one of this job's own topics"),
    Case("reply-to-own-changelog", b'{"user_id": 1, "item_id": 2}', "{changelog}", "dlq",
         "one of this job's own topics"),
    Case("reply-to-consumer-offsets", b'{"user_id": 1, "item_id": 2}', "__consumer_offsets", "dlq", "internal"),
    Case("reply-to-declared-but-missing", b'{"user_id": 1, "item_id": 2}', "test.callers-{tag}.missing.v1", "dlq",
         "does not exist"),
    Case("no-correlation-id", b'{"user_id": 1, "item_id": 2}', "{reply}", "dlq", "correlation-id",
         correlation=False),
    Case("feedback-huge", b'{"user_id": 1, "item_id": 2, "rating": 1e6}', "{reply}", "error",
         "outside rating_range [1, 5]"),
    Case("feedback-overflows-float", b'{"user_id": 1, "item_id": 2, "rating": 1e300}', "{reply}", "error",
         "outside rating_range"),
    Case("feedback-below-range", b'{"user_id": 1, "item_id": 2, "rating": -3}', "{reply}", "error",
         "outside rating_range"),
    Case("feedback-nan", b'{"user_id": 1, "item_id": 2, "rating": NaN}', "{reply}", "error", "invalid JSON"),
    Case("feedback-string", b'{"user_id": 1, "item_id": 2, "rating": "5"}', "{reply}", "error", "rating"),
    Case("request-bad-id", b'{"user_id": 1, "item_id": "not-an-id"}', "{reply}", "error", "item_id"),
    Case("request-id-past-int64", b'{"user_id": 1, "item_id": %d}' % 2**70, "{reply}", "error", "int64"),
    Case("request-not-json", b'{"user_id": 1, ', "{reply}", "error", "invalid JSON"),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    t = movielens().slice(0, 3000)
    u, i, r = (np.asarray(t.column(c)) for c in ("user_id", "item_id", "rating"))
    reg = Registry(tmp_path_factory.mktemp("registry"))
    theta = fit_als(u, i, r, k=8, iters=6)
    reg.promote("movielens-theta", reg.register("movielens-theta", theta.to_npz(), "npz").version)
    reg.promote("movielens-svd", reg.register("movielens-svd", theta.to_onnx(), "onnx").version)
    return reg


def test_hostile_requests_cost_only_themselves_and_write_nowhere_a_caller_names(kafka_bootstrap, registry,
                                                                              reader) -> None:
    tag = uuid.uuid4().hex[:8]
    doc = yaml.safe_load((ROOT / "topologies" / "movie-ratings.yaml").read_text())
    doc["name"] = f"hostile-req-{tag}"
    doc["input"]["topic"] = src = f"test.hostile-req-{tag}.events.v1"
    doc["outputs"][0]["topic"] = reply = f"test.hostile-req-{tag}.replies.v1"
    doc["input"]["reply_topics"] = [reply, f"test.callers-{tag}.*"]
    doc["stages"][0]["registry"] = str(registry.root)
    doc["metrics"]["port"] = 0
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    victim = f"test.victim-{tag}.rows.v1"
    admin.create_topics([NewTopic(victim, 1, 1)])[victim].result(30)
    topo = parse_topology(doc)
    runner = KafkaRunner(topo, metrics_port=-1)
    failed: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run(runner, failed), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(runner.assigned) < topo.input.partitions or runner.recovery.pending:
            assert time.monotonic() < deadline and not failed, failed
            time.sleep(0.1)
        before = topic_ends(admin)
        ratings = movielens().slice(3000, 400).to_pylist()
        fill = {"in": src, "reply": reply, "tag": tag, "changelog": changelog_topic(doc["name"])}
        with PredictClient(kafka_bootstrap, src, reply) as client:
            good: list[str] = []
            hostile: dict[str, Case] = {}
            for n, r in enumerate(ratings):
                if n % 2:
                    good.append(client.feedback(r["user_id"], r["item_id"], r["rating"], ack=True))
                else:
                    good.append(client.send({"user_id": r["user_id"], "item_id": r["item_id"]}))
                if n % 20 == 10 and n // 20 < len(CASES):
                    case = CASES[n // 20]
                    cid = f"hostile-{case.name}"
                    headers = [("correlation-id", cid.encode())] if case.correlation else []
                    if case.reply_to is not None:
                        headers.append(("reply-to", case.reply_to.format(**fill).encode()))
                    client.producer.produce(src, case.body, b"1", headers=headers)
                    hostile[cid] = case
            assert len(hostile) == len(CASES)
            errors = {cid for cid, c in hostile.items() if c.outcome == "error"}
            got = client.wait(good + sorted(errors), timeout_s=120)
            assert set(got) == set(good) | errors  # every good message answered, every error case replied to
            assert all(got[c]["kind"] in ("prediction", "feedback") for c in good)
            for cid in errors:
                assert got[cid]["kind"] == "error" and hostile[cid].says in got[cid]["error"], (cid, got[cid])
        dead_cases = [c for c in CASES if c.outcome == "dlq"]
        dead = reader(f"{src}.dlq", len(dead_cases), timeout_s=60)
        reasons = [dict(m.headers())["dlq.error"].decode() for m in dead]
        assert len(dead) == len(dead_cases), reasons
        for case in dead_cases:
            assert sum(case.says in r for r in reasons) >= 1, (case.name, reasons)
        time.sleep(1.5)  # a checkpoint interval: the changelog and offsets settle (they may move, nothing else)
        after = topic_ends(admin)
        # Nothing but the reply topic, the dead-letter topic and the changelog received a record.
        moved = {t for t in set(before) | set(after) if before.get(t, 0) != after.get(t, 0)}
        assert moved <= {src, reply, f"{src}.dlq", changelog_topic(doc["name"])}, moved
        assert after.get(victim, 0) == 0 and f"test.callers-{tag}.missing.v1" not in after
        stats = runner.stats
        assert stats.rows_in == len(ratings) + len(CASES)  # every message read once
        assert stats.rows_dead == len(dead_cases)
        assert stats.rows_out == len(ratings) + len(errors)  # replies: the good ones and the error replies
    finally:
        runner.stop()
        thread.join(60)
    assert not failed, failed


def _run(runner: KafkaRunner, failed: list[BaseException]) -> None:
    try:
        runner.run()
    except BaseException as e:  # noqa: BLE001 - asserted by the test
        failed.append(e)
