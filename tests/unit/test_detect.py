"""The reference path: a detector behind one interface, the region query over its boxes, the `detect` stage."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dawnstream.errors import ConfigError
from dawnstream.models.detectors import Detection, HogPeopleDetector, RegionQuery
from dawnstream.operators.registry import build_operator

LAWN = [0, 380, 560, 576]  # the query on vtest: a person whose foot point is on the lawn


def test_region_query_counts_foot_or_centre_points_in_the_region() -> None:
    boxes = [Detection(100, 300, 40, 100, 1.0),  # foot (120, 400): on the lawn; centre (120, 350): not
             Detection(600, 300, 40, 100, 1.0),  # foot x 620: right of it
             Detection(10, 500, 20, 60, 0.5)]    # foot (20, 560): on it
    assert RegionQuery(tuple(LAWN)).count(boxes) == 2
    assert RegionQuery(tuple(LAWN), point="center").count(boxes) == 1
    assert RegionQuery(tuple(LAWN), min_count=3).label(boxes) is False
    assert RegionQuery().count(boxes) == 3
    with pytest.raises(ValueError, match="x0 < x1"):
        RegionQuery((5, 0, 1, 10))


@pytest.fixture(scope="module")
def frames() -> pa.RecordBatch:
    from dawnstream.video_source import jpeg, read_frames, vtest

    rows = [(i, jpeg(f)) for i, _, f in read_frames(vtest(), stop=120, step=30)]
    return pa.record_batch({"camera_id": ["lawn"] * len(rows), "frame_index": [i for i, _ in rows],
                            "image": pa.array([b for _, b in rows], pa.binary())})


def test_the_detect_stage_answers_the_query_with_the_reference_model(frames) -> None:
    from dawnstream.operators.video.detect import decode

    op = build_operator("detect", {"detector": {"kind": "hog"}, "query": {"region": LAWN}}, None, "stages.0")
    out = op.process(frames)[0]
    hog, query = HogPeopleDetector(), RegionQuery(tuple(LAWN))
    for i in range(frames.num_rows):
        boxes = hog.detect(decode(frames.column("image")[i].as_py()))
        assert out.column("count")[i].as_py() == query.count(boxes)
        assert out.column("label")[i].as_py() == query.label(boxes)
        assert len(out.column("boxes")[i].as_py()) == len(boxes) >= 1  # 3-10 pedestrians in every vtest frame
    assert set(out.column("decided_by").to_pylist()) == {"hog"}
    assert np.all(out.column("reference_ms").to_numpy() > 0)


@pytest.mark.parametrize(("params", "path"), [
    ({"detector": {"kind": "yolo"}}, "stages.0.detector"),
    ({"detector": {"kind": "hog", "stride": 4}}, "stages.0.detector"),
    ({"detector": {"kind": "hog"}, "query": {"region": [0, 0, 10]}}, "stages.0.query"),
    ({"detector": {"kind": "hog"}, "query": {"point": "head"}}, "stages.0.query"),
])
def test_bad_detect_config_names_the_key(params, path) -> None:
    with pytest.raises(ConfigError) as e:
        build_operator("detect", params, None, "stages.0")
    assert e.value.path == path
