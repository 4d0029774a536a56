"""NoScope's cascade on vtest through the real broker, next to the reference model on every frame (issue 13).

NoScope's temporal split, through the broker, same run. vtest's 795 frames (JPEG, quality 90) are cut
into blocks of 30; every third block is **held out**. The camera's stream carries the other blocks
first (530 frames: the stage's bootstrap, which it splits again into training and threshold-choosing
blocks) and the held-out blocks after them (265 frames). A worker (:class:`KafkaRunner`, in this process,
exactly-once) runs ``topologies/camera-lawn.yaml`` with ``bootstrap`` = the 530 frames, in two runs: the
bootstrap part (then the background training, timed), and the held-out part (the worker restores its
state from the changelog and finds the trained model in the registry). The reference model alone runs
the same frames in the same harness. Reported:

- ``reference``: wall s and frames/s over all 795 frames and over the 265 held-out ones; ms/frame.
- ``cascade.held_out``: agreement with the reference on every held-out frame, FN and FP rates, reference
  share (the reference model's calls: the frames it decided and the sampled checks of the others), the
  frames each stage decided, wall s and speedup over the reference on the same frames; a fixed stride
  with the same reference budget over the same frames (its agreement).
- ``cascade.held_out_all_phases``: the same over every held-out frame whatever its phase, the live
  checks, and the alarms (the camera leaving the cascade phase: its live test fired) with the frames that
  were wrong before and after the first.
- ``cascade.end_to_end``: bootstrap + training + held-out wall s vs the reference on all 795 frames.
- ``cascade.plan`` / ``training``: the chosen model and thresholds, the measured costs, training seconds.
- ``pack``: NoScope's grid (8 tiny CNNs) trained jointly in one pass over the bootstrap thumbnails vs
  trained one by one (same epochs, same seeds, so the same models): seconds and ratio.
- ``per_hour``: one hour of this camera (36,000 frames at 10 fps) after the bootstrap, projected from the
  measured stage costs and the held-out shares, against the reference on every frame.

Any camera and query, same protocol: ``--video FILE`` (default ``vtest``), ``--topology FILE`` (its first
``cascade`` stage; default ``topologies/camera-lawn.yaml``), ``--detector ssdlite|hog|onnx:PATH`` and
``--query JSON`` (e.g. ``'{"region": [300, 200, 768, 576], "point": "center"}'``) override the stage's (a new
query also drops the topology's ``difference.roi``: the stage's default then follows the query's region).

    python benchmarks/video.py [--json] [--bootstrap 127.0.0.1:9092] [--video FILE] [--topology FILE]
        [--detector ssdlite|hog|onnx:PATH] [--query JSON] [--no-pack] [--frames FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
from dawnstream.streams.replay_video import produce_frames
from dawnstream.streams.runner import KafkaRunner
from dawnstream.topics.spec import TopicSpec

ROOT = Path(__file__).resolve().parents[1]


BLOCK = 30


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


def measured_stage(topology: dict[str, Any], detector: str | None, query: dict[str, Any] | None, bootstrap: int,
                   registry: str) -> dict[str, Any]:
    """The topology's first ``cascade`` stage as the benchmark runs it: ``detector`` (``ssdlite``, ``hog`` or
    ``onnx:PATH``) and ``query`` replace the topology's; a new query drops the topology's ``difference.roi``
    (drawn around its own query: the stage's default follows the new one); the bootstrap is exactly the
    frames streamed before the held-out part, and the swap comes at once.

    Raises:
        ValueError: the topology has no cascade stage.
    """
    stage = next((dict(s) for s in topology.get("stages", []) if s.get("op") == "cascade"), None)
    if stage is None:
        raise ValueError("no cascade stage")
    if detector:
        kind, _, path = detector.partition(":")
        stage["detector"] = {"kind": kind, **({"path": path} if path else {})}
    if query is not None:
        stage["query"] = query
        stage["difference"] = {k: v for k, v in (stage.get("difference") or {}).items() if k != "roi"}
    stage.update({"registry": registry, "bootstrap": bootstrap, "max_bootstrap": bootstrap + BLOCK, "swap_after": 0})
    return stage


def run_job(doc: dict[str, Any], n: int) -> tuple[float, int, float]:
    """Run the topology until at least ``n`` more input rows are processed and committed (whole batches);
    seconds, the rows it took, and the seconds of its start (state restore, models loaded, group joined:
    until the first message arrived)."""
    runner = KafkaRunner(parse_topology(doc), metrics_port=-1)
    t0, t0_mono = time.perf_counter(), time.monotonic()
    th = threading.Thread(target=runner.run, kwargs={"max_rows": n}, daemon=True)
    th.start()
    th.join(1800)
    seconds = time.perf_counter() - t0
    first = runner.stats.first_message
    start = first - t0_mono if first is not None else seconds
    print(f"# {doc['name']}: {runner.stats.rows_in} rows in {seconds:.1f}s ({start:.1f}s to start)", file=sys.stderr)
    return seconds, runner.stats.rows_in, start


def wait_for_training() -> float:
    t0 = time.perf_counter()
    for th in threading.enumerate():
        if th.name.startswith("cascade-train-"):
            th.join()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--bootstrap", default=os.environ.get("DAWNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--video", default="vtest", help="a video file (any format OpenCV reads), or vtest")
    ap.add_argument("--topology", type=Path, default=ROOT / "topologies" / "camera-lawn.yaml",
                    help="a topology whose first cascade stage is measured")
    ap.add_argument("--detector", help="the reference model: ssdlite, hog or onnx:PATH (default: the topology's)")
    ap.add_argument("--query", type=json.loads, help="the query as JSON (default: the topology's)")
    ap.add_argument("--no-pack", action="store_true", help="skip the packed-vs-one-by-one training part")
    ap.add_argument("--frames", type=Path, help="write every labelled frame here, one JSON line each: the stage's "
                                                "row and the reference's answer (`truth`), to see which were wrong")
    args = ap.parse_args()
    configure("WARNING")
    from dawnstream.video_source import jpeg, read_frames, vtest

    video = vtest() if args.video == "vtest" else Path(args.video)
    camera = video.stem
    frames = [(i, ts, jpeg(f)) for i, ts, f in read_frames(video)]
    if len(frames) < 6 * BLOCK:
        sys.exit(f"{video}: {len(frames)} frames; the held-out protocol needs at least {6 * BLOCK}")
    held = [f for f in frames if (f[0] // BLOCK) % 3 == 2]
    seen = [f for f in frames if (f[0] // BLOCK) % 3 != 2]
    tag = uuid.uuid4().hex[:8]
    t_all, t_held, t_casc = (f"bench.video-{tag}.{x}.v1" for x in ("all", "held", "camera"))

    def out_topic(topic: str, what: str) -> str:
        return topic.replace(".v1", f"-{what}.v1")

    TopicAdmin(args.bootstrap).ensure([TopicSpec(name=t, partitions=1) for t in (t_all, t_held, t_casc)])
    for topic, part in ((t_all, frames), (t_held, held), (t_casc, seen + held)):
        produce_frames(part, topic, camera, args.bootstrap)
    base = yaml.safe_load(args.topology.read_text())
    try:
        stage = measured_stage(base, args.detector, args.query, len(seen),
                               tempfile.mkdtemp(prefix="bench-video-registry-"))
    except ValueError as e:
        sys.exit(f"{args.topology}: {e}")
    common = {"codec": "frames"}
    settings = {"kafka": {"bootstrap": args.bootstrap}, "metrics": {"port": 0}, "batch": base.get("batch", {})}

    def reference_doc(topic: str) -> dict[str, Any]:
        return {**settings, "name": f"bench-ref-{topic}", "input": {"topic": topic, **common},
                "outputs": [{"topic": out_topic(topic, "ref")}],
                "stages": [{"op": "detect", "detector": stage["detector"], "query": stage["query"]},
                           {"op": "select", "columns": ["frame_index", "label", "reference_ms"]}]}

    ref_all_s, _, _ = run_job(reference_doc(t_all), len(frames))
    ref_held_s, _, ref_start_s = run_job(reference_doc(t_held), len(held))
    ref_rows = {r["frame_index"]: r for r in read(args.bootstrap, out_topic(t_all, "ref"), len(frames))}
    casc = {**settings, "name": f"bench-cascade-{tag}", "input": {"topic": t_casc, **common},
            "outputs": [{"topic": out_topic(t_casc, "labels")}], "stages": [stage]}
    boot_s, took, _ = run_job(casc, len(seen))
    train_wait_s = wait_for_training()
    held_s, _, held_start_s = run_job(casc, len(frames) - took)
    rows = read(args.bootstrap, out_topic(t_casc, "labels"), len(frames))
    # the held-out frames the cascade answered (a batch of the first run may reach into the held-out part)
    out_held = [r for r in rows if (r["frame_index"] // BLOCK) % 3 == 2 and r["phase"] == "cascade"]
    truth = np.array([ref_rows[r["frame_index"]]["label"] for r in out_held], bool)
    labels = np.array([r["label"] for r in out_held], bool)
    by = np.array([r["decided_by"] for r in out_held])
    ref_ms = float(np.median([r["reference_ms"] for r in ref_rows.values()]))
    reg = Registry(stage["registry"])
    name = f"specialized.cascade.{camera}"
    meta = reg.versions(name)[-1] if name in reg.names() else None
    shares = {s: float((by == s).mean()) for s in ("difference", "specialized", "reference")}
    # the reference model's calls: the frames it decided and the sampled checks of the cheap stages' answers
    calls = float(np.mean([r["reference_ms"] is not None for r in out_held]))
    plan_ms = meta.params["plan"]["ms_per_frame"] if meta else ref_ms
    out: dict[str, Any] = {
        "video": str(video), "camera": camera, "detector": stage["detector"], "query": stage.get("query"),
        "frames": {"all": len(frames), "bootstrap": len(seen), "held_out": len(held)},
        "reference": {"all_wall_s": round(ref_all_s, 2), "all_frames_per_s": round(len(frames) / ref_all_s, 1),
                      "held_out_wall_s": round(ref_held_s, 2), "ms_per_frame_p50": round(ref_ms, 2),
                      "positive_share": round(float(np.mean([r["label"] for r in ref_rows.values()])), 3)},
        "cascade": {
            "labels": len(rows), "phases": sorted({r["phase"] for r in out_held}),
            "held_out": {**compare(labels, truth, calls), "decided_by_reference_share": shares["reference"],
                         "by_stage": {s: int((by == s).sum()) for s in shares},
                         "wall_s": round(held_s, 2), "speedup": round(ref_held_s / held_s, 2),
                         # a restart costs both about the same fixed time: the rates after it
                         "start_s": round(held_start_s, 2), "reference_start_s": round(ref_start_s, 2),
                         "speedup_after_start": round((ref_held_s - ref_start_s) / max(held_s - held_start_s, 1e-9),
                                                      2)},
            "end_to_end": {"bootstrap_s": round(boot_s, 2), "training_wait_s": round(train_wait_s, 2),
                           "held_out_s": round(held_s, 2), "total_s": round(boot_s + train_wait_s + held_s, 2),
                           "reference_all_s": round(ref_all_s, 2),
                           "speedup": round(ref_all_s / (boot_s + train_wait_s + held_s), 2)},
            "plan": meta.params["plan"] if meta else None, "model": meta.params["config"] if meta else None,
            "training": {k: v for k, v in (meta.metrics if meta else {}).items() if k != "candidates"},
        },
        "per_hour": {"frames": 36_000, "reference_s": round(36_000 * ref_ms / 1000, 1),
                     "cascade_s (plan)": round(36_000 * plan_ms / 1000, 1),
                     "cascade_s (held-out shares)": round(36_000 * (calls * ref_ms + (
                         1 - shares["difference"]) * (meta.params["costs_ms"][1] if meta else 0.0) + (
                         meta.params["costs_ms"][0] if meta else 0.0)) / 1000, 1),
                     "shares": shares},
    }
    # every held-out frame whatever its phase (a camera that never leaves the bootstrap, or one whose live
    # test fired, answers with the reference), and the alarms: the camera's cascade -> bootstrap turns
    all_held = [r for r in rows if (r["frame_index"] // BLOCK) % 3 == 2]
    truth_all = np.array([ref_rows[r["frame_index"]]["label"] for r in all_held], bool)
    labels_all = np.array([r["label"] for r in all_held], bool)
    calls_all = float(np.mean([r["reference_ms"] is not None for r in all_held]))
    turns = [i for i in range(1, len(rows)) if rows[i - 1]["phase"] == "cascade" and rows[i]["phase"] != "cascade"]
    wrong = [ref_rows[r["frame_index"]]["label"] != r["label"] for r in rows]
    out["cascade"]["held_out_all_phases"] = {
        **compare(labels_all, truth_all, calls_all),
        "phases": {p: sum(r["phase"] == p for r in all_held) for p in ("bootstrap", "training", "cascade")},
        "sampled": sum(bool(r.get("sampled")) for r in all_held),
        "wrong_by_stage": {s: int(sum(lab != tru for lab, tru, r in zip(labels_all, truth_all, all_held, strict=True)
                                      if r["decided_by"] == s)) for s in ("difference", "specialized", "reference")},
        "alarms": len(turns), "first_alarm_frame": rows[turns[0]]["frame_index"] if turns else None,
        "wrong_before_first_alarm": int(sum(wrong[:turns[0]])) if turns else None,
        "wrong_after_first_alarm": int(sum(wrong[turns[0]:])) if turns else None}
    if args.frames:
        with args.frames.open("w") as fh:
            for r in rows:
                fh.write(json.dumps({**r, "truth": ref_rows[r["frame_index"]]["label"],
                                     "held_out": (r["frame_index"] // BLOCK) % 3 == 2}) + "\n")
    if not args.no_pack:
        out["pack"] = pack_vs_one_by_one(seen, ref_rows)
    print(json.dumps(out, indent=None if args.json else 2))


def pack_vs_one_by_one(frames: list[tuple[int, int, bytes]], ref_rows: dict[int, dict[str, Any]],
                       epochs: int = 15) -> dict[str, Any]:
    from dawnstream.models.specialized import GRID, train_grid, train_one
    from dawnstream.operators.video.cascade import QUARTER, _thumb
    from dawnstream.operators.video.detect import decode

    X = np.stack([_thumb(decode(img, QUARTER)) for _, _, img in frames]).astype(np.float32) / 255.0
    y = np.array([ref_rows[i]["label"] for i, _, _ in frames], np.float32)
    _, packed_s = train_grid(X, y, GRID, epochs=epochs)
    alone_s = sum(train_one(X, y, cfg, epochs=epochs, position=k)[1] for k, cfg in enumerate(GRID))
    return {"models": len(GRID), "frames": len(frames), "epochs": epochs, "packed_s": round(packed_s, 2),
            "one_by_one_s": round(alone_s, 2), "ratio": round(alone_s / packed_s, 2)}


if __name__ == "__main__":
    main()
