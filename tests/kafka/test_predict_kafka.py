"""The general serving path through a real broker: topologies/review-serving.yaml serves a text classifier
(the labeling pipeline's end-model kind) on {text, movie} requests, with the gold labels coming back later,
out of order, on a feedback topic of their own; and a user's scikit-learn classifier, exported to ONNX,
served on the user's own feature columns."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml

from dawnstream.models.registry import Registry
from dawnstream.models.text_model import HashedTextModel
from dawnstream.sources import rotten_tomatoes
from dawnstream.streams.config import parse_topology
from dawnstream.streams.request_reply import PredictClient
from dawnstream.streams.runner import KafkaRunner
from dawnstream.topics.dlq import dlq_reason

ROOT = Path(__file__).resolve().parents[2]
N = 1200


class Jobs:
    """One KafkaRunner per job of ``topology.split()`` (the feedback mover and the serving job), on threads."""

    def __init__(self, doc: dict) -> None:
        self.topology = parse_topology(doc)
        self.runners = [KafkaRunner(t, metrics_port=-1) for t in self.topology.split()]
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(r,), daemon=True) for r in self.runners]
        for t in self.threads:
            t.start()
        deadline = time.monotonic() + 60
        while any(len(r.assigned) < r.topology.input.partitions or r.recovery.pending for r in self.runners):
            assert time.monotonic() < deadline, "the jobs did not get their partitions"
            time.sleep(0.1)

    def _run(self, runner: KafkaRunner) -> None:
        try:
            runner.run()
        except BaseException as e:  # noqa: BLE001 - asserted by stop()
            self.errors.append(e)

    @property
    def serving(self) -> KafkaRunner:
        return self.runners[-1]

    def stage(self):  # noqa: ANN201 - the Predict stage of the serving job's only partition
        return next(iter(self.serving.processor.chains.values())).operators[0]

    def stop(self) -> None:
        for r in self.runners:
            r.stop()
        for t in self.threads:
            t.join(60)
        assert not self.errors, self.errors


def review_doc(bootstrap: str, topic_name, registry: Path) -> dict:
    doc = yaml.safe_load((ROOT / "topologies" / "review-serving.yaml").read_text())
    doc["name"] = f"reviews-{topic_name('x')}"
    doc["input"]["topic"] = topic_name("requests", "serving")
    doc["input"]["feedback_topic"] = topic_name("feedback", "serving")
    doc["outputs"][0]["topic"] = topic_name("replies", "serving")
    doc["stages"][0]["registry"] = str(registry)
    doc["stages"][0]["refresh_s"] = 0.2
    doc["stages"][0]["slo_ms"] = 10_000  # every model answers on a loaded CI machine: the answers are checked
    doc["kafka"]["bootstrap"], doc["metrics"]["port"] = bootstrap, 0
    return doc


@pytest.fixture(scope="module")
def reviews() -> list[dict]:
    return rotten_tomatoes().slice(0, 3000 + N).to_pylist()


@pytest.fixture
def text_registry(tmp_path, reviews) -> Path:
    """The end model the labeling pipeline registers (same kind and artifact), fitted on other reviews."""
    train = reviews[:3000]
    m = HashedTextModel.fit([r["text"] for r in train], np.eye(2)[[r["label"] for r in train]], n_features=1 << 16)
    reg = Registry(tmp_path / "registry")
    reg.promote("review-sentiment-end-model", reg.register("review-sentiment-end-model", m.to_npz(), "npz").version)
    return reg.root


def test_text_classifier_with_delayed_feedback_on_its_own_topic(kafka_bootstrap, topic_name, text_registry, reviews,
                                                                reader) -> None:
    doc = review_doc(kafka_bootstrap, topic_name, text_registry)
    jobs = Jobs(doc)
    rows = reviews[3000:]
    classes = ["rotten", "fresh"]
    fb_topic = doc["input"]["feedback_topic"]
    try:
        with PredictClient(kafka_bootstrap, doc["input"]["topic"], doc["outputs"][0]["topic"], key_field="movie") as c:
            asks = [c.send({"text": r["text"], "movie": r["movie"]}) for r in rows]
            bad = c.send({"text": 42, "movie": "Up"})
            got = c.wait([*asks, bad], timeout_s=90)
            assert len(got) == N + 1  # nobody is left waiting
            assert got[bad]["kind"] == "error" and "text" in got[bad]["error"]
            for cid in asks:
                reply = got[cid]
                assert reply["kind"] == "prediction" and reply["label"] in classes
                assert abs(sum(reply["probabilities"]) - 1) < 1e-9 and "end_model" in reply["answered"]
            # The gold labels, later, shuffled (out of order), on the feedback topic, under each request's id.
            order = list(range(N))
            random.Random(5).shuffle(order)
            for k in order:
                c.send({"label": classes[rows[k]["label"]], "movie": rows[k]["movie"]}, correlation_id=asks[k],
                       reply=False, topic=fb_topic)
            c.send({"label": "fresh", "movie": rows[0]["movie"]}, correlation_id=asks[0], reply=False,
                   topic=fb_topic)  # twice
            c.send({"label": "fresh", "movie": "Up"}, correlation_id="never-asked", reply=False, topic=fb_topic)
            c.send({"label": "meh", "movie": rows[1]["movie"]}, correlation_id=asks[1], reply=False, topic=fb_topic)
            c.send({"movie": "Up"}, correlation_id="no-label", reply=False, topic=fb_topic)  # not feedback at all
            c.flush()
            deadline = time.monotonic() + 120
            while jobs.stage().counters["feedback"] < N:
                assert time.monotonic() < deadline, (
                    f"only {jobs.stage().counters['feedback']} feedback applied; mover in/out/dead "
                    f"{[(r.stats.rows_in, r.stats.rows_out, r.stats.rows_dead) for r in jobs.runners]}, "
                    f"fenced {[r.fence.dropped for r in jobs.runners]}")
                time.sleep(0.2)
            status = jobs.stage().status()
            # learned from what was served: every model scored on every piece of feedback, once
            assert status["scored"] == {"end_model": N, "per_movie": N, "prior": N, "served": N}
            m = status["metrics"]
            assert m["end_model"]["roc_auc"] > 0.75 and m["prior"]["roc_auc"] < 0.6
            # after the feedback, the per-movie layer answers differently for the movies it learned
            again = c.request({"text": rows[0]["text"], "movie": rows[0]["movie"]}, timeout_s=30)
            scores = dict(s.split("=") for s in again["scores"].split(","))
            assert scores["per_movie"] != scores["end_model"]
    finally:
        jobs.stop()
    reasons = sorted(dlq_reason(m.headers())["dlq.error"] for m in reader(doc["input"]["topic"] + ".dlq", 3))
    assert "already applied" in reasons[0] or "already applied" in " ".join(reasons)
    assert any("never-asked" in r for r in reasons) and any("'meh'" in r for r in reasons)
    forward = [dlq_reason(m.headers())["dlq.error"] for m in reader(fb_topic + ".dlq", 1)]
    assert "not feedback" in forward[0]


@pytest.fixture
def sklearn_registry(tmp_path) -> tuple[Path, dict]:
    """A user's model: scikit-learn logistic regression on their own columns, exported by skl2onnx."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(11)
    X = rng.normal(size=(4000, 3)).astype(np.float32)
    y = (X @ np.array([1.5, -2.0, 0.5]) + rng.normal(0, 0.5, 4000) > 0).astype(int)
    clf = LogisticRegression().fit(X, y)
    onx = to_onnx(clf, X[:1], options={"zipmap": False})
    path = tmp_path / "churn.onnx"
    path.write_bytes(onx.SerializeToString())
    return path, {"X": X, "y": y, "clf": clf}


