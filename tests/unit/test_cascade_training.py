"""Which specialized model a camera gets (issue 31): the same frames give the same model on any machine and
at any moment, so two runs of a camera give the same labels."""

from __future__ import annotations

from dawnstream.models.specialized import GRID, SpecConfig
from dawnstream.operators.video.optimizer import Plan
from dawnstream.operators.video.training import _rank


def test_candidates_rank_by_reference_share_then_compute_never_by_measured_ms() -> None:
    small, big = SpecConfig(2, 16, 32), SpecConfig(2, 16, 64)
    # make demo-video once measured these two at 0.060 and 0.061 ms with the same reference share
    fast_big = Plan(1.0, 0.05, 0.07, reference_share=0.194, skipped_share=0.5, ms_per_frame=6.0)
    slow_small = Plan(1.0, 0.05, 0.07, reference_share=0.194, skipped_share=0.5, ms_per_frame=6.1)
    assert _rank(slow_small, small) < _rank(fast_big, big)
    # fewer reference calls win whatever the compute
    assert _rank(Plan(1.0, 0.0, 1.0, reference_share=0.19), big) < _rank(Plan(1.0, 0.0, 1.0, reference_share=0.2),
                                                                        small)
    # a model that sees fewer frames (more skipped) costs less
    assert _rank(Plan(1.0, 0.0, 1.0, reference_share=0.2, skipped_share=0.9), big) < \
        _rank(Plan(1.0, 0.0, 1.0, reference_share=0.2, skipped_share=0.0), small)
    # the compute grows with every layer's size
    for cfg in GRID:
        assert cfg.macs < SpecConfig(cfg.convs, cfg.filters * 2, cfg.dense).macs
        assert cfg.macs < SpecConfig(cfg.convs, cfg.filters, cfg.dense * 2).macs
