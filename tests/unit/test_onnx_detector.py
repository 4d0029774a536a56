"""An ONNX detector as the reference model: a model file in either output layout, its boxes scaled to the
frame, filtered by class and score; the detect stage runs it like any other detector."""

from __future__ import annotations

import numpy as np
import pytest

from dawnstream.models.detectors import OnnxDetector, build_detector


def export(path, layout: str) -> None:
    """A stand-in detector (fixed boxes, the first one's score = the image's mean intensity) as ONNX."""
    import torch

    class Fixed(torch.nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            s = x.mean().reshape(1)
            one = torch.ones(1)
            if layout == "detection_out":
                a = torch.cat([0 * one, one, s, torch.tensor([0.1, 0.5, 0.2, 0.9])])
                b = torch.cat([0 * one, 2 * one, 0.9 * one, torch.tensor([0.5, 0.1, 0.6, 0.3])])
                return torch.stack([a, b]).reshape(1, 1, 2, 7)
            boxes = torch.tensor([[0.1, 0.5, 0.2, 0.9], [0.5, 0.1, 0.6, 0.3]]) + 0 * s
            return boxes, torch.cat([s, 0.9 * one]), torch.tensor([1.0, 2.0]) + 0 * s

    names = ["detection_out"] if layout == "detection_out" else ["boxes", "scores", "classes"]
    torch.onnx.export(Fixed(), (torch.zeros(1, 3, 64, 64),), str(path), input_names=["image"], output_names=names,
                      opset_version=17, dynamo=False)


@pytest.mark.parametrize("layout", ["detection_out", "boxes_scores"])
def test_boxes_come_back_in_frame_pixels_filtered_by_class_and_score(tmp_path, layout) -> None:
    path = tmp_path / "det.onnx"
    export(path, layout)
    frame = np.full((576, 768, 3), 200, np.uint8)  # mean intensity 200/255 = 0.78
    det = OnnxDetector(str(path), input_size=(64, 64), layout=layout, min_score=0.5)
    boxes = sorted(det.detect(frame), key=lambda b: b.x)
    assert len(boxes) == 2
    assert boxes[0].x == pytest.approx(76.8) and boxes[0].y == pytest.approx(288.0)
    assert boxes[0].w == pytest.approx(76.8) and boxes[0].h == pytest.approx(230.4)
    assert boxes[0].score == pytest.approx(200 / 255, abs=1e-5)
    only_1 = OnnxDetector(str(path), input_size=(64, 64), layout=layout, classes=[1], min_score=0.5)
    assert len(only_1.detect(frame)) == 1
    dark = np.full((576, 768, 3), 50, np.uint8)  # the first box's score falls under min_score
    assert len(det.detect(dark)) == 1


def test_the_detect_stage_runs_an_onnx_detector_from_its_topology_spec(tmp_path) -> None:
    import pyarrow as pa

    from dawnstream.operators.registry import build_chain
    from dawnstream.video_source import jpeg

    path = tmp_path / "det.onnx"
    export(path, "detection_out")
    chain = build_chain([("detect", {"detector": {"kind": "onnx", "path": str(path), "input_size": [64, 64]},
                                     "query": {"region": [0, 380, 560, 576]}}, None)])
    frame = np.full((576, 768, 3), 200, np.uint8)
    out = chain.process(pa.record_batch({"image": pa.array([jpeg(frame)], pa.binary())}))[0].to_pylist()[0]
    assert out["count"] == 1 and out["label"] is True and out["decided_by"] == "onnx"  # foot (115, 518): on the lawn


def test_a_missing_file_or_a_bad_layout_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="no such ONNX file"):
        build_detector({"kind": "onnx", "path": str(tmp_path / "absent.onnx")})
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError):
        build_detector({"kind": "onnx", "path": str(tmp_path / "junk.onnx")})
    with pytest.raises(ValueError, match="layout"):
        build_detector({"kind": "onnx", "path": str(tmp_path / "junk.onnx"), "layout": "yolo"})


def test_a_person_cut_off_by_the_bottom_edge_stands_in_a_region_that_reaches_it() -> None:
    from dawnstream.models.detectors import Detection, RegionQuery, _boxes

    clipped = _boxes(np.array([[0.1, 0.8, 0.15, 1.2]]), np.array([0.9]), 768, 576)[0]  # the box runs off the frame
    assert clipped.y + clipped.h == pytest.approx(576.0)
    lawn = RegionQuery(region=(0, 380, 560, 576))
    assert lawn.count([clipped]) == 1 and lawn.count([Detection(600, 500, 40, 76, 1.0)]) == 0
