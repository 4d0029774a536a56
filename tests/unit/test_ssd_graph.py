"""The OpenCV text graph made from the SSDLite frozen graph: the protobuf text reader/writer round-trips,
and OpenCV DNN with it finds the people of a vtest frame where they stand."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dawnstream.models.ssd_graph import format_text, parse_text

names = st.text("abcdefghijklmnopqrstuvwxyz_/", min_size=1, max_size=12)
scalars = st.one_of(st.integers(-5, 5).map(str), names.map(lambda s: f'"{s}"'), st.sampled_from(["DT_FLOAT", "true"]))
messages = st.recursive(st.lists(st.tuples(names, scalars), max_size=4),
                        lambda inner: st.lists(st.tuples(names, st.one_of(scalars, inner)), max_size=4), max_leaves=12)


@given(messages)
def test_the_text_format_reader_reads_back_what_the_writer_wrote(msg) -> None:
    assert parse_text(format_text(msg)) == msg


def test_unbalanced_text_is_refused() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        parse_text('node { name: "a" ')


def test_ssdlite_through_the_generated_text_graph_finds_the_people_on_a_vtest_frame() -> None:
    from dawnstream.models.detectors import RegionQuery, SSDLiteDetector
    from dawnstream.video_source import read_frames, vtest

    frames = {i: f for i, _, f in read_frames(vtest(), stop=601) if i in (0, 600)}
    det = SSDLiteDetector(min_score=0.3)
    first, later = det.detect(frames[0]), det.detect(frames[600])
    # frame 0: people on the walkway, nobody on the lawn; frame 600: someone on the lawn (checked by eye)
    assert 1 <= len(first) <= 12 and all(10 < b.w < 120 and 30 < b.h < 250 for b in first)
    lawn = RegionQuery(region=(0, 380, 560, 576))
    assert not lawn.label(first) and lawn.label(det.detect(frames[600]))
    assert all(0 <= b.score <= 1 for b in later)
