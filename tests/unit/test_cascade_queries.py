"""The plan-and-watch loop on several queries over one real camera, in CI (issue 31, item 6).

vtest's 795 frames, NoScope's held-out protocol as ``benchmarks/video.py`` runs it (blocks of 30, every
third held out and streamed after the others, which are the camera's bootstrap), through the real
``cascade`` stage, one query at a time: regions in different parts of the frame, foot and centre points,
``min_count`` 2. The reference model is SSDLite, run once per frame for all the queries (its boxes do not
depend on the query; a query only counts them); the specialized model is one small CNN trained for a few
epochs, so a query costs seconds. ``benchmarks/video_queries.py`` measures the same queries with the full
grid, HOG too, through the broker.

Per query, on the held-out frames, what the stage promises: every frame labelled once, in order; a
reference answer is always the label; no FN or FP rate that the held-out frames show (95% sure) to miss
its target, unless the live test fired and the frames after its alarm do not; and never worse than a
fixed stride that calls the reference model as often.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from dawnstream.demo_video import compare
from dawnstream.operators.registry import build_chain

pytestmark = pytest.mark.slow
BLOCK = 30
TARGET = 0.01
QUERIES: dict[str, dict[str, Any]] = {
    "lawn, foot": {"region": [0, 380, 560, 576], "point": "foot"},
    "left, centre": {"region": [0, 250, 384, 576], "point": "center"},
    "right, centre": {"region": [560, 200, 768, 576], "point": "center"},
    "bottom, centre": {"region": [0, 300, 768, 576], "point": "center"},
    "middle, foot, 2 people": {"region": [200, 150, 600, 576], "point": "foot", "min_count": 2},
}


class Memo:
    """The reference model, once per frame for every query: boxes by the decoded frame's digest."""

    def __init__(self, inner: Any, cache: dict[bytes, Any]) -> None:
        self.inner, self.cache = inner, cache
        self.min_score = inner.min_score

    def detect(self, frame: np.ndarray) -> Any:
        key = hashlib.blake2b(frame.tobytes(), digest_size=16).digest()
        if key not in self.cache:
            self.cache[key] = self.inner.detect(frame)
        return self.cache[key]


@pytest.fixture(scope="module")
def stream() -> dict[str, Any]:
    """vtest as the benchmark streams it (bootstrap blocks, then held-out blocks) in batches of 16, the
    reference model's boxes on every frame (by index, and by the decoded frame's digest for :class:`Memo`)."""
    from dawnstream.models.detectors import SSDLiteDetector
    from dawnstream.operators.video.detect import decode
    from dawnstream.operators.video.fragility import SCORE_FLOOR
    from dawnstream.video_source import jpeg, read_frames, vtest

    frames = [(i, jpeg(f)) for i, _, f in read_frames(vtest())]
    order = [f for f in frames if (f[0] // BLOCK) % 3 != 2] + [f for f in frames if (f[0] // BLOCK) % 3 == 2]
    table = pa.table({"camera_id": ["vtest"] * len(order), "frame_index": [i for i, _ in order],
                      "image": pa.array([raw for _, raw in order], pa.binary())})
    detector = SSDLiteDetector(min_score=0.3 * SCORE_FLOOR)  # as the stage runs it (boxes down to the floor)
    cache: dict[bytes, Any] = {}
    boxes = {i: Memo(detector, cache).detect(decode(raw)) for i, raw in frames}
    return {"batches": table.to_batches(max_chunksize=16), "boxes": boxes, "cache": cache,
            "bootstrap": sum((i // BLOCK) % 3 != 2 for i, _ in frames)}


def run(query: dict[str, Any], stream: dict[str, Any], registry: str) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The stage's output rows on the stream, and the reference model's answer on each of their frames."""
    bootstrap = stream["bootstrap"]
    chain = build_chain([("cascade", {
        "detector": {"kind": "ssdlite", "min_score": 0.3}, "query": query, "targets": {"fn": TARGET, "fp": TARGET},
        "bootstrap": bootstrap, "max_bootstrap": bootstrap + BLOCK, "swap_after": 0, "min_per_class": 20,
        "epochs": 4, "grid": [{"convs": 2, "filters": 16, "dense": 32}], "registry": registry}, None)])
    op = chain.operators[0]
    assert op.detector.min_score == 0.3 * 0.5  # the cache holds boxes down to the same floor
    op.detector = Memo(op.detector, stream["cache"])
    out = [r for b in stream["batches"] for o in chain.process(b) for r in o.to_pylist()]
    truth = [op.query.count([b for b in stream["boxes"][r["frame_index"]] if b.score >= op.min_score])
             >= op.query.min_count for r in out]
    return out, np.array(truth, bool)


@pytest.mark.parametrize("name", list(QUERIES))
def test_no_query_misses_its_targets_unseen_and_none_is_worse_than_a_stride(name, stream, tmp_path) -> None:
    from dawnstream.operators.video.bounds import lower_bound

    out, truth = run(QUERIES[name], stream, str(tmp_path))
    held = np.array([(r["frame_index"] // BLOCK) % 3 == 2 for r in out])
    assert sorted(r["frame_index"] for r in out) == sorted(stream["boxes"]) and held.sum() == 255
    labels = np.array([r["label"] for r in out], bool)
    by_ref = np.array([r["decided_by"] == "reference" for r in out])
    assert (labels[by_ref] == truth[by_ref]).all()  # a reference answer (check, confirmation, fallback) is the label
    calls = float(np.mean([r["reference_ms"] is not None for r, h in zip(out, held, strict=True) if h]))
    got = compare(labels[held], truth[held], calls)
    phases = [r["phase"] for r in out]
    turns = [i for i in range(1, len(out)) if phases[i - 1] == "cascade" and phases[i] != "cascade"]
    report = {"query": name, **{k: round(v, 3) if isinstance(v, float) else v for k, v in got.items()},
              "alarms": len(turns), "cascade": int(sum(p == "cascade" for p, h in zip(phases, held, strict=True) if h))}
    print(report)
    # The held-out frames may not show, 95% sure, that a target is missed: the stage's own live test fires
    # on that evidence. Where it fired, the frames from its alarm on are held to it (the fallback worked).
    part = held & (np.arange(len(out)) >= turns[0]) if turns else held
    for wrong, of in (((~labels & truth & part).sum(), (truth & part).sum()),
                      ((labels & ~truth & part).sum(), (~truth & part).sum())):
        assert of == 0 or lower_bound(int(wrong), int(of)) <= TARGET, report
    assert got["agreement"] >= got["stride_agreement"], report
