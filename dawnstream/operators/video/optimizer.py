"""NoScope's cost-based optimizer: pick the cascade's thresholds from the user's error targets alone.

The cascade (Kang et al., VLDB'17, sections 3 and 6), per frame in order:

1. **difference detector**: score below ``delta`` -> the frame repeats the last decided label. The score
   is either given per frame (against frame t-1) or, with ``thumbs``, measured against the *anchor*:
   the last frame a model decided. Against t-1 a person walking slowly in never makes a big step, and
   a run of skipped frames can drift far from the frame whose label it repeats; against the anchor
   the repeated label is always that of a frame within ``delta`` of this one;
2. **specialized model**: P(true) below ``c_low`` -> false, above ``c_high`` -> true;
3. **reference model** otherwise, and (with ``confirm``) where the specialized model's answer would
   change the label: its errors gather where events start and end, and those frames are few. The
   confirmations are a safety net: :func:`choose` picks thresholds that meet the targets without them.

Given, on held-out frames, each frame's difference score, the specialized model's probability and the
reference label, plus the measured per-frame costs (ms) of the three stages, :func:`choose` searches
``delta`` and ``(c_low, c_high)`` over quantiles of the observed scores and returns the plan that sends
the fewest frames to the reference model (then: least expected time) while the false-negative and
false-positive rates against the reference stay within the targets. Because the least reference share
is chosen first, tightening a target can only shrink the feasible set, so it never lowers the reference
share. :func:`simulate` runs a plan over frames: the same rule the streaming cascade applies.

The thresholds are chosen on the point rates: with 1% targets, a 95% upper confidence bound needs about 300
frames of each class without an error, and a bootstrap's choosing blocks hold tens. A plan carries the
counts behind its rates, so :meth:`Plan.bounds` says what it can promise, and the stage keeps it on
probation (more checks by the reference model) until its live checks add the evidence. A run of repeated
labels is bounded by what the bootstrap bore out (:func:`longest_right_run`, the plan's ``max_run``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dawnstream.operators.video.bounds import upper_bound


@dataclass(frozen=True)
class Plan:
    """Thresholds of one cascade and what they gave on the frames they were chosen on: shares and rates, and
    the counts behind the rates (``positives`` true frames of which ``fn_errors`` labelled false; likewise
    ``negatives``, ``fp_errors``), from which :meth:`bounds` gives what the plan can promise."""

    delta: float
    c_low: float
    c_high: float
    reference_share: float = 1.0
    skipped_share: float = 0.0
    fn_rate: float = 0.0
    fp_rate: float = 0.0
    ms_per_frame: float = 0.0
    positives: int = 0
    negatives: int = 0
    fn_errors: int = 0
    fp_errors: int = 0
    max_run: int = 0
    """The most frames in a row the difference detector may repeat a label before a model decides again
    (0: no limit): the longest run of repeats that stayed right on the bootstrap (:func:`longest_right_run`).
    A label copied longer than the evidence ever showed a copy to hold is a guess."""
    fn_floor: float = 0.0
    fp_floor: float = 0.0
    """The reference model's one-frame flips on the bootstrap (:func:`flicker_rates`): the share of its true
    (false) frames whose answer differs from both neighbours'. A cheaper stage sees such a frame as its
    neighbours and answers as they do, so about that share of the frames it decides is wrong whatever
    the thresholds: only the reference model on the frame itself gets it right (:meth:`check_share`)."""

    def bounds(self, alpha: float = 0.05, live: tuple[int, int, int, int] = (0, 0, 0, 0)) -> tuple[float, float]:
        """One-sided Clopper-Pearson upper bounds at ``1 - alpha`` (:mod:`.bounds`) of the FN and FP rates:
        from the choosing frames' counts, plus ``live`` = (true frames checked, of them wrong, false frames
        checked, of them wrong). 1.0 for a class without a frame: nothing is promised about it.

        >>> [round(b, 4) for b in Plan(0.0, 0.2, 0.8, positives=40, negatives=300).bounds()]
        [0.0722, 0.0099]
        """
        n_t, k_t, n_f, k_f = live
        pos, neg = self.positives + n_t, self.negatives + n_f
        return (upper_bound(self.fn_errors + k_t, pos, alpha) if pos else 1.0,
                upper_bound(self.fp_errors + k_f, neg, alpha) if neg else 1.0)


    def check_share(self, fn_target: float, fp_target: float) -> float:
        """The share of the cheaper stages' frames the reference model must check (its answer is then the label)
        so that the reference's one-frame flips it alone can see (``fn_floor``, ``fp_floor``) cost at most the
        targets: ``max(0, 1 - target / floor)`` over both classes; 0 when the flips are within the targets.

        >>> Plan(0.0, 0.2, 0.8, fn_floor=0.009, fp_floor=0.05).check_share(0.01, 0.01)
        0.8
        """
        need = [1.0 - target / floor if target > 0 else 1.0
                for floor, target in ((self.fn_floor, fn_target), (self.fp_floor, fp_target)) if floor > target]
        return round(max(need, default=0.0), 4)


def flicker_rates(labels: np.ndarray) -> tuple[float, float]:
    """The reference model's one-frame flips in ``labels`` (``(n,)`` bool, consecutive frames in order): the
    share of the true frames that sit alone between false ones, and of the false frames alone between true
    ones (the first and last frame have one neighbour and never count). Measured on vtest's bootstrap,
    SSDLite's lawn answers flip on 0.9% / 0.7% of the frames, a right-hand region's on 1.2% / 6.7%: a box
    centre crossing the region's edge for one frame, or a person missed for one frame.

    >>> flicker_rates(np.array([0, 0, 1, 0, 0, 1, 1, 0, 1, 1], bool))
    (0.2, 0.2)
    """
    y = np.asarray(labels, bool)
    if len(y) < 3:
        return 0.0, 0.0
    alone = np.zeros(len(y), bool)
    alone[1:-1] = (y[1:-1] != y[:-2]) & (y[1:-1] != y[2:])
    pos, neg = int(y.sum()), int((~y).sum())
    return (float((alone & y).sum() / pos) if pos else 0.0, float((alone & ~y).sum() / neg) if neg else 0.0)


def anchor_skips(thumbs: np.ndarray, delta: float, blocks: tuple[int, int] = (1, 1)) -> np.ndarray:
    """``(n,)`` bool: the frames the difference detector skips when each frame is compared with the
    anchor (the last frame not skipped; frame 0 is never skipped). ``thumbs``: ``(n, h, w)`` grayscale."""
    from dawnstream.operators.video.difference import frame_mse

    skip = np.zeros(len(thumbs), bool)
    anchor = 0
    for i in range(1, len(thumbs)):
        if frame_mse(thumbs[i].astype(np.float32), thumbs[anchor].astype(np.float32), blocks) < delta:
            skip[i] = True
        else:
            anchor = i
    return skip


def longest_right_run(thumbs: np.ndarray, truth: np.ndarray, delta: float, blocks: tuple[int, int] = (1, 1)) -> int:
    """The longest run of frames (in order) the difference detector skips at ``delta`` while every repeated
    label still equals ``truth`` (``(n,)`` bool); a run is counted up to its first wrong repeat. 1 when
    nothing is skipped: a plan then repeats no label twice in a row on evidence it does not have."""
    truth = np.asarray(truth, bool)
    skip = anchor_skips(thumbs, delta, blocks)
    best = run = 0
    right, anchor = True, 0
    for i in range(len(truth)):
        if not skip[i]:
            anchor, run, right = i, 0, True
            continue
        right = right and truth[i] == truth[anchor]
        if right:
            run += 1
            best = max(best, run)
    return max(best, 1)


def safe_delta(thumbs: np.ndarray, truth: np.ndarray, candidates: np.ndarray, fn_target: float, fp_target: float,
               blocks: tuple[int, int] = (1, 1)) -> float:
    """The largest candidate ``delta`` whose skips alone stay within the targets on ``thumbs`` (in order):
    each skipped frame gets its anchor's true label (as if every decided frame were right). The
    difference detector does not depend on the specialized model, so this can use every labelled
    frame, training blocks included - many more than the threshold-choosing blocks hold."""
    truth = np.asarray(truth, bool)
    best = 0.0
    for delta in sorted(float(d) for d in candidates):
        skip = anchor_skips(thumbs, delta, blocks)
        labels, anchor = truth.copy(), 0
        for i in range(len(truth)):
            if skip[i]:
                labels[i] = truth[anchor]
            else:
                anchor = i
        fn, fp = rates(labels, truth)
        if fn <= fn_target and fp <= fp_target:
            best = delta
    return best


def simulate(diff: np.ndarray, prob: np.ndarray, truth: np.ndarray, delta: float, c_low: float,
             c_high: float, skip: np.ndarray | None = None, confirm: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labels the cascade gives ``(n,)`` bool, and which stage decided each frame ``(n,)`` int8
    (0 skipped by the difference detector, 1 specialized model, 2 reference). ``truth`` is what the
    reference model would say (used only where the reference is called). A NaN difference (a camera's
    first frame) is never skipped. ``skip`` (``(n,)`` bool, e.g. :func:`anchor_skips`) replaces the
    rule ``diff < delta``. ``confirm``: a specialized answer that differs from the previous frame's
    label goes to the reference model instead (the cascade's ``confirm_changes``)."""
    n = len(diff)
    labels = np.zeros(n, bool)
    stage = np.zeros(n, np.int8)
    if skip is None:
        skip = np.array([i > 0 and not np.isnan(diff[i]) and diff[i] < delta for i in range(n)], bool)
    last = False
    for i in range(n):
        if skip[i]:
            labels[i], stage[i] = last, 0
        elif prob[i] < c_low and not (confirm and last):
            labels[i], stage[i] = False, 1
        elif prob[i] > c_high and not (confirm and not last):
            labels[i], stage[i] = True, 1
        else:
            labels[i], stage[i] = bool(truth[i]), 2
        last = labels[i]
    return labels, stage


