"""The difference detector: frame_mse against a plain-loop reference (hypothesis), and the stage on vtest frames."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.errors import ConfigError
from dawnstream.operators.registry import build_operator
from dawnstream.operators.video.difference import DifferenceDetector, frame_mse, thumbnail

# Results promised bit for bit: `make test` runs these again under a second OpenBLAS kernel.
pytestmark = pytest.mark.bitexact


def reference_mse(a: np.ndarray, b: np.ndarray, blocks: tuple[int, int], roi) -> float:  # noqa: ANN001
    """Pixel by pixel, block by block: what frame_mse must equal."""
    h, w = a.shape
    if roi is not None:
        x0, y0, x1, y1 = (int(round(f * n)) for f, n in zip(roi, (w, h, w, h), strict=True))
        a, b = a[y0:y1, x0:x1], b[y0:y1, x0:x1]
        h, w = a.shape
    rows, cols = blocks
    best = 0.0
    for r in range(rows):
        for c in range(cols):
            y_lo, y_hi = round(r * h / rows), round((r + 1) * h / rows)
            x_lo, x_hi = round(c * w / cols), round((c + 1) * w / cols)
            total, count = 0.0, 0
            for y in range(y_lo, y_hi):
                for x in range(x_lo, x_hi):
                    total += (float(a[y, x]) - float(b[y, x])) ** 2
                    count += 1
            best = max(best, total / count)
    return best


@settings(max_examples=examples(60), deadline=None)
@given(st.integers(0, 10_000), st.integers(8, 40), st.integers(8, 40), st.integers(1, 4), st.integers(1, 4),
       st.one_of(st.none(), st.tuples(st.floats(0, 0.4), st.floats(0, 0.4), st.floats(0.6, 1), st.floats(0.6, 1))))
def test_frame_mse_equals_the_plain_loop(seed, h, w, rows, cols, roi) -> None:
    if roi is not None:  # regions too small for the blocks are a ValueError (tested below)
        rh = round(roi[3] * h) - round(roi[1] * h)
        rw = round(roi[2] * w) - round(roi[0] * w)
        assume(rh >= rows and rw >= cols)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w)).astype(np.float32)
    b = rng.integers(0, 256, (h, w)).astype(np.float32)
    b[: h // 2] = a[: h // 2]  # half the frame unchanged: blocks differ
    assert frame_mse(a, b, (rows, cols), roi) == pytest.approx(reference_mse(a, b, (rows, cols), roi), rel=1e-9)


@pytest.fixture(scope="module")
def frames() -> pa.RecordBatch:
    from dawnstream.video_source import jpeg, read_frames, vtest

    rows = [(i, t, jpeg(f)) for i, t, f in read_frames(vtest(), stop=60)]
    return pa.record_batch({"camera_id": ["lawn"] * len(rows), "frame_index": [r[0] for r in rows],
                            "timestamp_ms": [r[1] for r in rows], "image": pa.array([r[2] for r in rows], pa.binary())})


def run(op: DifferenceDetector, batch: pa.RecordBatch, cuts: list[int]) -> list[float]:
    edges = [0, *sorted(set(cuts)), batch.num_rows]
    out = []
    for a, b in zip(edges, edges[1:], strict=False):
        if b > a:
            out.extend(op.process(batch.slice(a, b - a))[0].column("diff_mse").to_pylist())
    return out


def test_previous_frame_scores_are_the_mse_of_consecutive_thumbnails(frames) -> None:
    op = DifferenceDetector(threshold=130.0, lag=2)  # about the median score of vtest at lag 2
    out = op.process(frames)[0]
    thumbs = [thumbnail(frames.column("image")[i].as_py()) for i in range(frames.num_rows)]
    scores = out.column("diff_mse").to_numpy(zero_copy_only=False)
    assert np.isnan(scores[:2]).all()
    assert scores[2:] == pytest.approx([frame_mse(thumbs[i], thumbs[i - 2]) for i in range(2, len(thumbs))])
    changed = out.column("changed").to_pylist()
    assert changed[:2] == [True, True] and changed[2:] == (scores[2:] >= 130.0).tolist()
    assert 0 < sum(changed[2:]) < len(changed) - 2  # pedestrians move: some frames change, some hardly


def test_a_static_scene_is_unchanged_and_the_reference_is_the_median_of_the_first_frames(frames) -> None:
    still = pa.record_batch({"camera_id": ["c"] * 10, "image": pa.array([frames.column("image")[0].as_py()] * 10)})
    out = DifferenceDetector(threshold=0.5, against="reference", reference_frames=4).process(still)[0]
    assert out.column("changed").to_pylist() == [True] + [False] * 9
    assert out.column("diff_mse").to_pylist()[1:] == [0.0] * 9


@settings(max_examples=examples(8), deadline=None)
@given(st.lists(st.integers(1, 59), max_size=6), st.sampled_from(["previous", "reference"]))
def test_scores_do_not_depend_on_batching_nor_on_a_snapshot_in_between(frames, cuts, against) -> None:
    whole = run(DifferenceDetector(threshold=5.0, against=against, lag=3, reference_frames=7), frames, [])
    first = DifferenceDetector(threshold=5.0, against=against, lag=3, reference_frames=7)
    cut = min(cuts) if cuts else 30
    head = run(first, frames.slice(0, cut), cuts)
    second = DifferenceDetector(threshold=5.0, against=against, lag=3, reference_frames=7)
    second.restore(first.snapshot())
    tail = run(second, frames.slice(cut), [])
    assert np.allclose(head + tail, whole, equal_nan=True)


def test_cameras_keep_their_own_state(frames) -> None:
    both = pa.concat_tables([pa.Table.from_batches([frames]),
                             pa.Table.from_batches([frames.set_column(0, "camera_id", pa.array(["b"] * 60))])])
    order = np.argsort(np.tile(np.arange(60), 2), kind="stable")  # interleave the two cameras
    mixed = both.take(pa.array(order)).combine_chunks().to_batches()[0]
    out = DifferenceDetector(threshold=5.0).process(mixed)[0].column("diff_mse").to_numpy(zero_copy_only=False)
    alone = DifferenceDetector(threshold=5.0).process(frames)[0].column("diff_mse").to_numpy(zero_copy_only=False)
    assert np.allclose(out[0::2], alone, equal_nan=True) and np.allclose(out[1::2], alone, equal_nan=True)


def test_a_broken_image_is_a_data_error_and_bad_config_names_the_key() -> None:
    with pytest.raises(ValueError, match="not a decodable"):
        DifferenceDetector(threshold=1.0).process(pa.record_batch({"camera_id": ["c"], "image": [b"\xff\xd8\xffjunk"]}))
    with pytest.raises(ConfigError) as e:
        build_operator("difference", {"threshold": 1.0, "roi": [50, 10, 20, 90]}, None, "stages.0")
    assert e.value.path == "stages.0.roi"
    with pytest.raises(ConfigError) as e:
        build_operator("difference", {"threshold": 1.0, "against": "median"}, None, "stages.0")
    assert e.value.path == "stages.0.against"
    with pytest.raises(ValueError, match="cannot hold"):
        frame_mse(np.zeros((4, 4)), np.zeros((4, 4)), (1, 5))
