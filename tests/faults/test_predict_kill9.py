"""kill -9 the workers of topologies/review-serving.yaml (the serving job and the feedback mover) with feedback
outstanding: no request is answered twice, no feedback is lost or learned twice - every piece reaches the
serving topic, and the answers after the restart equal those of a fresh stage fed that topic in one go."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
import yaml
from faultkit import committed, end_offsets, start_worker, stop, wait_until, worker_pids, write_topology

from dawnstream.models.registry import Registry
from dawnstream.models.text_model import HashedTextModel
from dawnstream.operators.serving.predict import Predict
from dawnstream.sources import rotten_tomatoes
from dawnstream.streams.request_reply import PredictClient

# The text model answers row by row and the layer's updates are plain loops: promised bit for bit.
pytestmark = pytest.mark.bitexact

ROOT = Path(__file__).resolve().parents[2]
N = 600


def _reference(messages: list, params: dict, probes: set[str]) -> tuple[dict[str, list[float]], int]:
    """The probes' answers from a fresh stage fed ``messages`` (the one-partition serving topic, in order) in
    one batch, refusing what its bad_rows refuses, as a runner does."""
    rows = []
    for m in messages:
        body = orjson.loads(m.value())
        h = {k: v.decode() for k, v in (m.headers() or [])}
        rows.append({"correlation_id": h.get("correlation-id"), "reply_to": h.get("reply-to"),
                     "text": body.get("text"), "movie": body.get("movie"), "label": body.get("label"),
                     "kafka_timestamp_ms": m.timestamp()[1]})
    op = Predict(**params)
    batch = pa.RecordBatch.from_pylist(rows)
    bad = op.bad_rows(batch)
    out = op.process(batch.take(pa.array([j for j in range(len(rows)) if j not in bad], pa.int64())))
    return {r["correlation_id"]: r["probabilities"] for o in out for r in o.to_pylist()
            if r["correlation_id"] in probes}, op.counters["feedback"]


def test_kill9_with_feedback_outstanding_loses_and_repeats_nothing(kafka_bootstrap: str, reader,
                                                                   tmp_path: Path) -> None:
    reviews = rotten_tomatoes().slice(0, 3000 + N).to_pylist()
    train = reviews[:3000]
    m = HashedTextModel.fit([r["text"] for r in train], np.eye(2)[[r["label"] for r in train]], n_features=1 << 16)
    reg = Registry(tmp_path / "registry")
    reg.promote("review-sentiment-end-model", reg.register("review-sentiment-end-model", m.to_npz(), "npz").version)
    tag = uuid.uuid4().hex[:8]
    doc = yaml.safe_load((ROOT / "topologies" / "review-serving.yaml").read_text())
    doc["name"] = f"reviews-kill9-{tag}"
    doc["input"]["topic"] = f"test.reviews-kill9-{tag}.requests.v1"
    doc["input"]["feedback_topic"] = f"test.reviews-kill9-{tag}.feedback.v1"
    doc["outputs"][0]["topic"] = f"test.reviews-kill9-{tag}.replies.v1"
    doc["stages"][0]["registry"] = str(reg.root)
    doc["stages"][0]["slo_ms"] = 10_000  # a straggler changes a reply (not the state): none, on a busy CI machine
    doc["kafka"]["bootstrap"], doc["metrics"]["port"] = kafka_bootstrap, 0
    path = write_topology(tmp_path / "reviews.yaml", doc)
    log = tmp_path / "worker.log"
    proc = start_worker(path, log=log)
    rows = reviews[3000:]
    classes = ["rotten", "fresh"]
    fb_topic, src = doc["input"]["feedback_topic"], doc["input"]["topic"]
    try:
        with PredictClient(kafka_bootstrap, src, doc["outputs"][0]["topic"], key_field="movie") as c:
            asks = [c.send({"text": r["text"], "movie": r["movie"]}) for r in rows]
            got = c.wait(asks, timeout_s=180)
            assert len(got) == N, f"{N - len(got)} replies missing"

            def feedback(ks: range) -> None:
                for k in ks:
                    c.send({"label": classes[rows[k]["label"]], "movie": rows[k]["movie"]}, correlation_id=asks[k],
                           reply=False, topic=fb_topic)
                c.flush()

            feedback(range(0, N // 2))
            # Some of it moved and learned, some not yet: kill -9 every worker of both jobs.
            wait_until(lambda: committed(kafka_bootstrap, f"dawnstream.{doc['name']}.feedback", fb_topic, 1) > 0, 120,
                       "the feedback mover's first commit", log=log)
            old = worker_pids(proc)
            assert len(old) == 2
            for pid in old:
                os.kill(pid, signal.SIGKILL)  # the supervisor starts replacements
            wait_until(lambda: len(set(worker_pids(proc)) - set(old)) == 2, 120, "replacement workers", log=log)
            feedback(range(N // 2, N))
            fb_end = end_offsets(kafka_bootstrap, fb_topic)[0]
            wait_until(lambda: committed(kafka_bootstrap, f"dawnstream.{doc['name']}.feedback", fb_topic, 1) >= fb_end,
                       120, "every piece of feedback moved", log=log)
            probes = [c.send({"text": rows[k]["text"], "movie": rows[k]["movie"]}, correlation_id=f"probe-{k}")
                      for k in range(0, N, 37)]
            live = c.wait(probes, timeout_s=120)
            assert len(live) == len(probes)
            assert c.duplicates == 0 and c.conflicts == 0  # nothing answered before the kill was answered again
            time.sleep(1)
        params = {k: v for k, v in doc["stages"][0].items() if k != "op"}
        reference, applied = _reference(reader(src, end_offsets(kafka_bootstrap, src)[0]), params, set(probes))
        assert applied == N  # every piece of feedback reached the serving topic, re-sent ones refused as duplicates
        assert len(reference) == len(probes)
        for cid in probes:  # the per-movie weights learned every piece of feedback once, as without the kill
            assert live[cid]["probabilities"] == reference[cid], cid
        scores = [dict(s.split("=") for s in live[cid]["scores"].split(",")) for cid in probes]
        assert any(s["per_movie"] != s["end_model"] for s in scores)  # the layer did learn something
    finally:
        stop(proc)
