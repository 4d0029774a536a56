"""kill -9 the labeling worker three times mid-stream: the probabilistic labels (and review flags) equal an
uninterrupted run's, none repeated (exactly-once; labels do not depend on where batches were cut)."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
import yaml
from faultkit import committed, kill_after_progress, start_worker, stop, wait_until, write_topology

from dawnstream.sources import rotten_tomatoes
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.topics.spec import TopicSpec

# Results promised bit for bit: `make test` runs these again under a second OpenBLAS kernel.
pytestmark = pytest.mark.bitexact

ROOT = Path(__file__).resolve().parents[2]
PARTS = 4
KILLS = 3


def started(log: Path, since: int) -> bool:
    new = log.read_bytes()[since:]
    return b"event=runner.start" in new and b"event=partitions.assigned" in new.rsplit(b"event=runner.start", 1)[-1]


def test_kill9_mid_stream_gives_the_same_probabilistic_labels(kafka_bootstrap: str, reader, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    table = rotten_tomatoes().select(["id", "text"])
    n = table.num_rows
    size = n // (KILLS + 2) + 1
    slices = [table.slice(o, size) for o in range(0, n, size)]
    srcs = {run: f"test.labels-kill9-{tag}.{run}-rows.v1" for run in ("reference", "killed")}
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=t, partitions=PARTS) for t in srcs.values()])
    replay_table(table, srcs["reference"], key="id", bootstrap=kafka_bootstrap)
    replay_table(slices[0], srcs["killed"], key="id", bootstrap=kafka_bootstrap)
    base = yaml.safe_load((ROOT / "topologies" / "review-sentiment.yaml").read_text())
    base["stages"][0]["end_model"] = None  # its versions arrive at wall-clock times: not replayable
    results = {}
    rng = random.Random(11)
    for run, src in srcs.items():
        doc = {**base, "name": f"labels-kill9-{run}-{tag}", "input": {**base["input"], "topic": src},
               "outputs": [{"topic": f"test.labels-kill9-{tag}.{run}-labels.v1"}],
               "kafka": {"bootstrap": kafka_bootstrap}, "metrics": {"port": 0}, "checkpoint_ms": 500,
               "batch": {"max_messages": 700}}
        topo = write_topology(tmp_path / f"{run}.yaml", doc)
        group = f"dawnstream.{doc['name']}"
        log = tmp_path / f"{run}.log"
        since = 0
        proc = start_worker(topo, log=log)
        if run == "killed":
            for kill in range(KILLS):
                proc, since = kill_after_progress(
                    proc, topo, log, kafka_bootstrap, group, src, PARTS, lambda k=kill, s=src: replay_table(
                        slices[k + 1], s, key="id", bootstrap=kafka_bootstrap), rng.uniform(0.0, 1.0))
            for rest in slices[KILLS + 1:]:
                replay_table(rest, src, key="id", bootstrap=kafka_bootstrap)
        wait_until(lambda g=group, s=src: committed(kafka_bootstrap, g, s, PARTS) >= n, 300, f"{run} to finish",
                   log=log)
        wait_until(lambda f=log, s=since: started(f, s), 60, "the worker to start", log=log)
        assert stop(proc) == 0, log.read_text()[-3000:]
        out = reader(doc["outputs"][0]["topic"], n, timeout_s=120)
        rows = [orjson.loads(m.value()) for m in out]
        results[run] = Counter((r["id"], tuple(r["probs"]), r["review"]) for r in rows)
        if run == "killed":
            assert log.read_text().count("state.restored") >= 1
    ref, got = results["reference"], results["killed"]
    assert sum(ref.values()) == n and max(got.values()) == 1
    assert got == ref
