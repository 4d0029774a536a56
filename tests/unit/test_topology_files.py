"""Every file in topologies/ runs through `dawnstream process` on real data (no broker).

A topology added without an entry in SOURCES fails here: an example no test runs is an example
that will break.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from dawnstream.sources import flights

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SENSOR10K = "macrobase/legacy/sensor10k.csv.gz"
# topology file -> (source: a dataset name, a shared-data path, or the output of another topology, output file)
SOURCES = {
    "flights-late.yaml": ("flights", "late.parquet"),
    "flights-late-per-day.yaml": ("flights", "per-day.jsonl"),
    "flights-per-origin-hourly.yaml": ("flights", "per-origin-hourly.jsonl"),
    "flight-delays.yaml": ("flights", "summaries.jsonl"),
    "flight-delays-merge.yaml": ("out:summaries.jsonl", "explanations.jsonl"),
    "device-telemetry.yaml": ("shared:" + SENSOR10K, "devices.jsonl"),
    "movie-ratings.yaml": ("gen:movielens-events.jsonl", "replies.jsonl"),
    "review-sentiment.yaml": ("rotten_tomatoes", "labels.jsonl"),
    "review-serving.yaml": ("gen:review-events.jsonl", "review-replies.jsonl"),
    "flight-delay-classifier.yaml": ("gen:flight-events.jsonl", "flight-replies.jsonl"),
    "camera-lawn.yaml": ("vtest", "lawn-labels.jsonl"),
}


def movielens_events(path: Path, n: int = 3000) -> int:
    """The first ``n`` MovieLens ratings as feedback rows, with a request (``reply_to`` set) after every
    third; returns the number of requests."""
    from dawnstream.sources import movielens

    rows, asks = [], 0
    for k, r in enumerate(movielens().slice(0, n).to_pylist()):
        rows.append({"correlation_id": f"f{k}", "reply_to": None, "user_id": r["user_id"], "item_id": r["item_id"],
                     "rating": r["rating"]})
        if k % 3 == 0:
            asks += 1
            rows.append({"correlation_id": f"q{k}", "reply_to": "replies", "user_id": r["user_id"],
                         "item_id": r["item_id"], "rating": None})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return asks


def review_events(path: Path, registry: Path, n: int = 2000) -> int:
    """Requests for ``n`` reviews and, 100 rows later, their gold labels as feedback (what `dawnstream process`
    reads when the feedback topic is not in play); registers an end model fitted on other reviews. Returns
    the number of requests."""
    import numpy as np

    from dawnstream.models.registry import Registry
    from dawnstream.models.text_model import HashedTextModel
    from dawnstream.sources import rotten_tomatoes

    t = rotten_tomatoes().to_pylist()
    train = t[:3000]
    m = HashedTextModel.fit([r["text"] for r in train], np.eye(2)[[r["label"] for r in train]], n_features=1 << 16)
    reg = Registry(registry)
    reg.promote("review-sentiment-end-model", reg.register("review-sentiment-end-model", m.to_npz(), "npz").version)
    rows = []
    for k, r in enumerate(t[3000:3000 + n]):
        rows.append({"correlation_id": f"q{k}", "reply_to": "replies", "text": r["text"], "movie": r["movie"]})
        if k >= 100:
            rows.append({"correlation_id": f"q{k - 100}", "reply_to": None, "movie": t[2900 + k]["movie"],
                         "label": ["rotten", "fresh"][t[2900 + k]["label"]]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return n


def flight_events(path: Path, registry: Path, n: int = 3000) -> int:
    """The README's user model (examples/train_flight_late_model.py: scikit-learn, exported to ONNX) registered
    through the CLI's check against the topology; ``n`` July flights as requests and, 100 rows later, whether
    each landed late as feedback. Returns the number of requests."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_flight", ROOT / "examples" / "train_flight_late_model.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.train(str(path.parent / "flight-late.onnx"))
    r = subprocess.run([sys.executable, "-m", "dawnstream", "models", "register", "flight-late",
                        str(path.parent / "flight-late.onnx"), "--topology",
                        str(ROOT / "topologies" / "flight-delay-classifier.yaml"), "--promote", "--registry",
                        str(registry)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _, _, flown = mod.flights_xy(7, 7)
    rows = []
    for k, f in enumerate(flown[:n]):
        rows.append({"correlation_id": f"q{k}", "reply_to": "replies", **{c: f[c] for c in mod.COLUMNS},
                     "carrier": f["carrier"]})
        if k >= 100:
            rows.append({"correlation_id": f"q{k - 100}", "reply_to": None, "carrier": flown[k - 100]["carrier"],
                         "label": flown[k - 100]["label"]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return n


def process(topology: str, source: str, out: Path) -> dict:
    env = {**os.environ, "DAWNSTREAM_LOG_LEVEL": "WARNING", "DAWNSTREAM_REGISTRY": str(out.parent / "registry")}
    r = subprocess.run([sys.executable, "-m", "dawnstream", "process", str(ROOT / "topologies" / topology), source,
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_topology_file_has_a_source_here() -> None:
    assert sorted(p.name for p in (ROOT / "topologies").glob("*.yaml")) == sorted(SOURCES)


def test_every_topology_processes_real_data(tmp_path: Path, shared_data: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    asks = reviews = flights_asked = 0
    jobs: dict[str, tuple[str, Path]] = {}
    for topology, (source, out) in SOURCES.items():
        if source.startswith("out:"):
            source = str(tmp_path / source[4:])
        elif source.startswith("shared:"):
            source = str(shared_data / source[7:])
        elif source == "gen:flight-events.jsonl":
            flights_asked = flight_events(tmp_path / source[4:], tmp_path / "registry")
            source = str(tmp_path / source[4:])
        elif source == "gen:review-events.jsonl":
            reviews = review_events(tmp_path / source[4:], tmp_path / "registry")
            source = str(tmp_path / source[4:])
        elif source.startswith("gen:"):
            asks = movielens_events(tmp_path / source[4:])
            source = str(tmp_path / source[4:])
        jobs[topology] = (source, tmp_path / out)
    later = {t for t, (src, _) in SOURCES.items() if src.startswith("out:")}  # reads another one's output
    with ThreadPoolExecutor(max_workers=2) as pool:  # one `dawnstream process` per core
        running = {t: pool.submit(process, t, *jobs[t]) for t in jobs if t not in later}
        results = {t: f.result() for t, f in running.items()}
    results.update({t: process(t, *jobs[t]) for t in later})
    for topology, got in results.items():
        assert got["rows_out"] > 0, topology
    table = flights()
    late = pc.sum(pc.greater(table.column("dep_delay"), 60)).as_py()
    assert results["flights-late.yaml"] == {"rows_in": 336_776, "rows_out": late, "out": str(tmp_path / "late.parquet")}
    assert results["device-telemetry.yaml"]["rows_in"] == 10_479
    # one partition: group_by passes rows through; the drained windows are every (hour, origin) once
    hourly = results["flights-per-origin-hourly.yaml"]
    assert hourly["rows_in"] == 336_776 and hourly["rows_out"] == 19_486
    # serve: a reply per request (no registry here: velox answers with the running mean, svd straggles)
    assert results["movie-ratings.yaml"] == {"rows_in": 3000 + asks, "rows_out": asks,
                                             "out": str(tmp_path / "replies.jsonl")}
    # predict: a reply per request (which models made the SLO depends on this machine's load: not checked here;
    # tests/kafka/test_predict_kafka.py checks the model's answers)
    assert results["review-serving.yaml"]["rows_out"] == reviews
    for name in ("review-replies.jsonl", "flight-replies.jsonl"):
        replies = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        assert all(r["kind"] == "prediction" and abs(sum(r["probabilities"]) - 1) < 1e-9 and "prior" in r["answered"]
                   for r in replies), name
    assert results["flight-delay-classifier.yaml"]["rows_out"] == flights_asked
    assert results["review-sentiment.yaml"]["rows_in"] == results["review-sentiment.yaml"]["rows_out"] == 12_808
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().split("\n") if line]
    assert sum(r["review"] for r in labels) > 100 and sum(r["abstained"] for r in labels) < 0.4 * len(labels)
    assert results["camera-lawn.yaml"]["rows_in"] == results["camera-lawn.yaml"]["rows_out"] == 795
    frames = [json.loads(line) for line in (tmp_path / "lawn-labels.jsonl").read_text().splitlines()]
    assert [r["frame_index"] for r in frames] == list(range(795)) and frames[-1]["phase"] == "cascade"
    rows = [json.loads(line) for line in (tmp_path / "explanations.jsonl").read_text().splitlines()]
    final = [r for r in rows if r["emitted_rows"] == 336_776]
    assert (int(final[0]["month"]), int(final[0]["day"])) == (3, 8)  # the nor'easter, even on one partition