def test_a_users_sklearn_model_on_their_own_columns(kafka_bootstrap, topic_name, sklearn_registry, tmp_path) -> None:
    import subprocess
    import sys

    path, data = sklearn_registry
    doc = {
        "name": f"churn-{topic_name('x')}",
        "input": {"topic": topic_name("requests", "churn"), "codec": "requests", "key_field": "plan",
                  "feedback_topic": topic_name("feedback", "churn")},
        "guarantee": "at_least_once",
        "batch": {"max_wait_ms": 0},
        "stages": [{"op": "predict", "task": "binary", "classes": ["stays", "churns"],
                    "features": {"tenure": "float64", "spend": "float64", "calls": "float64", "plan": "category"},
                    "categories": {"plan": ["basic", "pro"]},
                    "models": [{"name": "lr", "kind": "onnx", "model": "churn",
                                "inputs": {"X": ["tenure", "spend", "calls"]}},
                               {"name": "per_plan", "kind": "online", "over": "lr", "key": "plan"},
                               {"kind": "prior"}],
                    "registry": str(tmp_path / "registry"), "slo_ms": 10_000}],
        "outputs": [{"topic": topic_name("replies", "churn"), "codec": "requests"}],
        "kafka": {"bootstrap": kafka_bootstrap}, "metrics": {"port": 0},
    }
    topo_path = tmp_path / "churn.yaml"
    topo_path.write_text(yaml.safe_dump(doc))
    # a graph that does not fit the columns is refused before it is registered, naming both signatures
    one_column = [{"name": "lr", "kind": "onnx", "model": "churn", "inputs": {"X": ["tenure"]}}]
    wrong = dict(doc, stages=[dict(doc["stages"][0], features={"tenure": "float64", "plan": "category"},
                                   models=one_column, categories={})])
    wrong_path = tmp_path / "wrong.yaml"
    wrong_path.write_text(yaml.safe_dump(wrong))
    cli = [sys.executable, "-m", "dawnstream", "models", "register", "churn", str(path), "--registry",
           str(tmp_path / "registry")]
    r = subprocess.run([*cli, "--topology", str(wrong_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "X: tensor(float)[None, 3]" in r.stderr.replace("\n", "") \
        and "X <- ['tenure']: float[n, 1]" in r.stderr.replace("\n", ""), r.stderr
    r = subprocess.run([*cli, "--topology", str(topo_path), "--promote"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["promoted"] == 1
    jobs = Jobs(doc)
    X, y, clf = data["X"], data["y"], data["clf"]
    try:
        with PredictClient(kafka_bootstrap, doc["input"]["topic"], doc["outputs"][0]["topic"], key_field="plan") as c:
            rows = [{"tenure": float(a), "spend": float(b), "calls": float(d), "plan": ["basic", "pro"][k % 2]}
                    for k, (a, b, d) in enumerate(X[:300].tolist())]
            asks = [c.send(r) for r in rows]
            nope = c.send({"tenure": 1.0, "spend": 2.0, "calls": 3.0, "plan": "gold"})
            got = c.wait([*asks, nope], timeout_s=60)
            assert got[nope]["kind"] == "error" and "plan" in got[nope]["error"]
            want = clf.predict_proba(X[:300].astype(np.float64))[:, 1]
            lr = np.array([float(dict(s.split("=") for s in got[cid]["scores"].split(","))["lr"]) for cid in asks])
            assert np.abs(lr - want).max() < 1e-4  # the model's own answers, through Kafka, float32 ONNX
            for k, cid in enumerate(asks):
                c.send({"label": int(y[k]), "plan": rows[k]["plan"]}, correlation_id=cid, reply=False,
                       topic=doc["input"]["feedback_topic"])
            c.flush()
            deadline = time.monotonic() + 60
            while jobs.stage().counters["feedback"] < 300:
                assert time.monotonic() < deadline, "feedback not applied"
                time.sleep(0.2)
            assert jobs.stage().status()["metrics"]["lr"]["accuracy"] > 0.85
    finally:
        jobs.stop()
