"""How close a reference model's answer is to flipping: the cascade's guard on the query's boundary.

A detector's boxes jitter from frame to frame: a person standing still moves a few pixels and their
score swings by tenths. Where a box sits near the query's decision boundary (its score near
``min_score``, its foot point near the region's edge), the reference model answers one way on one frame
and the other way on the next, on frames the difference detector calls identical. On vtest, 6 of the 7
held-out errors of the cascade were such frames: a repeated or predicted label cannot agree with a
reference model that flips on them. So the cascade measures the jitter on the bootstrap frames (every
one goes to the reference model there) and, after an answer that a typical jitter could flip
(*fragile*), lets the reference model decide the next frame too.

- :func:`jitter`: score and point changes of the boxes matched between two consecutive frames.
- :func:`margins`: the typical (upper-quartile) jitter, per kind, from those changes.
- :func:`bounds`: the fewest and most boxes that could satisfy the query within those margins; the
  answer is fragile when ``min_count`` lies between them.

>>> from dawnstream.models.detectors import Detection, RegionQuery
>>> q = RegionQuery(region=(0, 380, 560, 576))
>>> bounds([Detection(100, 300, 40, 82, 0.9)], q, 0.3, (0.1, 5.0), (576, 768))  # foot at y 382: 2 px in
(0, 1)
>>> bounds([Detection(100, 300, 40, 120, 0.9)], q, 0.3, (0.1, 5.0), (576, 768))  # foot at y 420
(1, 1)
"""

from __future__ import annotations

import numpy as np

from dawnstream.models.detectors import Detection, RegionQuery

MATCH = 0.5
"""Boxes of consecutive frames are the same object when their points are closer than this share of the
box height."""
QUANTILE = 0.75
"""The margins are this quantile of the measured frame-to-frame changes."""
SCORE_FLOOR = 0.5
"""The cascade's detector keeps boxes down to this share of ``min_score``: the fragile ones below it."""


def _point(b: Detection, query: RegionQuery) -> tuple[float, float]:
    return b.foot if query.point == "foot" else b.center


def jitter(prev: list[Detection], cur: list[Detection], query: RegionQuery,
           min_score: float) -> list[tuple[float, float]]:
    """``(|Δscore|, max(|Δx|, |Δy|) px)`` of each box of ``cur`` scoring at least ``min_score`` and its
    nearest box in ``prev`` (the frame before), when they are the same object (:data:`MATCH`)."""
    out = []
    for b in cur:
        if b.score < min_score:
            continue
        bx, by = _point(b, query)
        best: tuple[float, Detection] | None = None
        for a in prev:
            ax, ay = _point(a, query)
            d = max(abs(ax - bx), abs(ay - by))
            if d < MATCH * max(b.h, 1.0) and (best is None or d < best[0]):
                best = (d, a)
        if best is not None:
            out.append((abs(b.score - best[1].score), best[0]))
    return out


def margins(changes: list[tuple[float, float]]) -> tuple[float, float] | None:
    """``(score, pixels)``: the :data:`QUANTILE` of each kind of change; None without any."""
    if not changes:
        return None
    a = np.asarray(changes, dtype=np.float64)
    return float(np.quantile(a[:, 0], QUANTILE)), float(np.quantile(a[:, 1], QUANTILE))


def bounds(boxes: list[Detection], query: RegionQuery, min_score: float, margin: tuple[float, float],
           shape: tuple[int, int]) -> tuple[int, int]:
    """``(certain, possible)``: the boxes that satisfy the query with ``margin`` = ``(score, pixels)`` to
    spare, and those that would if each moved by that much towards it. The region's sides on the frame's
    border (``shape`` = height, width) have no margin: a detector clips its boxes to the frame, so a point
    there does not jitter across it."""
    s_m, p_m = margin
    h, w = shape
    certain = possible = 0
    for b in boxes:
        px, py = _point(b, query)
        if query.region is None:
            inner = outer = True
        else:
            x0, y0, x1, y1 = query.region
            m = [0.0 if edge_on_border else p_m for edge_on_border in (x0 <= 0, y0 <= 0, x1 >= w, y1 >= h)]
            inner = x0 + m[0] <= px <= x1 - m[2] and y0 + m[1] <= py <= y1 - m[3]
            outer = x0 - m[0] <= px <= x1 + m[2] and y0 - m[1] <= py <= y1 + m[3]
        certain += int(inner and b.score >= min_score + s_m)
        possible += int(outer and b.score >= min_score - s_m)
    return certain, possible


def fragile(boxes: list[Detection], query: RegionQuery, min_score: float, margin: tuple[float, float] | None,
            shape: tuple[int, int]) -> bool:
    """Whether a typical jitter could flip the answer ``count >= min_count`` (never without a margin)."""
    if margin is None:
        return False
    certain, possible = bounds(boxes, query, min_score, margin, shape)
    return certain < query.min_count <= possible
