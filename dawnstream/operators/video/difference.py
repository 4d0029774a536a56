"""The difference detector: skip frames that did not change (NoScope, Kang et al., VLDB'17, section 5).

Each frame is reduced to a small grayscale thumbnail (``size``, float32, 0-255) and compared with
either the previous frame of its camera (``against: previous``, frame t−``lag``) or a reference
image of the empty scene (``against: reference``: by default the per-pixel median of the camera's
first ``reference_frames`` frames). The score is the mean squared error over the thumbnail, or, with
``blocks: [rows, cols]``, the largest MSE of any block (a person entering one corner then counts as
much as a change over the whole frame); ``roi: [x0, y0, x1, y1]`` (pixels of the full-size frame, the
unit of every box: :mod:`~dawnstream.operators.video.geometry`) restricts it to a region of interest.
A frame whose score is below ``threshold`` is labelled "unchanged": the cascade reuses the last decided
label for it instead of running any model.

:func:`thumbnail` and :func:`frame_mse` are the pure functions; :class:`DifferenceDetector` is the
stage over frame batches (the ``frames`` codec's rows), with per-camera state that snapshots.
"""

from __future__ import annotations

import base64
import io
from collections import deque
from typing import Any

import numpy as np
import pyarrow as pa

from dawnstream.errors import ConfigError
from dawnstream.operators.base import Operator
from dawnstream.operators.video.geometry import clip_crop, pixel_box

AGAINST = ("previous", "reference")


