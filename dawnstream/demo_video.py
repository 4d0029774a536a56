"""``make demo-video``: NoScope's cascade on a real camera, end to end through Kafka.

Runs ``dawnstream run topologies/camera-lawn.yaml`` (the ``cascade`` stage: SSDLite-MobileNetV2 as the
reference model, the query "a person whose feet are on the lawn") as a process of its own, in a fresh
model registry. This process replays ``vtest.avi`` (795 frames of a fixed campus camera, fetched once
from Debian's ``opencv-doc`` package) to the frames topic at the camera's 10 fps or faster, and reads
the labels topic: every frame's label, which stage decided it, the camera's phase (bootstrap ->
training -> cascade) and model version. At the end it runs the reference model on every frame here
and prints the comparison: agreement, FN and FP rates, the share of frames the reference model saw,
and a fixed stride with the same reference budget.

:func:`run_video_demo` is what ``make demo-video`` runs and ``tests/kafka/test_demo_video.py`` checks
(with a smaller topology); :func:`main` exits 0 when every frame got exactly one label, in order, and
the camera reached the cascade phase.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, TopicPartition
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from dawnstream.demo import exit_status
from dawnstream.demo_jobs import exited, failed, fresh_job, stage_gauges, stop, worker_ready
from dawnstream.errors import DawnstreamError
from dawnstream.models.registry import REGISTRY_ENV
from dawnstream.streams.kafka_clients import base_settings, client_only
from dawnstream.streams.replay_video import replay_video

TOPOLOGY = Path(__file__).resolve().parent.parent / "topologies" / "camera-lawn.yaml"


def stride_labels(truth: np.ndarray, share: float) -> np.ndarray:
    """Labels of a fixed stride that calls the reference on ``share`` of the frames, evenly spaced (frame 0,
    then wherever ``floor(i * share)`` steps up: every k-th frame for ``share = 1/k``, and a fractional
    budget such as 73% too), each label held until the next call.

    >>> stride_labels(np.array([1, 0, 0, 1, 1, 0], bool), 0.5).astype(int).tolist()
    [1, 1, 0, 0, 1, 1]
    """
    i = np.arange(len(truth))
    share = min(max(float(share), 0.0), 1.0)
    pick = (np.floor(i * share) != np.floor((i - 1) * share)) | (i == 0)
    return np.asarray(truth)[np.maximum.accumulate(np.where(pick, i, 0))]


def compare(labels: np.ndarray, truth: np.ndarray, reference_share: float) -> dict[str, float]:
    """Agreement, FN and FP rates of ``labels`` against the reference's ``truth``, and the agreement of a
    fixed stride that calls the reference on the same share of frames (:func:`stride_labels`; ``stride``:
    frames per call)."""
    from dawnstream.operators.video.optimizer import rates

    labels, truth = np.asarray(labels, bool), np.asarray(truth, bool)
    fn, fp = rates(labels, truth)
    return {"frames": len(truth), "agreement": float((labels == truth).mean()), "fn_rate": fn, "fp_rate": fp,
            "reference_share": reference_share,
            "stride": round(1.0 / reference_share, 2) if reference_share > 0 else float(len(truth)),
            "stride_agreement": float((stride_labels(truth, reference_share) == truth).mean())}


@dataclass
class VideoDemoResult:
    """What one run did: frames sent and labelled, frames per stage and phase, the comparison with the
    reference model on every frame (over all frames, and over the frames labelled in the cascade phase)."""

    frames: int = 0
    labelled: int = 0
    in_order: bool = False
    by_stage: dict[str, int] = field(default_factory=dict)
    by_phase: dict[str, int] = field(default_factory=dict)
    versions: list[int] = field(default_factory=list)
    overall: dict[str, float] = field(default_factory=dict)
    cascade: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    reference_seconds: float = 0.0
    error: str | None = None


def reference_labels(limit: int | None, detector: dict[str, Any], query: dict[str, Any], video: str = "vtest",
                     start: int = 0) -> tuple[np.ndarray, float]:
    """The reference model's answer on every frame of ``video`` from ``start`` to ``limit`` (JPEG round trip
    included, as the stage sees them), and the seconds it took."""
    from dawnstream.models.detectors import RegionQuery, build_detector
    from dawnstream.operators.video.detect import decode
    from dawnstream.video_source import jpeg, read_frames, vtest

    det = build_detector(detector)
    q = dict(query)
    region = q.pop("region", None)
    rq = RegionQuery(region=tuple(region) if region else None, **q)
    t0 = time.perf_counter()
    path = vtest() if video == "vtest" else Path(video)
    out = [rq.label(det.detect(decode(jpeg(f)))) for _, _, f in read_frames(path, start=start, stop=limit)]
    return np.array(out, bool), time.perf_counter() - t0


def run_video_demo(console: Console | None = None, topology: Path = TOPOLOGY, limit: int | None = None,
                   rate: float | None = 40.0, compare_reference: bool = True, video: str = "vtest", start: int = 0,
                   camera: str | None = None) -> VideoDemoResult:
    """Replay a video (vtest by default) through the cascade topology and report (module docstring).

    Args:
        topology: the topology file (its first stage a ``cascade``; tests pass a smaller one).
        limit: only the frames before index ``limit``.
        video: ``vtest`` or a video file OpenCV reads (your camera's recording).
        start: the first frame index sent.
        camera: the camera id (message key); default ``lawn`` for vtest, else the file's name.
        rate: frames/s sent (default 40: 4x the camera's 10 fps; None: as fast as possible).
        compare_reference: run the reference model on every frame here at the end, for the comparison.

    Raises:
        DawnstreamError: the broker cannot be reached, or the video cannot be read (vtest cannot be fetched).
    """
    console = console or Console()
    if video != "vtest" and not Path(video).is_file():
        raise DawnstreamError(f"--video {video}: no such file; give a video OpenCV reads, or vtest")
    registry = Path.home() / ".cache" / "dawnstream" / "demo-video" / "registry"
    topo = fresh_job(topology, registry)
    stage = topo.stages[0].params()
    camera = camera or ("lawn" if video == "vtest" else Path(video).stem)
    env = {**os.environ, REGISTRY_ENV: str(registry),
           "DAWNSTREAM_LOG_LEVEL": os.environ.get("DAWNSTREAM_LOG_LEVEL", "WARNING")}
    worker = subprocess.Popen([sys.executable, "-m", "dawnstream", "run", str(topology)], env=env)
    procs = {"cascade worker": worker}
    metrics_url = f"http://{topo.metrics.host}:{topo.metrics.port}/metrics"
    deadline = time.monotonic() + 120
    while not worker_ready(metrics_url) and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    console.print(f"[bold]dawnstream demo-video[/]: {video} from frame {start} -> {topo.input.topic} -> cascade "
                  f"(reference: {stage.get('detector')}) -> {topo.outputs[0].topic}")
    settings = base_settings(topo.kafka.bootstrap, topo.kafka.settings)
    reader = Consumer({**client_only(settings, consumer=True), "group.id": f"demo-video-{uuid.uuid4().hex[:8]}",
                       "enable.auto.commit": False, "isolation.level": "read_committed"})
    out_topic = topo.outputs[0].topic
    md = reader.list_topics(out_topic, timeout=30).topics[out_topic]
    reader.assign([TopicPartition(out_topic, p, 0) for p in md.partitions])
    rows: list[dict[str, Any]] = []
    result = VideoDemoResult()
    t0 = time.perf_counter()

    gauges: dict[str, Any] = {"at": 0.0, "values": {}}

    def view() -> Table:
        if time.monotonic() - gauges["at"] > 1.0:
            gauges["values"], gauges["at"] = stage_gauges(metrics_url) or gauges["values"], time.monotonic()
        live_agreement = gauges["values"].get("live_agreement")
        samples = int(gauges["values"].get("live_samples", 0))
        t = Table(title=f"{topo.name}: NoScope cascade through Kafka, {time.perf_counter() - t0:.1f}s",
                  box=box.SIMPLE,
                  caption="frames decided by the diff(erence detector), spec(ialized model), ref(erence model); "
                          "ref%: share of the cascade phase's frames that ran the reference; live: agreement "
                          "of the sampled reference checks / checks")
        for col in ("frames", "phase", "model", "diff", "spec", "ref", "ref%", "live"):
            t.add_column(col, justify="right")
        by = [r["decided_by"] for r in rows]
        casc = [r for r in rows if r["phase"] == "cascade"]
        share = sum(r["reference_ms"] is not None for r in casc) / len(casc) if casc else float("nan")
        t.add_row(f"{len(rows)}", rows[-1]["phase"] if rows else "-",
                  f"v{rows[-1]['model_version']}" if rows and rows[-1]["model_version"] else "-",
                  *(str(by.count(s)) for s in ("difference", "specialized", "reference")),
                  f"{share:.0%}" if casc else "-",
                  f"{live_agreement:.2f}/{samples}" if live_agreement is not None else "-")
        return t

    def drain() -> None:
        for m in reader.consume(1000, timeout=0.1):
            if m.error() is None and m.value():
                rows.append(orjson.loads(m.value() or b"{}"))

    shown = {"at": 0.0}

    def progress(_n: int) -> None:
        if time.monotonic() - shown["at"] > 0.25:
            drain()
            live.update(view())
            shown["at"] = time.monotonic()

    try:
        with Live(view(), console=console, refresh_per_second=4) as live:
            sent = replay_video(video, topo.input.topic, camera=camera, bootstrap=topo.kafka.bootstrap,
                                rate=rate, limit=limit, start=start, progress=progress)
            result.frames = sent.messages
            deadline = time.monotonic() + 600
            while exited(procs) is None and len(rows) < result.frames and time.monotonic() < deadline:
                drain()
                live.update(view())
            live.update(view())
    finally:
        reader.close()
        stop(procs)
    result.seconds = time.perf_counter() - t0
    result.error = failed(procs)
    result.labelled = len(rows)
    result.in_order = [r["frame_index"] for r in rows] == list(range(start, start + len(rows)))
    for key, attr in (("decided_by", "by_stage"), ("phase", "by_phase")):
        counts: dict[str, int] = {}
        for r in rows:
            counts[r[key]] = counts.get(r[key], 0) + 1
        setattr(result, attr, counts)
    result.versions = sorted({r["model_version"] for r in rows if r["model_version"] is not None})
    if result.error is None and (result.labelled != result.frames or not result.in_order):
        result.error = f"{result.labelled} labels for {result.frames} frames (in order: {result.in_order})"
    if result.error is None and "cascade" not in result.by_phase:
        result.error = "the camera never reached the cascade phase (no specialized model took over)"
    if result.error is None and compare_reference:
        truth, result.reference_seconds = reference_labels(limit, stage["detector"], stage.get("query") or {},
                                                           video, start)
        labels = np.array([r["label"] for r in rows], bool)
        # what the reference model cost: the frames it decided and the sampled checks of cheap decisions
        ref = np.array([r["reference_ms"] is not None for r in rows])
        casc = np.array([r["phase"] == "cascade" for r in rows])
        result.overall = compare(labels, truth, float(ref.mean()))
        result.cascade = compare(labels[casc], truth[casc], float(ref[casc].mean()))
        table = Table(title="against the reference model on every frame",
                      caption="stride: a fixed stride with the same reference budget, and its agreement")
        for col in ("frames", "agree", "FN rate", "FP rate", "ref share", "stride", "its agree"):
            table.add_column(col, justify="right")
        for name, c in (("all", result.overall), ("cascade", result.cascade)):
            table.add_row(f"{name} {c['frames']}", f"{c['agreement']:.3f}", f"{c['fn_rate']:.3f}",
                          f"{c['fp_rate']:.3f}", f"{c['reference_share']:.0%}", f"{c['stride']}",
                          f"{c['stride_agreement']:.3f}")
        console.print(table)
    console.print(f"{result.labelled}/{result.frames} frames labelled in {result.seconds:.1f}s "
                  f"(in order: {result.in_order}); by stage {result.by_stage}; by phase {result.by_phase}; "
                  f"model versions {result.versions}; reference on every frame here: {result.reference_seconds:.1f}s")
    return result


def main(argv: list[str] | None = None) -> int:
    """``make demo-video [VIDEO=file] [START=n] [LIMIT=n] [TOPOLOGY=file] [CAMERA=id]``: 0 when every frame got
    its label in order and the cascade took over; 2 for bad arguments."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dawnstream.demo_video", description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", default="vtest", help="vtest (default) or a video file OpenCV reads")
    ap.add_argument("--start", type=int, default=0, help="the first frame index sent (default 0)")
    ap.add_argument("--limit", type=int, default=None, help="only the frames before this index")
    ap.add_argument("--topology", type=Path, default=TOPOLOGY, help="a topology whose first stage is a cascade "
                    "(default topologies/camera-lawn.yaml)")
    ap.add_argument("--camera", default=None, help="the camera id (default: lawn for vtest, else the file's name)")
    args = ap.parse_args(argv)
    if args.start < 0 or (args.limit is not None and args.limit <= args.start):
        ap.error("--start must be >= 0 and below --limit")
    return exit_status(lambda console: run_video_demo(console, topology=args.topology, limit=args.limit,
                                                      video=args.video, start=args.start, camera=args.camera),
                       "demo-video")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
