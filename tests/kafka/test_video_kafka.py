"""Video through the broker: `dawnstream replay vtest` publishes JPEG frames keyed by camera, and a
difference-detector topology scores every frame once, in order, per camera."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import orjson

from dawnstream.streams.config import parse_topology
from dawnstream.streams.runner import KafkaRunner

FRAMES = 80


def test_replayed_vtest_frames_are_scored_once_in_order(kafka_bootstrap, topic_name, reader) -> None:
    src, dst = topic_name("frames", "cameras"), topic_name("diffs", "cameras")
    env_cmd = [sys.executable, "-m", "dawnstream", "replay", "vtest", "--topic", src, "--limit", str(FRAMES),
               "--camera", "lawn", "--bootstrap", kafka_bootstrap]
    r = subprocess.run(env_cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["frames"] == FRAMES
    frames = reader(src, FRAMES)
    assert [m.key() for m in frames] == [b"lawn"] * FRAMES
    assert [int(dict(m.headers())["frame-index"]) for m in frames] == list(range(FRAMES))
    topo = parse_topology({
        "name": f"diff-{src}", "input": {"topic": src, "codec": "frames"},
        "stages": [{"op": "difference", "threshold": 60.0, "lag": 1},
                   {"op": "select", "columns": ["camera_id", "frame_index", "diff_mse", "changed"]}],
        "outputs": [{"topic": dst}], "kafka": {"bootstrap": kafka_bootstrap}, "metrics": {"port": 0},
        "batch": {"max_messages": 16},
    })
    runner = KafkaRunner(topo, metrics_port=-1)
    th = threading.Thread(target=runner.run, kwargs={"max_rows": FRAMES}, daemon=True)
    th.start()
    th.join(180)
    assert runner.stats.rows_in == FRAMES and runner.stats.rows_dead == 0
    rows = [orjson.loads(m.value()) for m in reader(dst, FRAMES)]
    assert [r["frame_index"] for r in rows] == list(range(FRAMES))
    assert rows[0]["changed"] is True and rows[0]["diff_mse"] is None  # nothing to compare the first frame with
    scores = [r["diff_mse"] for r in rows[1:]]
    changed = [r["changed"] for r in rows[1:]]
    assert all(s > 0 for s in scores) and any(changed) and not all(changed)
