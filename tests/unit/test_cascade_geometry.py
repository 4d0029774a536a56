"""Frame geometry is data (issue 31): frames of every size through the cascade, the difference stage and the
reference models; undecodable frames refused alone; the roi's unit checked; a sampled reference answer kept."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pytest

from dawnstream.errors import ConfigError
from dawnstream.models.detectors import build_detector
from dawnstream.operators.registry import build_chain
from dawnstream.operators.video.cascade import clip_crop

SIZES = [(16, 16), (17, 9), (1, 1), (40, 30), (64, 128), (63, 200), (200, 150), (3000, 20), (768, 576)]
PARAMS = {"detector": {"kind": "hog"}, "query": {"region": [0, 380, 560, 576]}, "bootstrap": 8, "min_per_class": 1,
          "block": 2, "swap_after": 3, "epochs": 1, "grid": [{"convs": 1, "filters": 16, "dense": 32}],
          "difference": {"roi": [0, 280, 600, 576]}}


@pytest.fixture(scope="module")
def vtest_frame() -> np.ndarray:
    from dawnstream.video_source import read_frames, vtest

    return next(iter(read_frames(vtest(), stop=1)))[2]


def jpegs(frame: np.ndarray, sizes: list[tuple[int, int]]) -> list[bytes]:
    import cv2

    from dawnstream.video_source import jpeg

    return [jpeg(cv2.resize(frame, size)) for size in sizes]


@pytest.mark.parametrize("kind", ["hog", "ssdlite"])
def test_the_reference_models_take_frames_of_any_size(vtest_frame, kind) -> None:
    from dawnstream.operators.video.detect import decode

    det = build_detector({"kind": kind})
    for raw, (w, h) in zip(jpegs(vtest_frame, SIZES), SIZES, strict=True):
        frame = decode(raw)
        assert frame.shape[:2] == (h, w)
        boxes = det.detect(frame)  # HOG once corrupted its heap (and killed the worker) below 64x128
        assert all(0 <= b.x <= w and 0 <= b.y <= h for b in boxes)


def test_frames_of_every_size_mixed_in_one_batch_go_through_the_cascade_and_difference(vtest_frame, tmp_path) -> None:
    sizes = SIZES * 3
    batch = pa.record_batch({"camera_id": ["cam"] * len(sizes), "frame_index": list(range(len(sizes))),
                             "image": pa.array(jpegs(vtest_frame, sizes), pa.binary())})
    cascade = build_chain([("cascade", {**PARAMS, "registry": str(tmp_path)}, None)])
    assert cascade.bad_rows(batch) == {}
    out = [r for o in cascade.process(batch) for r in o.to_pylist()]
    assert [r["frame_index"] for r in out] == list(range(len(sizes)))
    diff = build_chain([("difference", {"threshold": 10.0, "roi": [0, 288, 614, 576]}, None)])
    assert diff.process(batch)[0].num_rows == len(sizes)


def test_clipped_crops_are_never_empty() -> None:
    for h, w in [(1, 1), (4, 4), (37, 50), (144, 192)]:
        frame = np.zeros((h, w, 3), np.uint8)
        for box in [(0, 280, 600, 576), (700, 560, 768, 576), (0, 0, 1, 1), (5000, 5000, 6000, 6000)]:
            crop = clip_crop(frame, box, 4)
            assert crop.shape[0] >= 1 and crop.shape[1] >= 1
    assert clip_crop(np.zeros((144, 192, 3)), (0, 280, 600, 576), 4).shape[:2] == (74, 150)


def test_an_undecodable_frame_is_refused_alone_before_any_state_moves(vtest_frame, tmp_path) -> None:
    good = jpegs(vtest_frame, [(200, 150), (768, 576)])
    batch = pa.record_batch({"camera_id": ["cam"] * 3, "frame_index": [0, 1, 2],
                             "image": pa.array([good[0], b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9", good[1]],
                                               pa.binary())})
    chain = build_chain([("cascade", {**PARAMS, "registry": str(tmp_path)}, None)])
    refused = chain.bad_rows(batch)
    assert list(refused) == [1] and refused[1][0] == "cascade"
    assert "frame 1 of camera 'cam'" in refused[1][1] and "not a decodable" in refused[1][1]
    assert chain.operators[0].cameras == {}  # nothing moved
    kept = batch.take(pa.array([0, 2]))
    assert [r["frame_index"] for o in chain.process(kept) for r in o.to_pylist()] == [0, 2]


@pytest.mark.parametrize("roi,says", [([0.0, 0.5, 0.8, 1.0], "looks like fractions"), ([10, 10, 5, 20], "x0 < x1"),
                                      ([0, 1, 2], "x0 < x1"), (["a", 0, 1, 2], "x0 < x1")])
def test_every_roi_is_pixels_and_says_so(roi, says, tmp_path) -> None:
    with pytest.raises(ConfigError) as e:
        build_chain([("cascade", {**PARAMS, "difference": {"roi": roi}, "registry": str(tmp_path)}, None)])
    assert e.value.path == "stages.0.difference.roi" and says in e.value.message
    with pytest.raises(ConfigError) as e:  # the difference stage: the same unit, the same check
        build_chain([("difference", {"threshold": 1.0, "roi": roi}, None)])
    assert e.value.path == "stages.0.roi" and says in e.value.message


def test_the_difference_roi_scores_only_that_part_of_the_frame(vtest_frame) -> None:
    import cv2

    from dawnstream.operators.video.difference import DifferenceDetector

    moved = vtest_frame.copy()
    moved[20:120, 20:200] = 255 - moved[20:120, 20:200]  # a change at the top left only
    frames = pa.record_batch({"camera_id": ["c", "c"], "image": [cv2.imencode(".jpg", f)[1].tobytes()
                                                                  for f in (vtest_frame, moved)]})
    top_left = DifferenceDetector(threshold=1.0, roi=[0, 0, 240, 160]).process(frames)[0]
    lawn = DifferenceDetector(threshold=1.0, roi=[0, 280, 600, 576]).process(frames)[0]
    assert top_left.column("diff_mse")[1].as_py() > 100 and lawn.column("diff_mse")[1].as_py() < 1.0


def test_a_sampled_reference_answer_is_the_label_later_frames_copy(vtest_frame, tmp_path) -> None:
    from dawnstream.operators.video.cascade import Camera
    from dawnstream.operators.video.optimizer import Plan

    class Never:  # a specialized model sure nobody is ever there
        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.zeros(len(x), np.float32)

    chain = build_chain([("cascade", {**PARAMS, "query": {"min_count": 1}, "sample": 1.0,
                                      "targets": {"fn": 0.99, "fp": 0.99}, "min_agreement": 0.0,  # no alarm here
                                      "detector": {"kind": "ssdlite"}, "registry": str(tmp_path)}, None)])
    op = chain.operators[0]
    # delta huge: every frame would repeat the last label; the specialized model would say "empty"
    op.cameras["lawn"] = Camera(phase="cascade", plan=Plan(1e9, 0.2, 0.8), spec=Never(), version=1,
                                last_label=False)
    from dawnstream.video_source import jpeg, read_frames, vtest

    raws = [jpeg(f) for _, _, f in read_frames(vtest(), stop=6)]
    batch = pa.record_batch({"camera_id": ["lawn"] * 6, "frame_index": list(range(6)),
                             "image": pa.array(raws, pa.binary())})
    out = chain.process(batch)[0].to_pylist()
    # people walk through vtest's every frame: the reference says so each time, and that is the label
    assert all(r["sampled"] and r["decided_by"] == "reference" and r["label"] for r in out)
    assert op.cameras["lawn"].samples.count(False) >= 1  # the stale "empty" was recorded as a disagreement
    assert orjson.dumps(op.gauges())  # the gauges still serialize


def test_the_specialized_model_sees_the_query_region_with_a_margin(vtest_frame, tmp_path) -> None:
    from dawnstream.operators.video.cascade import QUARTER, _thumb, query_box
    from dawnstream.operators.video.detect import decode

    assert query_box((560, 200, 768, 576), "center") == (456, 12, 872, 764)
    assert query_box((0, 380, 560, 576), "foot")[1] == 0  # a standing person's height above the feet' region
    params = {**PARAMS, "query": {"region": [560, 200, 768, 576], "point": "center"}, "registry": str(tmp_path)}
    raw = jpegs(vtest_frame, [(768, 576)])[0]
    batch = pa.record_batch({"camera_id": ["cam"], "frame_index": [0], "image": pa.array([raw], pa.binary())})
    for mode, crop in (("region", (456, 12, 872, 764)), ("frame", None)):
        chain = build_chain([("cascade", {**params, "specialized_input": mode}, None)])
        chain.process(batch)
        frame = decode(raw, QUARTER)
        want = _thumb(frame if crop is None else clip_crop(frame, crop, QUARTER))
        assert np.array_equal(chain.operators[0].cameras["cam"].thumbs[0], want)
    with pytest.raises(ConfigError, match="specialized_input"):
        build_chain([("cascade", {**params, "specialized_input": "thumbnail"}, None)])
