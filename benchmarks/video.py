"""NoScope's cascade on vtest through the real broker, next to the reference model on every frame (issue 13).

Same run, same harness for both: vtest's 795 frames (JPEG, quality 90) are replayed to a fresh topic,
then a worker (:class:`~dawnstream.streams.runner.KafkaRunner`, in this process, exactly-once) runs
either ``topologies/camera-lawn.yaml`` (the ``cascade`` stage; a fresh registry, so its bootstrap and
training are in the time) or the same reference model and query as a ``detect`` stage on every frame.
Wall time runs from the worker's start to its last committed label. Reported:

- ``reference_every_frame``: wall s, frames/s.
- ``cascade``: wall s, frames/s, speedup over the reference on every frame; frames per stage and phase;
  against the reference labels (``all`` frames and the ``cascade``-phase frames, the ones the stage
  answered after its bootstrap): agreement, FN and FP rates, reference share, and a fixed stride with the
  same reference budget (its agreement); the chosen plan; the measured stage costs (ms/frame).
- ``per_hour``: from the measured stage costs and the cascade phase's shares, the projected cost of one
  hour of this camera (36,000 frames at 10 fps) after bootstrap, against the reference on every frame.

    python benchmarks/video.py [--json] [--bootstrap 127.0.0.1:9092]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from confluent_kafka import Consumer, TopicPartition

from dawnstream.demo_video import compare
from dawnstream.logs import configure
from dawnstream.models.registry import Registry
from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import TopicAdmin, base_settings, client_only
from dawnstream.streams.replay_video import replay_video
from dawnstream.streams.runner import KafkaRunner
from dawnstream.topics.spec import TopicSpec

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 795


def read(bootstrap: str, topic: str, n: int) -> list[dict[str, Any]]:
    c = Consumer({**client_only(base_settings(bootstrap), consumer=True), "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    c.assign([TopicPartition(topic, 0, 0)])
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while len(rows) < n and time.monotonic() < deadline:
        for m in c.consume(1000, timeout=0.5):
            if m.error() is None and m.value():
                rows.append(orjson.loads(m.value() or b"{}"))
    c.close()
    return rows


def run_job(doc: dict[str, Any], bootstrap: str, n: int) -> tuple[float, Any]:
    topo = parse_topology(doc)
    runner = KafkaRunner(topo, metrics_port=-1)
    t0 = time.perf_counter()
    th = threading.Thread(target=runner.run, kwargs={"max_rows": n}, daemon=True)
    th.start()
    th.join(1800)
    return time.perf_counter() - t0, runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--bootstrap", default=os.environ.get("DAWNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    args = ap.parse_args()
    configure("WARNING")
    tag = uuid.uuid4().hex[:8]
    frames_topic = f"bench.video-{tag}.frames.v1"
    TopicAdmin(args.bootstrap).ensure([TopicSpec(name=frames_topic, partitions=1)])
    sent = replay_video("vtest", frames_topic, camera="lawn", bootstrap=args.bootstrap)
    base = yaml.safe_load((ROOT / "topologies" / "camera-lawn.yaml").read_text())
    stage = base["stages"][0]
    stage["registry"] = tempfile.mkdtemp(prefix="bench-video-registry-")
    common = {"input": {"topic": frames_topic, "codec": "frames"}, "kafka": {"bootstrap": args.bootstrap},
              "metrics": {"port": 0}, "batch": base.get("batch", {})}
    ref_doc = {**common, "name": f"bench-ref-{tag}", "outputs": [{"topic": f"bench.video-{tag}.reference.v1"}],
               "stages": [{"op": "detect", "detector": stage["detector"], "query": stage["query"]},
                          {"op": "select", "columns": ["frame_index", "label", "count", "reference_ms"]}]}
    casc_doc = {**common, "name": f"bench-cascade-{tag}", "outputs": [{"topic": f"bench.video-{tag}.labels.v1"}],
                "stages": [stage]}
    ref_s, _ = run_job(ref_doc, args.bootstrap, sent.messages)
    ref_rows = read(args.bootstrap, ref_doc["outputs"][0]["topic"], sent.messages)
    casc_s, _ = run_job(casc_doc, args.bootstrap, sent.messages)
    rows = read(args.bootstrap, casc_doc["outputs"][0]["topic"], sent.messages)
    truth = np.array([r["label"] for r in sorted(ref_rows, key=lambda r: r["frame_index"])], bool)
    labels = np.array([r["label"] for r in rows], bool)
    by = np.array([r["decided_by"] for r in rows])
    casc = np.array([r["phase"] == "cascade" for r in rows])
    reg = Registry(stage["registry"])
    versions = reg.versions("specialized.cascade.lawn") if "specialized.cascade.lawn" in reg.names() else []
    summary = {"plan": versions[-1].params["plan"], "model": versions[-1].metrics} if versions else {}
    ref_ms = float(np.median([r["reference_ms"] for r in ref_rows]))
    out: dict[str, Any] = {
        "frames": sent.messages,
        "reference_every_frame": {"wall_s": round(ref_s, 2), "frames_per_s": round(sent.messages / ref_s, 1),
                                  "reference_ms_p50": round(ref_ms, 2),
                                  "positive_share": round(float(truth.mean()), 3)},
        "cascade": {"wall_s": round(casc_s, 2), "frames_per_s": round(sent.messages / casc_s, 1),
                    "speedup": round(ref_s / casc_s, 2),
                    "in_order": [r["frame_index"] for r in rows] == list(range(len(rows))),
                    "by_stage": {s: int((by == s).sum()) for s in ("difference", "specialized", "reference")},
                    "by_phase": {p: int(sum(r["phase"] == p for r in rows)) for p in ("bootstrap", "training",
                                                                                     "cascade")},
                    "all": compare(labels, truth, float((by == "reference").mean())),
                    "cascade_phase": compare(labels[casc], truth[casc], float((by[casc] == "reference").mean()))
                    if casc.any() else {},
                    "plan": summary.get("plan"),
                    "training": {k: v for k, v in (summary.get("model") or {}).items() if k != "candidates"}},
    }
    if casc.any():
        shares = {s: float((by[casc] == s).mean()) for s in ("difference", "specialized", "reference")}
        plan = summary.get("plan") or {}
        ms = plan.get("ms_per_frame")
        hour = 36_000
        cascade_ms = (ms if ms is not None else shares["reference"] * ref_ms)
        out["per_hour"] = {"frames": hour, "reference_every_frame_s": round(hour * ref_ms / 1000, 1),
                           "cascade_s": round(hour * cascade_ms / 1000, 1),
                           "speedup": round(ref_ms / max(cascade_ms, 1e-9), 1), "shares": shares}
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
