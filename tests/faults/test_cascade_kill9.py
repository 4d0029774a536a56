"""kill -9 the cascade worker three times mid-stream - in the bootstrap, around the training and in the
cascade: every frame's label, deciding stage, phase and model version equal an uninterrupted run's, none
repeated (exactly-once; the swap is at a fixed frame and a retrain after a crash gives the same model)."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from pathlib import Path

import orjson
import yaml
from faultkit import committed, kill_after_progress, start_worker, stop, wait_until, write_topology

from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay_video import replay_video
from dawnstream.topics.spec import TopicSpec

ROOT = Path(__file__).resolve().parents[2]
FRAMES = 200
CUTS = [50, 75, 100, 130, FRAMES]  # the first slice, then one more before each of three kills, then the rest


def started(log: Path, since: int) -> bool:
    new = log.read_bytes()[since:]
    return b"event=runner.start" in new and b"event=partitions.assigned" in new.rsplit(b"event=runner.start", 1)[-1]


def test_kill9_mid_stream_gives_the_same_frame_labels(kafka_bootstrap: str, reader, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    srcs = {run: f"test.cascade-kill9-{tag}.{run}-frames.v1" for run in ("reference", "killed")}
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=t, partitions=1) for t in srcs.values()])
    replay_video("vtest", srcs["reference"], camera="lawn", bootstrap=kafka_bootstrap, limit=FRAMES, start_ms=0)
    replay_video("vtest", srcs["killed"], camera="lawn", bootstrap=kafka_bootstrap, limit=CUTS[0], start_ms=0)
    base = yaml.safe_load((ROOT / "topologies" / "camera-lawn.yaml").read_text())
    results = {}
    rng = random.Random(5)
    for run, src in srcs.items():
        stage = {**base["stages"][0], "query": {"min_count": 3}, "bootstrap": 40, "block": 10, "min_per_class": 3,
                 "swap_after": 15, "epochs": 2, "grid": [{"convs": 1, "filters": 16, "dense": 32}], "sample": 0.1,
                 "registry": str(tmp_path / f"registry-{run}")}  # its own registry: the killed run trains itself
        doc = {**base, "name": f"cascade-kill9-{run}-{tag}", "input": {**base["input"], "topic": src},
               "stages": [stage], "outputs": [{"topic": f"test.cascade-kill9-{tag}.{run}-labels.v1"}],
               "kafka": {"bootstrap": kafka_bootstrap}, "metrics": {"port": 0}, "checkpoint_ms": 300,
               "batch": {"max_messages": 8}}
        topo = write_topology(tmp_path / f"{run}.yaml", doc)
        group = f"dawnstream.{doc['name']}"
        log = tmp_path / f"{run}.log"
        since = 0
        proc = start_worker(topo, log=log)
        if run == "killed":
            for lo, hi in zip(CUTS[:-2], CUTS[1:-1], strict=True):
                proc, since = kill_after_progress(
                    proc, topo, log, kafka_bootstrap, group, src, 1, lambda a=lo, b=hi, s=src: replay_video(
                        "vtest", s, camera="lawn", bootstrap=kafka_bootstrap, start=a, limit=b, start_ms=0),
                    rng.uniform(0.0, 1.5))
            replay_video("vtest", src, camera="lawn", bootstrap=kafka_bootstrap, start=CUTS[-2], limit=FRAMES,
                         start_ms=0)
        wait_until(lambda g=group, s=src: committed(kafka_bootstrap, g, s, 1) >= FRAMES, 300, f"{run} to finish",
                   log=log)
        wait_until(lambda f=log, s=since: started(f, s), 60, "the worker to start", log=log)
        assert stop(proc) == 0, log.read_text()[-3000:]
        rows = [orjson.loads(m.value()) for m in reader(doc["outputs"][0]["topic"], FRAMES, timeout_s=120)]
        results[run] = Counter((r["frame_index"], r["label"], r["decided_by"], r["phase"], r["model_version"])
                               for r in rows)
        if run == "killed":
            assert log.read_text().count("state.restored") >= 1
    ref, got = results["reference"], results["killed"]
    assert sum(ref.values()) == FRAMES and max(got.values()) == 1
    assert {k[3] for k in ref} == {"bootstrap", "training", "cascade"}  # the run went through every phase
    assert got == ref
