"""The cascade watches its plan live (issue 31): exact binomial bounds, an alarm when a swapped-in model is
confidently wrong, boosted checks after a swap, per-stage counts in the gauges and the snapshot."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dawnstream.operators.registry import build_chain
from dawnstream.operators.video.bounds import lower_bound, upper_bound

PARAMS = {"detector": {"kind": "ssdlite"}, "query": {"min_count": 1}, "bootstrap": 8, "min_per_class": 1,
          "block": 2, "swap_after": 3, "epochs": 1, "grid": [{"convs": 1, "filters": 16, "dense": 32}]}


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
       st.sampled_from([0.01, 0.05, 0.1]))
def test_bounds_equal_scipys_exact_binomial_interval(kn, alpha) -> None:
    from scipy.stats import binomtest

    k, n = kn
    ci = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    assert lower_bound(k, n, alpha) == pytest.approx(ci.low, abs=1e-9)
    assert upper_bound(k, n, alpha) == pytest.approx(ci.high, abs=1e-9)


def test_bounds_refuse_impossible_counts() -> None:
    for k, n in ((3, 2), (-1, 5)):
        with pytest.raises(ValueError):
            lower_bound(k, n)


@pytest.fixture(scope="module")
def vtest_batch() -> pa.RecordBatch:
    from dawnstream.video_source import jpeg, read_frames, vtest

    raws = [jpeg(f) for _, _, f in read_frames(vtest(), stop=60)]
    return pa.record_batch({"camera_id": ["lawn"] * len(raws), "frame_index": list(range(len(raws))),
                            "image": pa.array(raws, pa.binary())})


class Never:
    """A specialized model sure that nobody is ever there (vtest shows people on every frame)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(len(x), np.float32)


def swapped_in(tmp_path, **params):  # noqa: ANN201
    from dawnstream.operators.video.cascade import LIVE_KEYS, Camera
    from dawnstream.operators.video.optimizer import Plan

    chain = build_chain([("cascade", {**PARAMS, "registry": str(tmp_path), **params}, None)])
    op = chain.operators[0]
    # as _swap leaves a camera: no frame skipped (delta -1), the model decides below 0.2
    op.cameras["lawn"] = Camera(phase="cascade", plan=Plan(-1.0, 0.2, 0.8), spec=Never(), version=1,
                                boost_until=op.boost_frames, live={k: [0, 0] for k in LIVE_KEYS})
    return chain, op


@pytest.mark.parametrize("boost", [0.25, 1.0])
def test_a_confidently_wrong_model_raises_the_alarm_within_a_few_frames(vtest_batch, tmp_path, boost) -> None:
    chain, op = swapped_in(tmp_path, boost_sample=boost, sample=0.05)
    out = chain.process(vtest_batch)[0].to_pylist()
    first = next(i for i, r in enumerate(out) if r["sampled"])  # the first check sees the stale "empty"
    assert first < (10 if boost < 1 else 1)
    assert out[first]["label"] is True and out[first]["decided_by"] == "reference"
    after = out[first + 1:]
    assert after and all(r["phase"] != "cascade" and r["decided_by"] == "reference" for r in after)
    cam = op.cameras["lawn"]
    assert cam.alarms == 1 and "live FN rate 1/1" in cam.last_alarm
    assert cam.live["specialized"] == [1, 1] and cam.live["fn"] == [1, 1]
    gauges = op.gauges()
    assert gauges["alarms"] == 1 and gauges["live_fn_rate"] == 1.0 and gauges["live_error_specialized"] == 1.0
    assert all(r["label"] for r in out[first:])  # from the alarm on, the reference's labels


def test_checks_without_errors_never_fire_and_the_counts_survive_a_snapshot(vtest_batch, tmp_path) -> None:
    from dawnstream.operators.video.cascade import Camera

    chain, op = swapped_in(tmp_path, boost_sample=1.0)

    class Always(Never):
        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.ones(len(x), np.float32)

    op.cameras["lawn"].spec = Always()
    op.cameras["lawn"].last_label = True
    out = chain.process(vtest_batch.slice(0, 20))[0].to_pylist()
    cam: Camera = op.cameras["lawn"]
    assert cam.alarms == 0 and all(r["phase"] == "cascade" for r in out)
    checks = cam.live["fn"][0] + cam.live["fp"][0]
    assert checks == 20 and cam.live["fn"][1] == 0
    cam.version = None  # (no model was registered: the restore must not look one up)
    again = build_chain([("cascade", {**PARAMS, "registry": str(tmp_path)}, None)])
    again.restore(chain.snapshot())
    restored = again.operators[0].cameras["lawn"]
    assert restored.live == cam.live and restored.boost_until == cam.boost_until


def test_a_disagreement_is_followed_up_at_the_alert_share(vtest_batch, tmp_path) -> None:
    chain, op = swapped_in(tmp_path, sample=0.0, boost_sample=0.0, alert_sample=1.0, boost_frames=5)

    class Always(Never):
        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.ones(len(x), np.float32)

    cam = op.cameras["lawn"]
    cam.spec, cam.last_label, cam.proven, cam.boost_until = Always(), True, True, -1
    assert not any(r["sampled"] for r in chain.process(vtest_batch.slice(0, 10))[0].to_pylist())
    # one false positive among 30 checked false frames: not enough for the alarm, enough to look closer
    cam.live["fp"] = [29, 0]
    assert not op._watch("lawn", cam, 10, "specialized", True, False) and cam.alarms == 0
    out = chain.process(vtest_batch.slice(10, 10))[0].to_pylist()
    assert [r["sampled"] for r in out] == [True] * 5 + [False] * 5
    again = build_chain([("cascade", {**PARAMS, "registry": str(tmp_path)}, None)])
    cam.version = None  # (no model was registered: the restore must not look one up)
    again.restore(chain.snapshot())
    assert again.operators[0].cameras["lawn"].alert_until == cam.alert_until


def test_boost_options_are_checked(tmp_path) -> None:
    from dawnstream.errors import ConfigError

    for key, bad in (("boost_sample", 1.5), ("boost_frames", -1), ("alert_sample", -0.1)):
        with pytest.raises(ConfigError, match=key):
            build_chain([("cascade", {**PARAMS, "registry": str(tmp_path), key: bad}, None)])
    op = build_chain([("cascade", {**PARAMS, "registry": str(tmp_path), "sample": 0.3}, None)]).operators[0]
    assert op.boost_sample == 0.3 and op.alert_sample == 0.3  # never below the usual share
