"""One label model per topology, through the broker: the same input (the five-class debates set, the user's own
LF file, 4 partitions) labelled by 1 worker and by 4 workers in one consumer group gives the same labels,
row for row and bit for bit, and every partition's rows of a block get the model of all partitions' blocks
before it (not one model per partition)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
import yaml

from dawnstream.sources import debates
from dawnstream.streams.config import load_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.streams.runner import KafkaRunner
from dawnstream.topics.spec import TopicSpec

ROOT = Path(__file__).resolve().parents[2]
PARTS = 4


def labels(kafka_bootstrap: str, reader, tmp_path: Path, src: str, tag: str, workers: int, n: int) -> dict:
    doc = yaml.safe_load((ROOT / "examples" / "debates" / "speakers.yaml").read_text())
    doc["name"] = f"speakers-{workers}w-{tag}"
    doc["input"]["topic"] = src
    doc["outputs"][0]["topic"] = f"test.speakers-{tag}.{workers}w-labels.v1"
    doc["stages"][0]["refit_every"] = 60  # several blocks per partition, and partitions that end blocks apart
    doc["stages"][0]["lfs"] = [str(ROOT / "examples" / "debates" / "speaker_lfs.py")]
    doc["kafka"]["bootstrap"], doc["metrics"]["port"] = kafka_bootstrap, 0
    path = tmp_path / f"{workers}.yaml"
    path.write_text(yaml.safe_dump(doc))
    topo = load_topology(path)
    runners = [KafkaRunner(topo, worker=w, metrics_port=-1) for w in range(workers)]
    threads = [threading.Thread(target=r.run, daemon=True) for r in runners]
    for t in threads:
        t.start()
        time.sleep(0.5)  # workers join one after another: partitions move between them mid-stream
    try:
        out = reader(doc["outputs"][0]["topic"], n, timeout_s=120)
    finally:
        for r in runners:
            r.stop()
        for t in threads:
            t.join(60)
    assert all(r.failure is None for r in runners), [r.failure for r in runners]
    rows = [orjson.loads(m.value()) for m in out]
    assert len(rows) == n and len({r["id"] for r in rows}) == n  # each row labelled once
    return {r["id"]: (tuple(r["probs"]), r["label"], r["model_block"], tuple(r["votes"])) for r in rows}


def test_one_and_four_workers_give_the_same_labels(kafka_bootstrap: str, reader, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    table = debates().select(["id", "text", "debate"])
    src = f"test.speakers-{tag}.rows.v1"
    TopicAdmin(kafka_bootstrap).ensure([TopicSpec(name=src, partitions=PARTS)])
    replay_table(table, src, key="id", bootstrap=kafka_bootstrap)
    one = labels(kafka_bootstrap, reader, tmp_path, src, tag, 1, table.num_rows)
    four = labels(kafka_bootstrap, reader, tmp_path, src, tag, 4, table.num_rows)
    assert {i: v[:3] for i, v in one.items()} == {i: v[:3] for i, v in four.items()}

    # One model: rows of the same block with the same votes get the same probabilities, whichever partition
    # they came from (with a model per partition they would not).
    same: dict[tuple, set] = defaultdict(set)
    for probs, _label, block, votes in one.values():
        same[(block, votes)].add(probs)
    used = {block for block, _ in same if block >= 0}
    assert len(used) >= 3, used  # several global models were fitted and used
    assert sum(len(v) > 0 for v in same.values()) > 50 and all(len(v) == 1 for v in same.values())
