"""Boxes on video frames, in one unit everywhere: pixels of the full-size frame (``query.region``, the
cascade's and the ``difference`` stage's ``roi``). A frame of another size than the box expects is data,
not an error: crops are clipped to the frame and keep at least one pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dawnstream.errors import ConfigError


def pixel_box(box: Any, path: str) -> tuple[int, int, int, int]:
    """``[x0, y0, x1, y1]`` in pixels of the full-size frame, validated.

    Raises:
        ConfigError: at ``path``: not four numbers, not x0 < x1 and y0 < y1, negative, or fractions of the
            frame (all within 0..1: a box in fractions of another unit would be a 1-pixel crop).
    """
    try:
        v = [float(x) for x in box]
    except (TypeError, ValueError):
        v = []
    if len(v) != 4 or not (0 <= v[0] < v[2] and 0 <= v[1] < v[3]):
        raise ConfigError(path, f"expected [x0, y0, x1, y1] in pixels with 0 <= x0 < x1 and 0 <= y0 < y1, got {box!r}")
    if max(v) <= 1.0:
        raise ConfigError(path, f"{box!r} looks like fractions of the frame; here the box is in pixels of the "
                                "full-size frame, like query.region (e.g. [0, 280, 600, 576])")
    return int(v[0]), int(v[1]), int(np.ceil(v[2])), int(np.ceil(v[3]))


def clip_crop(frame: np.ndarray, box: tuple[int, int, int, int], scale: int = 1) -> np.ndarray:
    """The part of ``frame`` (decoded at 1/``scale``) inside ``box`` (full-size pixels), clipped to the frame:
    at least one pixel whatever the frame's size (a frame smaller than the box expects is data, not a crash)."""
    h, w = frame.shape[:2]
    x0, y0 = min(box[0] // scale, w - 1), min(box[1] // scale, h - 1)
    x1 = min(max(-(-box[2] // scale), x0 + 1), w)  # ceil, then at least one pixel, within the frame
    y1 = min(max(-(-box[3] // scale), y0 + 1), h)
    return frame[y0:y1, x0:x1]
