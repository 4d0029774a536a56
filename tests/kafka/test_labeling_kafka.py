"""topologies/review-sentiment.yaml through the broker on Rotten Tomatoes snippets: a probabilistic label per
row, a review queue, gold rows, bad rows in the dead-letter topic."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest
import yaml
from confluent_kafka import Producer
from dashkit import check_idle_job, job_selector, stage_values, stages_of

from dawnstream.sources import rotten_tomatoes
from dawnstream.streams.config import parse_topology
from dawnstream.streams.runner import KafkaRunner
from dawnstream.topics.dlq import dlq_reason

ROOT = Path(__file__).resolve().parents[2]
N = 3000


def topology_doc(bootstrap: str, topic_name) -> dict:
    doc = yaml.safe_load((ROOT / "topologies" / "review-sentiment.yaml").read_text())
    doc["name"] = f"labels-{topic_name('x')}"
    doc["input"]["topic"] = topic_name("rows", "labels")
    doc["outputs"][0]["topic"] = topic_name("probabilistic", "labels")
    doc["outputs"][1]["topic"] = topic_name("review-queue", "labels")
    doc["kafka"]["bootstrap"], doc["metrics"]["port"] = bootstrap, 0
    return doc


def lf_table_shown(topo):
    """The LF panel: rows labelled and held as the gauges say, every LF's coverage as /stages says."""
    lf_sel = job_selector(topo.name) + ' [data-cap="lf_table"]'
    stage = topo.stages[0].name or "label"

    def check(dash, url: str) -> list[str]:
        problems = []
        kpis = dash.values(lf_sel)
        for key in ("rows", "holding"):
            want = sum(stage_values([url], stage, key).values())
            if kpis.get(key) != want:
                problems.append(f"{key}: page {kpis.get(key)} != metrics {want}")
        panels = stages_of(url)["stages"][stage]
        want_lfs = {r["lf"]: r["coverage"] for r in panels[min(panels)]["lfs_topology"]}
        got_lfs = {lf: row.get("coverage") for lf, row in dash.rows(lf_sel, "lf").items()}
        return problems + ([] if got_lfs == want_lfs else [f"LF coverage: page {got_lfs} != /stages {want_lfs}"])

    return check