def rates(labels: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """False-negative rate (of the true frames) and false-positive rate (of the false ones)."""
    t = truth.astype(bool)
    fn = float((~labels & t).sum() / max(t.sum(), 1))
    fp = float((labels & ~t).sum() / max((~t).sum(), 1))
    return fn, fp


def choose(diff: np.ndarray, prob: np.ndarray, truth: np.ndarray, cost_ms: tuple[float, float, float],
           fn_target: float = 0.01, fp_target: float = 0.01, grid: int = 12, thumbs: np.ndarray | None = None,
           blocks: tuple[int, int] = (1, 1), max_delta: float | None = None, confirm: bool = False) -> Plan:
    """The cheapest plan within the targets (module docstring).

    Args:
        diff, prob, truth: per frame, in order, ``(n,)``: difference score, specialized P(true), reference label.
        cost_ms: (difference detector, specialized model, reference model) ms per frame.
        fn_target, fp_target: the largest false-negative and false-positive rates allowed.
        grid: candidate values per threshold (quantiles of the observed scores).
        thumbs: ``(n, h, w)`` grayscale thumbnails: compare with the anchor (:func:`anchor_skips`, with
            ``blocks``) instead of using ``diff``, which then only gives the candidate thresholds.
        max_delta: no larger difference threshold is tried (e.g. :func:`safe_delta` on more frames).
        confirm: the cascade has the reference model confirm label changes (:func:`simulate`). The
            thresholds are chosen without crediting the confirmations (credited, they let a few choosing
            frames justify a band of zero width, which the next frames need not bear out: on vtest's
            demo split it halved the reference calls and lost 8 points of agreement); the plan's shares
            and rates are then those of the chosen thresholds with them.

    Returns:
        The plan; when nothing but the reference meets the targets, ``delta = 0`` and ``c_low = c_high =``
        the band that sends everything to the reference (``reference_share = 1``).

    Raises:
        ValueError: arrays of different lengths, or no frames.
    """
    diff, prob, truth = np.asarray(diff, float), np.asarray(prob, float), np.asarray(truth, bool)
    if not (len(diff) == len(prob) == len(truth)) or len(diff) == 0:
        raise ValueError("diff, prob and truth must be equal-length, non-empty arrays")
    qs = np.linspace(0, 1, grid)
    finite = diff[~np.isnan(diff)]
    deltas = np.unique(np.concatenate([[0.0], np.quantile(finite, qs[:-1]) if len(finite) else []]))
    if max_delta is not None:
        deltas = np.unique(np.concatenate([deltas[deltas <= max_delta], [max_delta]]))
    cuts = np.unique(np.concatenate([[-1.0, 2.0], np.quantile(prob, qs)]))
    best = Plan(0.0, -1.0, 2.0, 1.0, 0.0, 0.0, 0.0, sum(cost_ms), int(truth.sum()), int((~truth).sum()))
    best_key = (1.0, best.ms_per_frame)
    for delta in deltas:
        skip = anchor_skips(thumbs, float(delta), blocks) if thumbs is not None else None
        for lo_i, c_low in enumerate(cuts):
            for c_high in cuts[lo_i:]:
                labels, stage = simulate(diff, prob, truth, float(delta), float(c_low), float(c_high), skip)
                fn, fp = rates(labels, truth)
                if fn > fn_target or fp > fp_target:
                    continue
                plan = _plan(float(delta), float(c_low), float(c_high), stage, labels, truth, cost_ms)
                key = (plan.reference_share, plan.ms_per_frame)
                if key < best_key:
                    best_key, best = key, plan
    if confirm and best.reference_share < 1.0:  # what the chosen thresholds give with the confirmations
        skip = anchor_skips(thumbs, best.delta, blocks) if thumbs is not None else None
        labels, stage = simulate(diff, prob, truth, best.delta, best.c_low, best.c_high, skip, confirm=True)
        best = _plan(best.delta, best.c_low, best.c_high, stage, labels, truth, cost_ms)
    return best


def _plan(delta: float, c_low: float, c_high: float, stage: np.ndarray, labels: np.ndarray, truth: np.ndarray,
          cost_ms: tuple[float, float, float]) -> Plan:
    """The plan of these thresholds, given which stage decided each frame and the labels it gave
    (:func:`simulate`)."""
    t_diff, t_spec, t_ref = cost_ms
    ref = float((stage == 2).mean())
    fn, fp = rates(labels, truth)
    return Plan(delta, c_low, c_high, ref, float((stage == 0).mean()), fn, fp,
                t_diff + float((stage > 0).mean()) * t_spec + ref * t_ref, int(truth.sum()), int((~truth).sum()),
                int((~labels & truth).sum()), int((labels & ~truth).sum()))
