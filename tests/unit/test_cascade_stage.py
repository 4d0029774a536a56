"""The cascade stage's life cycle on real frames: bootstrap on the reference model, training, the swap at a
fixed frame, then the cascade; every frame of every camera labelled exactly once, in order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dawnstream.errors import ConfigError
from dawnstream.models.registry import Registry
from dawnstream.operators.registry import build_chain

PARAMS = {"detector": {"kind": "ssdlite"}, "query": {"min_count": 3}, "bootstrap": 8, "min_per_class": 1,
          "block": 2, "swap_after": 3, "epochs": 1, "grid": [{"convs": 1, "filters": 16, "dense": 32}],
          "sample": 0.2}


def frames(n: int = 40) -> list[pa.RecordBatch]:
    from dawnstream.video_source import jpeg, read_frames, vtest

    rows = [(cam, i, jpeg(f)) for i, _, f in read_frames(vtest(), stop=n) for cam in ("lawn", "gate")]
    return pa.table({"camera_id": [r[0] for r in rows], "frame_index": [r[1] for r in rows],
                     "image": pa.array([r[2] for r in rows], pa.binary())}).to_batches(max_chunksize=10)


def test_each_camera_bootstraps_trains_swaps_and_labels_every_frame_once_in_order(tmp_path) -> None:
    chain = build_chain([("cascade", {**PARAMS, "registry": str(tmp_path)}, None)])
    out = [r for b in frames() for o in chain.process(b) for r in o.to_pylist()]
    for cam in ("lawn", "gate"):
        mine = [r for r in out if r["camera_id"] == cam]
        assert [r["frame_index"] for r in mine] == list(range(40))
        phases = [r["phase"] for r in mine]
        first_cascade = phases.index("cascade")
        # bootstrap, then training for exactly swap_after + 1 frames, then the cascade from a fixed frame on
        assert set(phases[:first_cascade]) == {"bootstrap", "training"} and set(phases[first_cascade:]) == {"cascade"}
        assert phases.count("training") == PARAMS["swap_after"] + 1
        assert all(r["decided_by"] == "reference" and r["model_version"] is None for r in mine[:first_cascade])
        assert {r["model_version"] for r in mine[first_cascade:]} == {1}
        assert {r["decided_by"] for r in mine[first_cascade:]} <= {"difference", "specialized", "reference"}
        # confirm_changes (the default): only the reference model changes a camera's label
        assert all(r["label"] == before["label"] for before, r in zip(mine, mine[1:], strict=False)
                   if r["decided_by"] != "reference")
        assert Registry(tmp_path).get(f"specialized.cascade.{cam}", 1).training_data["camera"] == cam
    summary = chain.operators[0].summary()  # type: ignore[attr-defined]
    assert summary["lawn"]["plan"]["c_low"] <= summary["lawn"]["plan"]["c_high"]
    gauges = chain.operators[0].gauges()
    checked = [r for r in out if r["sampled"]]  # the sampled checks of cheap answers: the reference's label
    assert all(r["phase"] == "cascade" and r["decided_by"] == "reference" and r["reference_ms"] is not None
               for r in checked)
    assert gauges["live_samples"] == len(checked) and ("live_agreement" in gauges) == bool(checked)


class _SureModel:
    """A specialized model that is sure of whatever it is told (P(true) 0.0 or 1.0, in turn per call)."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = list(answers)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.array([1.0 if self.answers.pop(0) else 0.0], np.float32)


@pytest.mark.parametrize("confirm", [True, False])
def test_a_label_change_needs_the_reference_model(tmp_path, confirm) -> None:
    from dawnstream.operators.video.cascade import Camera
    from dawnstream.operators.video.optimizer import Plan

    chain = build_chain([("cascade", {**PARAMS, "sample": 0.0, "confirm_changes": confirm,
                                      "query": {"min_count": 1}, "registry": str(tmp_path)}, None)])
    op = chain.operators[0]
    sure = [False, True, True, False, False, True] * 2  # the reference model sees people on every frame
    op.cameras["lawn"] = Camera(phase="cascade", plan=Plan(-1.0, 0.2, 0.8), spec=_SureModel(sure), version=1,
                                proven=True)  # (unproven, a plan is checked at boost_sample)
    table = pa.Table.from_batches(frames(8))
    lawn = table.filter(pc.equal(table["camera_id"], "lawn"))
    out = [r for b in lawn.to_batches() for o in chain.process(b) for r in o.to_pylist()]
    assert len(out) == 8
    by = [r["decided_by"] for r in out]
    if confirm:  # a frame the model calls true after one it called false goes to the reference (which says true)
        assert by[:3] == ["specialized", "reference", "specialized"] and all(r["label"] for r in out[1:])
        assert all(r["label"] == b["label"] for b, r in zip(out, out[1:], strict=False)
                   if r["decided_by"] != "reference")
    else:  # the model's answers, right or wrong, are the labels
        assert by == ["specialized"] * len(out) and [r["label"] for r in out] == sure[:len(out)]