def thumbnail(image: bytes | np.ndarray, size: tuple[int, int] = (64, 48),
              box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A grayscale ``(height, width)`` float32 thumbnail (``size`` = (width, height)) of a JPEG/PNG
    image (bytes) or a BGR/gray uint8 array, by area averaging (OpenCV); of the part inside ``box``
    (pixels of the full-size frame, clipped to the frame) when given.

    Raises:
        ValueError: the bytes are not a decodable image.
    """
    import cv2

    if isinstance(image, (bytes, bytearray, memoryview)):
        buf = np.frombuffer(image, np.uint8)
        gray = cv2.imdecode(buf, cv2.IMREAD_REDUCED_GRAYSCALE_4)
        if gray is None:
            raise ValueError("not a decodable JPEG/PNG image")
        scale = 4  # decoded at a quarter of the frame's size
    else:
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        scale = 1
    if box is not None:
        gray = clip_crop(gray, box, scale)
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32)


def frame_mse(a: np.ndarray, b: np.ndarray, blocks: tuple[int, int] = (1, 1),
              roi: tuple[float, float, float, float] | None = None) -> float:
    """Mean squared difference of two equal-shape thumbnails: over the ``roi`` (fractions x0, y0, x1,
    y1 of width and height), split into ``blocks`` (rows, cols) of near-equal size, the largest block's.

    Raises:
        ValueError: shapes differ, or the roi / blocks leave an empty block.
    """
    if a.shape != b.shape:
        raise ValueError(f"thumbnails of different shapes {a.shape} and {b.shape}")
    h, w = a.shape
    if roi is not None:
        x0, y0, x1, y1 = (int(round(f * n)) for f, n in zip(roi, (w, h, w, h), strict=True))
        a, b = a[y0:y1, x0:x1], b[y0:y1, x0:x1]
        h, w = a.shape
    rows, cols = blocks
    if h < rows or w < cols or h == 0 or w == 0:
        raise ValueError(f"a {h}x{w} region cannot hold {rows}x{cols} blocks")
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    ys = np.linspace(0, h, rows + 1).round().astype(int)
    xs = np.linspace(0, w, cols + 1).round().astype(int)
    best = 0.0
    for r in range(rows):
        for c in range(cols):
            block = d[ys[r]:ys[r + 1], xs[c]:xs[c + 1]]
            best = max(best, float(block.mean()))
    return best


class DifferenceDetector(Operator):
    """Scores each frame against its camera's previous frame or reference image (module docstring).

    Args:
        threshold: MSE (0-255 grayscale squared) below which a frame is ``changed = false``.
        against: ``previous`` or ``reference``.
        lag: with ``previous``, compare frame t with frame t−lag of the same camera.
        reference_frames: with ``reference``, how many first frames of a camera make its empty-scene
            image (their per-pixel median); their own scores are measured against the median so far.
        size: thumbnail ``[width, height]``.
        blocks: ``[rows, cols]``: the score is the largest block's MSE.
        roi: ``[x0, y0, x1, y1]`` in pixels of the full-size frame, like the cascade's ``roi`` and
            ``query.region``; the thumbnail is made of that part of each frame (clipped to the frame).

    Output: the input rows plus ``diff_mse`` (float64; NaN for a camera's first frame) and ``changed``
    (bool; true for a camera's first frame).

    Raises:
        ConfigError: bad parameters, naming the key.
    """

    kind = "difference"
    stateful = True

    def __init__(self, threshold: float, against: str = "previous", lag: int = 1, reference_frames: int = 20,
                 size: list[int] | None = None, blocks: list[int] | None = None, roi: list[float] | None = None,
                 name: str | None = None, _path: str = "stages") -> None:
        super().__init__(name)
        base = _path.rsplit(".", 1)[0] if "." in _path else _path
        if against not in AGAINST:
            raise ConfigError(f"{base}.against", f"expected one of {', '.join(AGAINST)}, got {against!r}")
        if not float(threshold) >= 0:
            raise ConfigError(f"{base}.threshold", f"expected an MSE >= 0, got {threshold!r}")
        if int(lag) < 1 or int(reference_frames) < 1:
            raise ConfigError(f"{base}.lag", "lag and reference_frames must be at least 1")
        sz, bl = list(size or (64, 48)), list(blocks or (1, 1))
        if len(sz) != 2 or len(bl) != 2 or min(*sz, *bl) < 1:
            raise ConfigError(f"{base}.size", "size [width, height] and blocks [rows, cols] are two positive integers")
        self.size: tuple[int, int] = (int(sz[0]), int(sz[1]))
        self.blocks: tuple[int, int] = (int(bl[0]), int(bl[1]))
        self.roi = None if roi is None else pixel_box(roi, f"{base}.roi")
        self.threshold, self.against = float(threshold), against
        self.lag, self.reference_frames = int(lag), int(reference_frames)
        self.history: dict[str, deque[np.ndarray]] = {}  # camera -> last `lag` thumbnails, or first frames
        self.reference: dict[str, np.ndarray] = {}  # camera -> empty-scene image, once made

    def required_columns(self) -> set[str]:
        return {"camera_id", "image"}

    def produced_columns(self) -> set[str]:
        return {"diff_mse", "changed"}

    def score(self, camera: str, thumb: np.ndarray) -> float:
        """The frame's score against its camera's state, then the state moves on (NaN: nothing to compare)."""
        hist = self.history.setdefault(camera, deque())
        if self.against == "previous":
            s = frame_mse(thumb, hist[0], self.blocks) if len(hist) == self.lag else float("nan")
            hist.append(thumb)
            if len(hist) > self.lag:
                hist.popleft()
            return s
        ref = self.reference.get(camera)
        if ref is None:
            hist.append(thumb)
            ref = np.median(np.stack(hist), axis=0).astype(np.float32)
            if len(hist) >= self.reference_frames:
                self.reference[camera] = ref
                hist.clear()
            return float("nan") if len(hist) == 1 else frame_mse(thumb, ref, self.blocks)
        return frame_mse(thumb, ref, self.blocks)

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        cams = batch.column("camera_id").to_pylist()
        images = batch.column("image")
        if not (pa.types.is_binary(images.type) or pa.types.is_large_binary(images.type)):
            raise TypeError(f"column 'image' is {images.type}: expected JPEG/PNG bytes (the frames codec)")
        scores = np.empty(batch.num_rows)
        for i in range(batch.num_rows):
            img = images[i].as_py()
            if img is None:
                raise ValueError(f"row {i} of camera {cams[i]!r} has no image")
            scores[i] = self.score(str(cams[i]), thumbnail(img, self.size, self.roi))
        changed = np.isnan(scores) | (scores >= self.threshold)
        out = batch.append_column("diff_mse", pa.array(scores, pa.float64(), from_pandas=False))
        return [out.append_column("changed", pa.array(changed, pa.bool_()))]

    # -- state ---------------------------------------------------------------------------------
    def _state(self) -> Any:
        arrays: dict[str, np.ndarray] = {}
        counts = {}
        for cam, hist in self.history.items():
            counts[cam] = len(hist)
            for j, t in enumerate(hist):
                arrays[f"h/{cam}/{j}"] = t
        for cam, ref in self.reference.items():
            arrays[f"r/{cam}"] = ref
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        blob = base64.b64encode(buf.getvalue()).decode()
        return {"history": counts, "references": sorted(self.reference), "npz": blob}

    def _load_state(self, state: Any) -> None:
        if not state:
            return
        with np.load(io.BytesIO(base64.b64decode(state["npz"])), allow_pickle=False) as z:
            self.history = {cam: deque(z[f"h/{cam}/{j}"] for j in range(n)) for cam, n in state["history"].items()}
            self.reference = {cam: z[f"r/{cam}"] for cam in state["references"]}
