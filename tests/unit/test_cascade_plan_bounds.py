"""What a cascade plan can promise (issue 31): its error bounds from the counts it was chosen on, a probation
of boosted checks until the evidence bounds the targets, and repeats no longer than the bootstrap bore out
(the stale-label case: a scene that changes slowly, by less than the difference threshold in all)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dawnstream.operators.registry import build_chain
from dawnstream.operators.video.bounds import upper_bound
from dawnstream.operators.video.cascade import BOUND_GAUGES, Camera, needed
from dawnstream.operators.video.optimizer import Plan, choose, longest_right_run

PARAMS = {"detector": {"kind": "ssdlite"}, "query": {"min_count": 1}, "bootstrap": 8, "min_per_class": 1,
          "block": 2, "swap_after": 3, "epochs": 1, "grid": [{"convs": 1, "filters": 16, "dense": 32}]}


class Constant:
    """A specialized model that answers ``p`` for every frame."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.p, np.float32)


def fading(n: int) -> pa.RecordBatch:
    """``n`` JPEG frames of an empty 160x120 scene in which a bright square fades out by one grey level per
    frame: consecutive frames (and the first and last) differ by less than any plan's threshold here."""
    import cv2

    raws = []
    for i in range(n):
        img = np.full((120, 160, 3), 90, np.uint8)
        img[40:80, 60:100] = 90 + max(n - i, 0)
        raws.append(cv2.imencode(".png", img)[1].tobytes())
    return pa.record_batch({"camera_id": ["yard"] * n, "frame_index": list(range(n)), "image": pa.array(raws)})


@pytest.mark.parametrize("max_run", [0, 4])
def test_a_stale_label_is_repeated_no_longer_than_the_plans_max_run(tmp_path, max_run) -> None:
    chain = build_chain([("cascade", {**PARAMS, "registry": str(tmp_path), "sample": 0.0,
                                      "confirm_changes": False}, None)])
    op = chain.operators[0]
    # the camera's last label was "present"; the scene since is empty and changes by less than delta
    op.cameras["yard"] = Camera(phase="cascade", plan=Plan(1e9, 0.2, 0.8, max_run=max_run), spec=Constant(0.0),
                                version=1, proven=True, last_label=True, anchor_gray=None)
    first = chain.process(fading(12).slice(0, 1))[0].to_pylist()
    assert first[0]["decided_by"] == "specialized"  # no anchor yet: a model decides the first frame ...
    op.cameras["yard"].last_label = True  # ... and say its label was the stale "present", which ...
    out = chain.process(fading(12).slice(1))[0].to_pylist()
    by, labels = [r["decided_by"] for r in out], [r["label"] for r in out]
    if max_run:  # ... is repeated max_run times, then the model decides again (and says "empty")
        assert by[:max_run] == ["difference"] * max_run and labels[:max_run] == [True] * max_run
        assert by[max_run] == "specialized" and labels[max_run] is False
    else:  # without a bound it is repeated for as long as the scene stays within delta of the anchor
        assert by == ["difference"] * 11 and all(labels)


def test_longest_right_run_counts_repeats_up_to_the_first_wrong_one() -> None:
    grays = np.zeros((30, 4, 4), np.uint8)  # nothing ever changes: every frame after the first is skipped
    truth = np.zeros(30, bool)
    truth[15:] = True  # ... while the answer changed at frame 15: the repeats of frame 0 hold up to frame 14
    assert longest_right_run(grays, truth, 1.0) == 14
    assert longest_right_run(grays, np.zeros(30, bool), 1.0) == 29
    grays[1::2] = 255  # every frame differs from the last decided one: nothing skipped
    assert longest_right_run(grays, truth, 1.0) == 1


def test_a_plan_carries_the_counts_its_rates_come_from_and_bounds_them_exactly() -> None:
    rng = np.random.default_rng(3)
    truth = rng.random(400) < 0.3
    prob = np.clip(truth * 0.7 + rng.normal(0.15, 0.2, 400), 0, 1)
    plan = choose(np.full(400, np.nan), prob, truth, (0.1, 0.5, 30.0), 0.05, 0.05)
    assert (plan.positives, plan.negatives) == (int(truth.sum()), int((~truth).sum()))
    assert plan.fn_rate == plan.fn_errors / plan.positives and plan.fp_rate == plan.fp_errors / plan.negatives
    assert plan.bounds() == (upper_bound(plan.fn_errors, plan.positives), upper_bound(plan.fp_errors, plan.negatives))
    # live checks add to the evidence: (true checked, of them wrong, false checked, of them wrong)
    assert plan.bounds(live=(10, 1, 20, 0)) == (upper_bound(plan.fn_errors + 1, plan.positives + 10),
                                                upper_bound(plan.fp_errors, plan.negatives + 20))
    assert Plan(0.0, 0.0, 1.0).bounds() == (1.0, 1.0)  # no frame of a class: nothing promised
    assert upper_bound(0, needed(0.01)) <= 0.01 < upper_bound(0, needed(0.01) - 1)


def test_an_unproven_plan_is_checked_at_the_boosted_share_until_the_checks_bound_the_targets(tmp_path) -> None:
    from dawnstream.video_source import jpeg, read_frames, vtest

    raws = [jpeg(f) for _, _, f in read_frames(vtest(), stop=30)]
    batch = pa.record_batch({"camera_id": ["lawn"] * 30, "frame_index": list(range(30)), "image": pa.array(raws)})
    chain = build_chain([("cascade", {**PARAMS, "registry": str(tmp_path), "sample": 0.0, "boost_sample": 1.0},
                          None)])
    op = chain.operators[0]
    # chosen on 290 true frames (and 400 false): 9 more true frames without an error bound FN within 1%
    plan = Plan(-1.0, 0.2, 0.8, positives=290, negatives=400)
    assert plan.bounds()[0] > 0.01 >= plan.bounds()[1]
    op.cameras["lawn"] = Camera(phase="cascade", plan=plan, spec=Constant(1.0), version=1, last_label=True)
    out = chain.process(batch)[0].to_pylist()
    checked = [r["sampled"] for r in out]  # vtest shows people on every frame: the model is right
    assert checked == [True] * (needed(0.01) - 290) + [False] * (30 - (needed(0.01) - 290))
    cam = op.cameras["lawn"]
    assert cam.proven and cam.live["fn"] == [9, 0]
    gauges = op.gauges()
    assert set(BOUND_GAUGES) <= set(gauges)
    assert gauges["cameras_proven"] == 1 and gauges["fn_bound"] <= 0.01 and gauges["fp_bound"] <= 0.01
    again = build_chain([("cascade", {**PARAMS, "registry": str(tmp_path)}, None)])
    cam.version = None  # (no model was registered: the restore must not look one up)
    again.restore(chain.snapshot())
    assert again.operators[0].cameras["lawn"].proven