def test_a_tighter_target_never_sends_fewer_frames_to_the_reference(tmp_path) -> None:
    shares = []
    for fn in (0.5, 0.0):
        params = {**PARAMS, "targets": {"fn": fn, "fp": fn}, "registry": str(tmp_path / str(fn))}
        chain = build_chain([("cascade", params, None)])
        for b in frames(24):
            chain.process(b)
        shares.append(chain.operators[0].summary()["lawn"]["plan"]["reference_share"])  # type: ignore[attr-defined]
    assert shares[1] >= shares[0]


@pytest.mark.parametrize("bad,key", [({"targets": {"fn": 2}}, "targets"), ({"bootstrap": 1}, "bootstrap"),
                                     ({"detector": {"kind": "yolo"}}, "detector"),
                                     ({"grid": [{"layers": 3}]}, "grid")])
def test_bad_options_name_their_key(bad, key, tmp_path) -> None:
    with pytest.raises(ConfigError, match=key):
        build_chain([("cascade", {**PARAMS, "registry": str(tmp_path), **bad}, None)])


def test_stable_sampling_sends_about_the_share_asked() -> None:
    from dawnstream.operators.video.cascade import sampled

    picks = np.array([sampled("lawn", i, 0.05) for i in range(20000)])
    assert 0.04 < picks.mean() < 0.06 and picks[:100].tolist() == [sampled("lawn", i, 0.05) for i in range(100)]


@pytest.mark.bitexact
def test_bootstrap_frames_checkpoint_in_the_keyed_store_and_restore_exactly(tmp_path) -> None:
    from dawnstream.streams.store import KeyedStore

    params = {**PARAMS, "bootstrap": 30, "registry": str(tmp_path)}  # still bootstrapping at the checkpoint
    batches = frames(24)
    whole = build_chain([("cascade", params, None)])
    whole.operators[0].store = KeyedStore()
    expected = [r for b in batches for o in whole.process(b) for r in o.to_pylist()]

    first = build_chain([("cascade", params, None)])
    first.operators[0].store = store = KeyedStore()
    head = [r for b in batches[:3] for o in first.process(b) for r in o.to_pylist()]
    blob = first.snapshot()
    records = store.changes()
    assert b"npz" not in blob["cascade"] and len(blob["cascade"]) < 20_000  # metadata only, no frames
    assert records and all(len(v or b"") <= 8 << 20 for _, v in records)
    assert first.snapshot() == blob and store.changes() == []  # unchanged frames are not written again
    second = build_chain([("cascade", params, None)])
    second.operators[0].store = fresh = KeyedStore()
    second.restore(blob)
    for key, value in records:
        fresh.apply(key, value)
    tail = [r for b in batches[3:] for o in second.process(b) for r in o.to_pylist()]
    drop = {"reference_ms", "latency_ms", "emit_time"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in head + tail] == \
        [{k: v for k, v in r.items() if k not in drop} for r in expected]


def test_a_frame_without_an_image_is_refused_before_any_camera_moves(tmp_path) -> None:
    chain = build_chain([("cascade", {**PARAMS, "registry": str(tmp_path)}, None)])
    batch = frames(3)[0]
    images = batch.column("image").to_pylist()
    holed = batch.set_column(batch.schema.get_field_index("image"), "image",
                             pa.array(images[:3] + [None] + images[4:], pa.binary()))
    assert chain.bad_rows(holed) == {3: ("cascade", "the frame has no image")}
    assert chain.operators[0].cameras == {}  # asking moved nothing
