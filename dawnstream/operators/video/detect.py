"""The ``detect`` stage: run the reference model on frames and answer the query (NoScope's expensive path).

For each frame (the ``frames`` codec's rows), the detector (:mod:`dawnstream.models.detectors`; any
kind, configured in the topology) finds boxes and the :class:`~dawnstream.models.detectors.RegionQuery`
counts those in the region. Output columns added: ``label`` (bool: count >= min_count), ``count``
(int64), ``boxes`` (list of ``[x, y, w, h, score]``), ``decided_by`` (the detector's name) and
``reference_ms`` (its time on the frame). It is stateless; its cost is why the rest of the cascade exists.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from dawnstream.errors import ConfigError
from dawnstream.models.detectors import Detector, RegionQuery, build_detector
from dawnstream.operators.base import Operator


def decode(image: bytes, scale: int = 1) -> np.ndarray:
    """A JPEG/PNG as a BGR uint8 array, at full size or 1/``scale`` (2, 4 or 8: libjpeg's DCT scaling,
    several times faster than decoding full size and resizing).

    Raises:
        ValueError: not a decodable image.
    """
    import cv2

    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[scale]
    frame = cv2.imdecode(np.frombuffer(image, np.uint8), flag)
    if frame is None:
        raise ValueError("not a decodable JPEG/PNG image")
    return frame


def reference_query(detector: dict[str, Any], query: dict[str, Any] | None,
                    base: str) -> tuple[Detector, RegionQuery]:
    """The reference model and the query from a stage's ``detector`` and ``query`` options.

    Raises:
        ConfigError: an unknown detector or a bad query, naming ``<base>.detector`` / ``<base>.query``.
    """
    try:
        det = build_detector(detector)
    except ValueError as e:
        raise ConfigError(f"{base}.detector", str(e)) from None
    try:
        q = dict(query or {})
        region = q.pop("region", None)
        return det, RegionQuery(region=tuple(float(v) for v in region) if region is not None else None, **q)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{base}.query", str(e)) from None


class Detect(Operator):
    """Labels frames with the reference model's answer to the query (module docstring).

    Args:
        detector: ``{kind: ssdlite | hog | onnx, ...options}`` (:mod:`dawnstream.models.detectors`).
        query: ``{region: [x0, y0, x1, y1] (pixels), point: foot|center, min_count: 1}``; default: any box.

    Raises:
        ConfigError: an unknown detector or a bad query, naming the key.
    """

    kind = "detect"

    def __init__(self, detector: dict[str, Any], query: dict[str, Any] | None = None, name: str | None = None,
                 _path: str = "stages") -> None:
        super().__init__(name)
        base = _path.rsplit(".", 1)[0] if "." in _path else _path
        self.detector, self.query = reference_query(detector, query, base)

    def required_columns(self) -> set[str]:
        return {"image"}

    def produced_columns(self) -> set[str]:
        return {"label", "count", "boxes", "decided_by", "reference_ms"}

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        images = batch.column("image")
        if not (pa.types.is_binary(images.type) or pa.types.is_large_binary(images.type)):
            raise TypeError(f"column 'image' is {images.type}: expected JPEG/PNG bytes (the frames codec)")
        counts, boxes, ms = [], [], []
        for i in range(batch.num_rows):
            raw = images[i].as_py()
            if raw is None:
                raise ValueError(f"row {i} has no image")
            frame = decode(raw)
            t0 = time.perf_counter()
            found = self.detector.detect(frame)
            ms.append((time.perf_counter() - t0) * 1000.0)
            counts.append(self.query.count(found))
            boxes.append([[b.x, b.y, b.w, b.h, b.score] for b in found])
        n = batch.num_rows
        out = batch
        for name, arr in (("label", pa.array([c >= self.query.min_count for c in counts], pa.bool_())),
                          ("count", pa.array(counts, pa.int64())),
                          ("boxes", pa.array(boxes, pa.list_(pa.list_(pa.float64())))),
                          ("decided_by", pa.array([self.detector.name] * n, pa.string())),
                          ("reference_ms", pa.array(ms, pa.float64()))):
            out = out.append_column(name, arr)
        return [out]
