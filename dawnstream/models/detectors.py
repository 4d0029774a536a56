"""Reference models for video queries: object detectors behind one small interface, and the query over their boxes.

NoScope (Kang et al., VLDB'17) treats the expensive detector as a black box - the *reference model* -
and a query as that model plus a predicate over its detections. Nothing in the cascade depends on
which detector it is:

- :class:`HogPeopleDetector`: OpenCV's HOG people detector (Dalal & Triggs, CVPR'05;
  ``cv2.HOGDescriptor_getDefaultPeopleDetector``), no model file needed; 150-370 ms per 768x576 frame
  on one core.

:class:`RegionQuery` is the predicate: count the boxes whose foot point (bottom centre) or centre lies
in a region, and label the frame positive when the count reaches ``min_count``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


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
    """

    name = "hog"

    def __init__(self, win_stride: int = 8, scale: float = 1.05, min_score: float = 0.3) -> None:
        import cv2

        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), np.float32))
        self.win_stride, self.scale, self.min_score = int(win_stride), float(scale), float(min_score)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        rects, weights = self.hog.detectMultiScale(frame, winStride=(self.win_stride, self.win_stride),
                                                   scale=self.scale)
        out = []
        for (x, y, w, h), s in zip(rects, np.ravel(weights) if len(rects) else [], strict=True):
            if float(s) >= self.min_score:
                out.append(Detection(float(x), float(y), float(w), float(h), float(s)))
        return out


DETECTORS = {"hog": HogPeopleDetector}


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
    (pixels; ``None``: anywhere); the frame is positive when ``count >= min_count``.

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
        return sum(1 for px, py in pts if x0 <= px < x1 and y0 <= py < y1)

    def label(self, boxes: list[Detection]) -> bool:
        return self.count(boxes) >= self.min_count
