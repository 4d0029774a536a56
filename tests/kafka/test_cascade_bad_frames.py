"""Bad frames in a camera's stream - zero bytes, a truncated JPEG, wrong magic bytes, an oversized frame, a
JPEG whose body does not decode - go to the dead-letter topic with their reason and original bytes; the
cascade worker goes on and labels every good frame once, in order."""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import yaml
from confluent_kafka import Producer
from dashkit import check_idle_job, job_selector, stage_values

from dawnstream.streams.config import parse_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.runner import KafkaRunner
from dawnstream.topics.spec import TopicSpec
from dawnstream.video_source import jpeg, read_frames, vtest

GOOD = 60


def cascade_shown(topo):
    """The cascade panel: frames per stage, reference share and alarms as the gauges say."""
    cap = job_selector(topo.name) + ' [data-cap="cascade"]'
    stage = topo.stages[0].name or "cascade"

    def check(dash, url: str) -> list[str]:
        kpis = dash.values(cap)
        wants = {key: stage_values([url], stage, key).get("0") for key in
                 ("frames_difference", "frames_specialized", "frames_reference", "reference_share", "alarms")}
        return [f"{k}: page {kpis.get(k)} != metrics {v}" for k, v in wants.items() if kpis.get(k) != v]

    return check


def test_bad_frames_are_dead_lettered_and_the_camera_goes_on(kafka_bootstrap, reader, tmp_path) -> None:
    from pathlib import Path

    tag = uuid.uuid4().hex[:8]
    src, dst = f"test.camera-bad-{tag}.frames.v1", f"test.camera-bad-{tag}.labels.v1"
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=src, partitions=1)])
    good = [jpeg(f) for _, _, f in read_frames(vtest(), stop=GOOD)]
    body_broken = good[0][:600] + b"\x00" * 4000 + b"\xff\xd9"  # a readable header, a body that does not decode
    corpus = [(b"", "empty message"), (good[1][:-500], "truncated JPEG"), (b"GIF89a" + b"\x00" * 64, "wrong magic"),
              (b"\xff\xd8\xff" + b"\x00" * (9 << 20) + b"\xff\xd9", "exceeds max_frame_bytes"),
              (body_broken, "image data is corrupt")]
    p = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 16 << 20})
    bad_at = {10 * (k + 1): item for k, item in enumerate(corpus)}
    for i, image in enumerate(good):
        if i in bad_at:
            p.produce(src, bad_at[i][0], b"lawn", headers=[("frame-index", str(1000 + i).encode())])
        p.produce(src, image, b"lawn", headers=[("frame-index", str(i).encode())])
    assert p.flush(60) == 0
    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "topologies" / "camera-lawn.yaml").read_text())
    doc["stages"][0].update({"query": {"min_count": 3}, "bootstrap": 20, "block": 5, "min_per_class": 2,
                             "swap_after": 3, "epochs": 1, "grid": [{"convs": 1, "filters": 16, "dense": 32}],
                             "registry": str(tmp_path / "registry")})
    doc.update({"name": f"camera-bad-{tag}", "input": {"topic": src, "codec": "frames"}, "outputs": [{"topic": dst}],
                "kafka": {"bootstrap": kafka_bootstrap}, "metrics": {"port": 0}, "batch": {"max_messages": 8}})
    topo = parse_topology(doc)
    runner = KafkaRunner(topo, metrics_port=0)
    th = threading.Thread(target=runner.run, kwargs={"max_idle_s": 30}, daemon=True)
    th.start()
    deadline = time.monotonic() + 300
    while runner.stats.rows_in < GOOD + len(corpus) and th.is_alive():
        assert time.monotonic() < deadline, f"only {runner.stats.rows_in} frames processed"
        time.sleep(0.2)
    shots = {'{job} [data-cap="cascade"]': "ui-cascade", "#dead-letters": "ui-dead-letters-video"}
    check_idle_job(kafka_bootstrap, topo, runner, cascade_shown(topo), shots, tmp_path, dead=len(corpus))
    runner.stop()
    th.join(60)
    assert runner.stats.rows_dead == len(corpus)
    dead = reader(src + ".dlq", len(corpus), timeout_s=60)
    reasons = [dict(m.headers())["dlq.error"].decode() for m in dead]
    originals = {bytes(m.value() or b"") for m in dead}
    for value, fragment in corpus:
        assert any(fragment in r for r in reasons), f"no dead letter says {fragment!r}: {reasons}"
        assert value in originals
    rows = [orjson.loads(m.value()) for m in reader(dst, GOOD, timeout_s=60)]
    assert [r["frame_index"] for r in rows] == list(range(GOOD))
    assert rows[-1]["phase"] == "cascade"
