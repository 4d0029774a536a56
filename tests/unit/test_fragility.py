"""The cascade's fragility guard (:mod:`dawnstream.operators.video.fragility`) against plain definitions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.models.detectors import Detection, RegionQuery
from dawnstream.operators.video.fragility import MATCH, bounds, fragile, jitter, margins

SHAPE = (576, 768)
REGION = (40.0, 380.0, 560.0, 576.0)  # the bottom side lies on the frame's border, the others inside
boxes = st.lists(st.builds(Detection, st.floats(0, 700), st.floats(0, 500), st.floats(1, 60), st.floats(1, 150),
                           st.floats(0, 1)), max_size=8)
margin = st.tuples(st.floats(0, 0.5), st.floats(0, 40))


def _inside(b: Detection, m: float, grow: bool) -> bool:
    x, y = b.foot
    x0, y0, x1, y1 = REGION
    s = -m if grow else m
    return x0 + s <= x <= x1 - s and y0 + s <= y <= y1 - (0 if y1 >= SHAPE[0] else s)


@settings(max_examples=examples(200), deadline=None)
@given(bs=boxes, mg=margin, min_score=st.floats(0.05, 0.9), min_count=st.integers(1, 3))
def test_bounds_count_the_sure_and_the_possible_boxes(bs, mg, min_score, min_count) -> None:
    q = RegionQuery(region=REGION, min_count=min_count)
    certain, possible = bounds(bs, q, min_score, mg, SHAPE)
    assert certain == sum(_inside(b, mg[1], False) and b.score >= min_score + mg[0] for b in bs)
    assert possible == sum(_inside(b, mg[1], True) and b.score >= min_score - mg[0] for b in bs)
    answer = q.count([b for b in bs if b.score >= min_score])
    assert certain <= answer <= possible  # the answer lies between the bounds
    assert bounds(bs, q, min_score, (0.0, 0.0), SHAPE) == (answer, answer)  # no jitter: nothing is fragile
    wider = bounds(bs, q, min_score, (mg[0] * 2, mg[1] * 2), SHAPE)
    assert wider[0] <= certain and wider[1] >= possible
    assert fragile(bs, q, min_score, mg, SHAPE) == (certain < min_count <= possible)
    assert not fragile(bs, q, min_score, None, SHAPE)


def test_a_foot_near_the_regions_edge_or_a_score_near_the_threshold_is_fragile() -> None:
    q = RegionQuery(region=REGION)
    mg = (0.1, 5.0)
    assert fragile([Detection(100, 300, 40, 82, 0.9)], q, 0.3, mg, SHAPE)  # foot 2 px inside the top edge
    assert fragile([Detection(100, 300, 40, 77, 0.9)], q, 0.3, mg, SHAPE)  # 3 px outside it
    assert not fragile([Detection(100, 300, 40, 120, 0.9)], q, 0.3, mg, SHAPE)  # well inside, sure score
    assert fragile([Detection(100, 300, 40, 120, 0.33)], q, 0.3, mg, SHAPE)  # inside, score near 0.3
    assert fragile([Detection(100, 300, 40, 120, 0.25)], q, 0.3, mg, SHAPE)  # below 0.3 but close: may flip
    assert not fragile([Detection(100, 300, 40, 120, 0.1)], q, 0.3, mg, SHAPE)
    # clipped to the frame's bottom row: the detector cannot move it across, the region ends there too
    assert not fragile([Detection(100, 500, 40, 76, 0.9)], q, 0.3, mg, SHAPE)


def test_jitter_pairs_each_box_with_its_nearest_box_on_the_previous_frame() -> None:
    q = RegionQuery(region=REGION)
    prev = [Detection(100, 300, 40, 100, 0.5), Detection(400, 300, 40, 100, 0.9)]
    cur = [Detection(103, 298, 40, 100, 0.6), Detection(400 + MATCH * 100 + 1, 300, 40, 100, 0.8),
           Detection(600, 300, 40, 100, 0.2)]  # too far from any: a new object; below min_score: skipped
    got = jitter(prev, cur, q, 0.3)
    assert len(got) == 1 and abs(got[0][0] - 0.1) < 1e-9 and got[0][1] == 3.0
    assert margins([]) is None
    s, p = margins([(0.1, 2.0), (0.2, 4.0), (0.3, 6.0), (0.4, 8.0), (0.5, 10.0)])
    assert abs(s - 0.4) < 1e-9 and abs(p - 8.0) < 1e-9
