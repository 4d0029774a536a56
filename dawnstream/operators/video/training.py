"""Fit a camera's cascade from frames the reference model labelled: NoScope's training + optimizer step.

NoScope (Kang et al., VLDB'17, sections 4-6) trains the specialized models on the reference model's
labels and chooses the cascade's thresholds on *other* frames, so that the error targets hold on video
the model did not see. With a stream, the labelled frames are the camera's bootstrap: they are cut into
blocks of ``block`` consecutive frames (consecutive frames are near copies: a random split would leak),
and the blocks go in turn to training (two of every three) and to choosing the thresholds (the third).

:func:`ready` says when the frames hold enough of each class in both parts; :func:`fit_cascade` trains
the grid jointly (:func:`~dawnstream.models.specialized.train_grid`), exports every candidate to ONNX,
measures its cost per frame with onnxruntime here, lets the optimizer
(:func:`~dawnstream.operators.video.optimizer.choose`) pick its thresholds on the held-out blocks,
and keeps the candidate with the fewest reference calls, then the least compute (:func:`_rank`). The
difference threshold is capped first on *all* the bootstrap frames (:func:`~.optimizer.safe_delta`: the
skips alone may use half the error targets), since it does not depend on the model and the choosing
blocks alone are few; the chosen ``delta`` then gets its ``max_run`` on all of them too
(:func:`~.optimizer.longest_right_run`), and the plan the reference model's one-frame flips on all of
them (:func:`~.optimizer.flicker_rates`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from dawnstream.models.specialized import GRID, OnnxSpecialized, SpecConfig, to_onnx, train_grid
from dawnstream.operators.video.optimizer import Plan, choose, flicker_rates, longest_right_run, safe_delta


def split(n: int, block: int) -> np.ndarray:
    """``(n,)`` bool: True for frames of the threshold-choosing blocks (every third block of ``block`` frames)."""
    return (np.arange(n) // max(int(block), 1)) % 3 == 2


def ready(labels: np.ndarray, block: int, min_per_class: int) -> bool:
    """True when both the training and the choosing blocks hold ``min_per_class`` frames of each class."""
    y = np.asarray(labels, bool)
    held = split(len(y), block)
    return all(int(part.sum()) >= min_per_class and int((~part).sum()) >= min_per_class
               for part in (y[~held], y[held]))


@dataclass
class FittedCascade:
    """The chosen specialized model (ONNX bytes), its architecture, its thresholds and what was measured."""

    onnx: bytes
    config: SpecConfig
    plan: Plan
    costs_ms: tuple[float, float, float]
    report: dict[str, Any] = field(default_factory=dict)


def fit_cascade(thumbs: np.ndarray, diff: np.ndarray, labels: np.ndarray, *, block: int, diff_ms: float,
                grays: np.ndarray | None = None, diff_blocks: tuple[int, int] = (1, 1),
                reference_ms: float, fn_target: float, fp_target: float, configs: list[SpecConfig] | None = None,
                epochs: int = 15, seed: int = 0, confirm: bool = False) -> FittedCascade:
    """Train, measure and choose (module docstring).

    Args:
        thumbs: ``(n, 3, 50, 50)`` uint8 RGB thumbnails, in frame order.
        diff: ``(n,)`` the difference detector's score of each frame against the previous one (NaN: nothing
            to compare with); with ``grays`` it only gives the candidate thresholds.
        grays: ``(n, h, w)`` the difference detector's thumbnails: the thresholds are chosen for comparing
            with the anchor, the last frame a model decided (:func:`~.optimizer.anchor_skips`, ``diff_blocks``).
        labels: ``(n,)`` bool, the reference model's answers.
        block: frames per block of the temporal split.
        diff_ms, reference_ms: measured cost per frame of the difference detector and the reference model.
        fn_target, fp_target: the error targets the thresholds must meet on the held-out blocks.
        confirm: the cascade confirms label changes with the reference model (:func:`~.optimizer.simulate`).

    Raises:
        ValueError: too few frames of a class in a part (see :func:`ready`), or mismatched shapes.
    """
    X = np.asarray(thumbs, np.float32) / 255.0
    y = np.asarray(labels, bool)
    d = np.asarray(diff, float)
    held = split(len(y), block)
    if not ready(y, block, 1):
        raise ValueError("the bootstrap frames lack a class in the training or the choosing blocks")
    cap = None
    if grays is not None:  # the skip rule's own errors, on every bootstrap frame, take half the targets
        finite = d[~np.isnan(d)]
        candidates = np.quantile(finite, np.linspace(0, 1, 12)[:-1]) if len(finite) else np.array([0.0])
        cap = safe_delta(np.asarray(grays), y, candidates, fn_target / 2, fp_target / 2, diff_blocks)
    models, train_s = train_grid(X[~held], y[~held].astype(np.float32), configs or GRID, epochs=epochs, seed=seed)
    best: FittedCascade | None = None
    candidates = []
    for cfg, module in models.items():
        onnx = to_onnx(module)
        spec = OnnxSpecialized(onnx)
        t0 = time.perf_counter()
        p = np.concatenate([spec.predict(X[i:i + 64]) for i in range(0, len(X), 64)])
        spec_ms = (time.perf_counter() - t0) * 1000.0 / len(X)
        costs = (float(diff_ms), float(spec_ms), float(reference_ms))
        plan = choose(d[held], p[held], y[held], costs, fn_target, fp_target,
                      thumbs=None if grays is None else np.asarray(grays)[held], blocks=diff_blocks, max_delta=cap,
                      confirm=confirm)
        candidates.append({"model": cfg.name, "spec_ms": round(spec_ms, 3), **asdict(plan)})
        if best is None or _rank(plan, cfg) < _rank(best.plan, best.config):
            best = FittedCascade(onnx, cfg, plan, costs)
    assert best is not None
    if grays is not None and best.plan.delta > 0:  # runs of repeats as long as the bootstrap bore out, no longer
        best.plan = replace(best.plan, max_run=longest_right_run(np.asarray(grays), y, best.plan.delta, diff_blocks))
    fn_floor, fp_floor = flicker_rates(y)  # on every bootstrap frame, in order: what no thresholds can follow
    best.plan = replace(best.plan, fn_floor=round(fn_floor, 4), fp_floor=round(fp_floor, 4))
    best.report = {"train_seconds": round(train_s, 2), "max_delta": cap, "train_frames": int((~held).sum()),
                   "choose_frames": int(held.sum()), "candidates": candidates}
    return best


def _rank(plan: Plan, cfg: SpecConfig) -> tuple[float, float]:
    """Candidates rank by reference share, then by the specialized model's compute on the frames it sees
    (multiply-accumulates, not measured ms: two models with the same share once swapped places between runs
    of ``make demo-video`` on 0.060 vs 0.061 ms, and the labels with them); exact ties keep the grid's order."""
    return plan.reference_share, (1.0 - plan.skipped_share) * cfg.macs