def test_review_sentiment_labels_every_row_and_dead_letters_bad_ones(kafka_bootstrap, topic_name, reader,
                                                                    tmp_path) -> None:
    doc = topology_doc(kafka_bootstrap, topic_name)
    doc["stages"][0]["registry"] = str(tmp_path / "registry")
    topo = parse_topology(doc)
    runner = KafkaRunner(topo, metrics_port=0)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    rows = rotten_tomatoes().slice(0, N).to_pylist()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 16 << 20})
    src = topo.input.topic
    for r in rows:
        body = {"id": r["id"], "text": r["text"]}
        if r["id"] % 10 == 0:
            body["gold"] = r["label"]  # a dev row: its gold class moves the LFs' accuracies
        producer.produce(src, orjson.dumps(body), str(r["id"]).encode())
    bad = [(b'{"id": 90001}', "missing required column(s) ['text']"),
           (b'{"id": 90002, "text": 42}', "is not a string"),
           (orjson.dumps({"id": 90003, "text": "x" * (5 << 20)}), "exceeds max_message_bytes")]
    for value, _ in bad:
        producer.produce(src, value, b"bad")
    producer.flush(30)
    # The end-model trainer, started while the worker is still labelling: --once waits until the workers'
    # group has committed the whole input topic, however long they take, and reads every label.
    from dawnstream.streams.end_model import EndModelTrainer

    trainer = EndModelTrainer(topo, every=10_000, min_rows=500)
    reading = threading.Thread(target=trainer.run, kwargs={"max_idle_s": 60, "train": False,
                                                           "until_caught_up": True}, daemon=True)
    reading.start()
    deadline = time.monotonic() + 120
    while runner.stats.rows_in + runner.stats.rows_dead < N + len(bad):
        assert time.monotonic() < deadline, f"only {runner.stats.rows_in} rows processed"
        time.sleep(0.2)
    while runner.processor.holding():  # rows wait at most global_wait_ms for other partitions' blocks
        assert time.monotonic() < deadline, f"{runner.processor.holding()} rows still held"
        time.sleep(0.2)
    gauges = [c.operators[0].gauges() for c in list(runner.processor.chains.values())]
    shots = {'{job} [data-cap="lf_table"]': "ui-labeling-lf-table", "#dead-letters": "ui-dead-letters-labeling"}
    check_idle_job(kafka_bootstrap, topo, runner, lf_table_shown(topo), shots, tmp_path, dead=len(bad))
    runner.stop()
    thread.join(60)
    assert len(gauges) == 4 and sum(g["rows"] for g in gauges) == N and not any(g["holding"] for g in gauges)
    assert all(g["emp_accuracy.praise_words"] > 0.6 and g["refits"] >= 1 for g in gauges)

    labels = [orjson.loads(m.value()) for m in reader(doc["outputs"][0]["topic"], N)]
    assert sorted(r["id"] for r in labels) == [r["id"] for r in rows]
    assert all(len(r["probs"]) == 2 and abs(sum(r["probs"]) - 1) < 1e-9 for r in labels)
    truth = {r["id"]: r["label"] for r in rows}
    covered = [r for r in labels if not r["abstained"] and r.get("gold") is None]
    accuracy = sum(r["label"] == truth[r["id"]] for r in covered) / len(covered)
    assert 0.6 < accuracy < 0.9 and 0.5 < len(covered) / N < 0.8
    assert all(r["gold"] == truth[r["id"]] for r in labels if r.get("gold") is not None)
    # the review queue holds exactly the rows labelled for review (read until they are all there: a read that
    # stops at the first quiet 3 s once came back empty on a loaded machine)
    flagged = {r["id"] for r in labels if r["review"]}
    queue = [orjson.loads(m.value()) for m in reader(doc["outputs"][1]["topic"], len(flagged))]
    assert queue and all(q["review"] for q in queue) and len(queue) < 0.1 * N
    assert {q["id"] for q in queue} == flagged
    dead = reader(src + ".dlq", len(bad))
    reasons = [dlq_reason(m.headers())["dlq.error"] for m in dead]
    assert len(reasons) == len(bad)
    for _, why in bad:
        assert any(why in got for got in reasons), (why, reasons)

    # The end model, trained from the probabilistic labels, registered and promoted.
    reading.join(90)
    assert not reading.is_alive() and trainer.lag == 0
    usable = sum(1 for r in labels if not r["abstained"] or r.get("gold") is not None)
    assert len(trainer.rows.texts) == usable
    versions = [trainer.train()]
    assert len(versions) == 1 and trainer.registry.promoted_version("review-sentiment-end-model") == 1
    mv = versions[0]
    assert mv.training_data["topic"] == doc["outputs"][0]["topic"] and mv.training_data["offsets"]
    assert mv.metrics["holdout_gold_rows"] == 60 and 0.5 < mv.metrics["holdout_gold_accuracy"] <= 1.0
    assert mv.metrics["rows"] == usable - 60


@pytest.mark.parametrize("model", ["triplets", "majority"])
def test_other_label_models_run_through_the_broker(kafka_bootstrap, topic_name, reader, model) -> None:
    doc = topology_doc(kafka_bootstrap, topic_name)
    doc["stages"][0]["model"] = model
    topo = parse_topology(doc)
    runner = KafkaRunner(topo, metrics_port=-1)
    thread = threading.Thread(target=runner.run, kwargs={"max_rows": 1000}, daemon=True)
    thread.start()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for r in rotten_tomatoes().slice(0, 1000).to_pylist():
        producer.produce(topo.input.topic, orjson.dumps({"id": r["id"], "text": r["text"]}), str(r["id"]).encode())
    producer.flush(30)
    thread.join(120)
    assert runner.stats.rows_in == 1000
    assert len(reader(doc["outputs"][0]["topic"], 1000)) == 1000


def test_train_end_model_once_says_why_when_no_worker_labelled_the_input(kafka_bootstrap, topic_name, tmp_path) -> None:
    import subprocess
    import sys

    doc = topology_doc(kafka_bootstrap, topic_name)
    doc["stages"][0]["registry"] = str(tmp_path / "registry")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(doc))
    from dawnstream.streams.kafka_clients import ensure_job_topics

    ensure_job_topics(parse_topology(doc))  # as `dawnstream topics create` would
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(20):
        producer.produce(doc["input"]["topic"], orjson.dumps({"id": i, "text": "a fine film"}))
    producer.flush(30)
    r = subprocess.run([sys.executable, "-m", "dawnstream", "models", "train-end-model", str(tmp_path / "t.yaml"),
                        "--once", "--max-idle", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and not r.stdout
    err = " ".join(r.stderr.split())
    assert f"the labeling group dawnstream.{doc['name']}" in err and "has committed nothing" in err
    assert "--min-rows 500" in err and "dawnstream run" in err
