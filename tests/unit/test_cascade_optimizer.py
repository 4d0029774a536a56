"""The cost-based optimizer on a synthetic stream with known labels: targets met on held-out frames, and a
tighter target never lowers the reference share."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.operators.video.optimizer import choose, rates, simulate

COST = (0.5, 2.0, 50.0)  # ms: difference detector, specialized model, reference model


def stream(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of positive and negative frames; the difference score is low inside a run; a specialized model that
    is right and sure on most frames, unsure on some."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(n, bool)
    i = 0
    while i < n:
        run = int(rng.integers(20, 120))
        truth[i:i + run] = rng.random() < 0.3
        i += run
    change = np.r_[True, truth[1:] != truth[:-1]]
    diff = np.where(change, rng.uniform(50, 100, n), rng.gamma(2.0, 5.0, n))
    diff[0] = np.nan
    sure = rng.random(n) < 0.85
    prob = np.where(truth, np.where(sure, rng.uniform(0.8, 1.0, n), rng.uniform(0.2, 0.8, n)),
                    np.where(sure, rng.uniform(0.0, 0.2, n), rng.uniform(0.2, 0.8, n)))
    return diff, prob, truth


def test_the_chosen_plan_meets_the_targets_on_held_out_frames_and_saves_most_reference_calls() -> None:
    plan = choose(*stream(1), COST, fn_target=0.02, fp_target=0.01)
    assert plan.reference_share < 0.5 and plan.fn_rate <= 0.02 and plan.fp_rate <= 0.01
    diff, prob, truth = stream(2)
    labels, stage = simulate(diff, prob, truth, plan.delta, plan.c_low, plan.c_high)
    fn, fp = rates(labels, truth)
    assert fn <= 0.03 and fp <= 0.015  # held out: near the targets chosen on other frames
    assert (stage == 2).mean() < 0.5 and (stage == 0).mean() > 0.2
    assert plan.ms_per_frame < COST[2] / 2


@settings(max_examples=examples(15), deadline=None)
@given(st.integers(0, 1000), st.sampled_from([0.0, 0.005, 0.01, 0.02, 0.05]), st.sampled_from([0.0, 0.01, 0.03]))
def test_a_tighter_target_never_lowers_the_reference_share(seed, fn, fp) -> None:
    diff, prob, truth = stream(seed, 600)
    loose = choose(diff, prob, truth, COST, fn_target=fn + 0.02, fp_target=fp + 0.02, grid=8)
    tight = choose(diff, prob, truth, COST, fn_target=fn, fp_target=fp, grid=8)
    assert tight.reference_share >= loose.reference_share


def test_zero_targets_fall_back_to_the_reference_where_nothing_else_is_exact() -> None:
    diff, prob, truth = stream(3, 500)
    prob = np.full_like(prob, 0.5)  # a useless specialized model
    diff = np.full_like(diff, 100.0)  # and every frame changes
    plan = choose(diff, prob, truth, COST, fn_target=0.0, fp_target=0.0, grid=6)
    assert plan.reference_share == 1.0 and plan.fn_rate == plan.fp_rate == 0.0
    with pytest.raises(ValueError):
        choose(diff[:3], prob, truth, COST)


@settings(max_examples=examples(30), deadline=None)
@given(st.integers(0, 10_000), st.floats(0.5, 40.0))
def test_anchor_skips_repeat_only_frames_close_to_the_last_decided_one(seed, delta) -> None:
    from dawnstream.operators.video.difference import frame_mse
    from dawnstream.operators.video.optimizer import anchor_skips

    rng = np.random.default_rng(seed)
    steps = rng.normal(0, rng.uniform(0.5, 4.0), (60, 6, 8)).astype(np.float32)
    thumbs = np.clip(100 + np.cumsum(steps, axis=0), 0, 255)  # a slow drift: t-1 differences stay small
    skip = anchor_skips(thumbs, delta)
    assert not skip[0]
    anchor = 0
    for i in range(1, len(thumbs)):
        close = frame_mse(thumbs[i], thumbs[anchor]) < delta
        assert skip[i] == close
        if not close:
            anchor = i


@settings(max_examples=examples(15), deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.02, 0.1]))
def test_safe_delta_keeps_the_skips_own_errors_within_the_targets(seed, target) -> None:
    from dawnstream.operators.video.optimizer import anchor_skips, safe_delta

    rng = np.random.default_rng(seed)
    n = 120
    truth = np.zeros(n, bool)
    for start in rng.integers(0, n, 4):
        truth[start:start + int(rng.integers(5, 30))] = True
    # the scene changes a little inside a run and a lot where the label flips, plus noise
    level = np.cumsum(np.r_[0, np.abs(np.diff(truth.astype(float))) * 40 + rng.uniform(0, 2, n - 1)])
    thumbs = (level[:, None, None] + rng.normal(0, 1, (n, 4, 4))).astype(np.float32)
    candidates = np.array([1.0, 4.0, 16.0, 64.0, 256.0, 1024.0])
    delta = safe_delta(thumbs, truth, candidates, target, target)
    skip = anchor_skips(thumbs, delta)
    labels, anchor = truth.copy(), 0
    for i in range(n):
        if skip[i]:
            labels[i] = truth[anchor]
        else:
            anchor = i
    fn, fp = rates(labels, truth)
    assert fn <= target and fp <= target
    assert delta in candidates or delta == 0.0


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 0.5), st.floats(0.5, 1.0), st.floats(0.0, 40.0))
def test_with_confirm_the_specialized_model_never_changes_the_label_and_the_rest_is_unchanged(seed, lo, hi,
                                                                                          delta) -> None:
    diff, prob, truth = stream(seed, 300)
    labels, stage = simulate(diff, prob, truth, delta, lo, hi, confirm=True)
    prev = np.r_[False, labels[:-1]]
    assert not (labels != prev)[stage == 1].any()  # only the reference model moves the label
    assert (labels[stage == 2] == truth[stage == 2]).all()
    # a plain reading of the rule: the specialized model answers where it is sure and agrees with the last label
    last, want = False, []
    for i in range(len(truth)):
        if i > 0 and not np.isnan(diff[i]) and diff[i] < delta:
            want.append(0)
        elif (prob[i] < lo and not last) or (prob[i] > hi and last):
            want.append(1)
            last = bool(prob[i] > hi)
        else:
            want.append(2)
            last = bool(truth[i])
    assert stage.tolist() == want


def test_confirming_changes_lowers_the_errors_of_a_model_that_is_sure_and_wrong_at_run_edges() -> None:
    diff, prob, truth = stream(4, 2000)
    edge = np.r_[True, truth[1:] != truth[:-1]]
    prob = np.where(edge, 1.0 - truth, prob)  # sure of the wrong answer where a run starts
    diff = np.full_like(diff, 100.0)
    plain = rates(*simulate(diff, prob, truth, 0.0, 0.2, 0.8)[:1], truth)
    confirmed = rates(*simulate(diff, prob, truth, 0.0, 0.2, 0.8, confirm=True)[:1], truth)
    assert sum(confirmed) < sum(plain)
    # the thresholds are chosen without crediting the confirmations; the plan reports what they add
    plain_plan, plan = (choose(diff, prob, truth, COST, 0.05, 0.05, confirm=c) for c in (False, True))
    assert (plan.delta, plan.c_low, plan.c_high) == (plain_plan.delta, plain_plan.c_low, plain_plan.c_high)
    assert plan.reference_share >= plain_plan.reference_share and plan.fn_rate + plan.fp_rate <= \
        plain_plan.fn_rate + plain_plan.fp_rate
