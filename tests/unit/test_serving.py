"""The serve stage and its parts: AIMD, Exp3/Exp4, containers, stragglers, error replies, restore."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.errors import ConfigError
from dawnstream.models.mf import fit_als
from dawnstream.models.registry import Registry
from dawnstream.operators.serving.aimd import AIMDBatcher
from dawnstream.operators.serving.containers import Container
from dawnstream.operators.serving.selection import Exp3, Exp4
from dawnstream.operators.serving.serve import REPLY_SCHEMA, Serve
from dawnstream.streams.store import KeyedStore


@settings(max_examples=examples(50), deadline=None)
@given(obs=st.lists(st.tuples(st.integers(1, 300), st.floats(0.0, 60.0)), max_size=60))
def test_aimd_tracks_the_slo(obs):
    a = AIMDBatcher(slo_ms=20.0, step=4, backoff=0.1, max_size=256)
    for rows, ms in obs:
        before = a.size
        a.observe(rows, ms)
        assert 1 <= a.size <= 256
        if ms > 20.0:
            assert a.size == max(1, int(before * 0.9))  # multiplicative decrease
        elif rows >= before:
            assert a.size == min(256, before + 4)  # additive increase after a full batch
        else:
            assert a.size == before  # a partial batch says nothing


def test_exp4_weights_follow_losses_and_combine_is_a_weighted_mean():
    e = Exp4(["a", "b", "c"], eta=0.5)
    rng = np.random.default_rng(0)
    for _ in range(100):
        y = rng.uniform(1, 5)
        e.update({"a": y + rng.normal(0, 0.3), "b": y + rng.normal(0, 1.0), "c": 3.0}, y, scale=16.0)
    w = e.weights()
    assert w[0] > w[1] > w[2]
    assert e.combine({"a": 2.0, "b": 2.0}) == pytest.approx(2.0)
    assert e.combine({"b": 4.0}) == 4.0  # the models that answered, renormalised


def test_exp3_moves_traffic_off_an_arm_that_breaks():
    e = Exp3(["good", "ok", "bad"], eta=0.05, gamma=0.03, discount=0.001)
    rng = np.random.default_rng(1)
    err = {"good": 0.6, "ok": 0.9, "bad": 2.0}
    picks = []
    for n in range(20_000):
        if n == 10_000:
            err["good"] = 3.0  # the best arm starts returning noise
        y = rng.uniform(1, 5)
        arm, p = e.choose(f"req-{n}")
        e.update(arm, y + rng.normal(0, err[arm]), y, p, scale=16.0)
        picks.append(arm)
    first, last = picks[5_000:10_000], picks[-5_000:]
    assert first.count("good") / 5_000 > 0.6
    assert last.count("good") / 5_000 <= 0.02
    assert e.choose("same-id") == e.choose("same-id")  # deterministic per request id


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    rng = np.random.default_rng(5)
    users, items = rng.integers(1, 40, 3000), rng.integers(1, 60, 3000)
    ratings = np.clip(np.round(3 + (users % 3) - (items % 2) + rng.normal(0, 0.7, 3000)), 1, 5)
    theta = fit_als(users, items, ratings, k=4, iters=4)
    root = tmp_path_factory.mktemp("registry")
    reg = Registry(root)
    reg.promote("theta", reg.register("theta", theta.to_npz(), "npz").version)
    reg.promote("svd", reg.register("svd", theta.to_onnx(), "onnx").version)
    return reg


def _serve(registry, **kw):
    models = kw.pop("models", [{"name": "velox", "kind": "velox", "model": "theta"},
                               {"name": "svd", "kind": "onnx", "model": "svd"},
                               {"kind": "online_mf"}, {"kind": "mean"}])
    op = Serve(models, registry=str(registry.root), rating_range=[1, 5], **kw)
    op.store = KeyedStore()
    return op


def _rows(*rows):
    cols = {"correlation_id": [], "reply_to": [], "user_id": [], "item_id": [], "rating": [], "request_error": []}
    for r in rows:
        for c in cols:
            cols[c].append(r.get(c))
    schema = pa.schema([("correlation_id", pa.string()), ("reply_to", pa.string()), ("user_id", pa.int64()),
                        ("item_id", pa.int64()), ("rating", pa.float64()), ("request_error", pa.string())])
    return pa.RecordBatch.from_pydict(cols, schema=schema)


def _req(n, u, i, reply="replies"):
    return {"correlation_id": f"c{n}", "reply_to": reply, "user_id": u, "item_id": i}


def _fb(n, u, i, r, reply=None):
    return {"correlation_id": f"f{n}", "reply_to": reply, "user_id": u, "item_id": i, "rating": r}


def test_requests_get_predictions_and_bad_ones_get_error_replies(registry):
    op = _serve(registry)
    op.process(_rows(_req(0, 3, 7)))  # the first batch loads the models
    out = op.process(_rows(_req(1, 3, 7), {"correlation_id": "c2", "reply_to": "r", "request_error": "not JSON"},
                           {"correlation_id": "c3", "reply_to": "r", "user_id": 3}, _req(4, 999_999, 7),
                           _fb(5, 3, 7, float("nan"), reply="r")))
    assert len(out) == 1 and out[0].schema == REPLY_SCHEMA
    rows = {r["correlation_id"]: r for r in out[0].to_pylist()}
    assert rows["c1"]["kind"] == "prediction" and 1.0 <= rows["c1"]["prediction"] <= 5.0
    assert rows["c1"]["model"] == "exp4" and set(rows["c1"]["answered"].split(",")) == {"velox", "svd", "online_mf",
                                                                                      "mean"}
    assert rows["c2"]["kind"] == "error" and rows["c2"]["error"] == "not JSON"
    assert rows["c3"]["error"] == "missing item_id"
    assert rows["c4"]["kind"] == "prediction" and not rows["c4"]["default"]  # an unknown user: cold start
    assert rows["f5"]["kind"] == "error" and "finite" in rows["f5"]["error"]
    assert all(r["reply_to"] for r in rows.values())


def test_feedback_moves_the_user_and_acks_with_the_prediction_made_before(registry):
    op = _serve(registry)
    before = op.process(_rows(_req(1, 5, 9)))[0].to_pylist()[0]["prediction"]
    acks = op.process(_rows(*[_fb(n, 5, 9, 5.0, reply="r") for n in range(20)]))[0].to_pylist()
    assert acks[0]["kind"] == "feedback" and acks[0]["prediction"] == pytest.approx(before)
    after = op.process(_rows(_req(2, 5, 9)))[0].to_pylist()[0]["prediction"]
    assert after > before
    assert op.status()["counters"]["feedback"] == 20
    # Feedback without reply-to is learned silently.
    assert op.process(_rows(_fb(99, 5, 9, 1.0))) == []


class _Slow(Container):
    kind = "slow"

    def __init__(self, name, seconds, fail=False):
        super().__init__(name, 20.0)
        self.seconds, self.fail = seconds, fail

    def predict(self, users, items):
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("model crashed")
        return np.full(len(users), 4.5)


def test_stragglers_are_left_out_and_no_answer_gives_the_flagged_default(registry):
    op = _serve(registry, models=[{"kind": "mean"}, {"name": "svd", "kind": "onnx", "model": "svd"}], slo_ms=30)
    op.containers[1] = _Slow("svd", 0.3)
    op.process(_rows(_fb(0, 1, 1, 2.0)))  # the mean learns 2.0
    t0 = time.perf_counter()
    out = op.process(_rows(_req(1, 1, 1)))[0].to_pylist()[0]
    assert time.perf_counter() - t0 < 0.25  # did not wait for the slow model
    assert out["answered"] == "mean" and out["prediction"] == 2.0 and not out["default"]
    op.containers[1] = _Slow("svd", 0.0, fail=True)  # a model that raises is a straggler too
    assert op.process(_rows(_req(2, 1, 1)))[0].to_pylist()[0]["answered"] == "mean"
    lone = _serve(registry, models=[{"name": "svd", "kind": "onnx", "model": "svd"}], slo_ms=30)
    lone.containers[0] = _Slow("svd", 0.3)
    out = lone.process(_rows(_req(3, 1, 1)))[0].to_pylist()[0]
    assert out["default"] and out["model"] == "default" and out["prediction"] == 3.0
    assert lone.status()["counters"]["stragglers"] >= 1


def test_a_model_runs_on_the_stage_thread_only_when_the_call_is_expected_under_a_millisecond(registry):
    c = _Recording("m", [])
    assert not c.fast(1)  # never measured: its own thread
    for _ in range(30):
        c.observe(rows=10, ms=0.05)  # 5 µs per row
    assert c.fast(1) and c.fast(150) and not c.fast(400)  # 0.75 ms inline; 2 ms goes to its thread
    c.fail()
    assert not c.fast(1)  # a model that raised is kept off the stage's thread until it is fast again
    op = _serve(registry, models=[{"name": "svd", "kind": "onnx", "model": "svd"}])
    calls = []
    op.containers[0] = _Recording("svd", calls)
    for _ in range(30):
        op.containers[0].observe(rows=10, ms=0.05)
    op.process(_rows(*[_req(k, 1, 1) for k in range(20)]))
    small, calls[:] = list(calls), []
    op.process(_rows(*[_req(100 + k, 1, 1) for k in range(400)]))
    here = threading.current_thread().name
    assert sum(n for n, _ in small) == 20 and {t for _, t in small} == {here}  # in AIMD-sized chunks
    assert sum(n for n, _ in calls) == 400 and here not in {t for _, t in calls}


class _Recording(Container):
    kind = "recording"

    def __init__(self, name, calls):
        super().__init__(name, 20.0)
        self.log = calls

    def predict(self, users, items):
        self.log.append((len(users), threading.current_thread().name))
        return np.full(len(users), 4.0)


@pytest.mark.bitexact
def test_restore_continues_exactly_like_an_uninterrupted_run(registry):
    rng = np.random.default_rng(2)
    events = [_fb(n, int(rng.integers(1, 8)), int(rng.integers(1, 30)), float(rng.integers(1, 6)))
              for n in range(300)]
    probes = [_req(1000 + n, u, i) for n, (u, i) in enumerate([(1, 3), (2, 5), (7, 7), (50, 4)])]
    whole = _serve(registry)
    for k in range(0, 300, 50):
        whole.process(_rows(*events[k:k + 50]))
    expected = whole.process(_rows(*probes))[0].column("prediction").to_pylist()

    first = _serve(registry)
    for k in range(0, 150, 50):
        first.process(_rows(*events[k:k + 50]))
    blob = first.snapshot()
    records = first.store.changes()
    second = _serve(registry)
    second.restore(blob)
    for key, value in records:
        second.store.apply(key, value)
    for k in range(150, 300, 50):
        second.process(_rows(*events[k:k + 50]))
    got = second.process(_rows(*probes))[0].column("prediction").to_pylist()
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.bitexact
@pytest.mark.parametrize("policy", ["exp4", "exp3"])
def test_what_feedback_teaches_is_the_same_bits_however_the_stream_is_cut(registry, policy):
    # onnxruntime sums a row by its position in the batch: the losses learned from are computed row by row.
    rng = np.random.default_rng(3)
    events = []
    for n in range(400):
        u, i = int(rng.integers(1, 40)), int(rng.integers(1, 60))
        events.append(_fb(n, u, i, float(rng.integers(1, 6))) if n % 3 else _req(n, u, i))
    probes = [_req(1000 + n, u, i) for n, (u, i) in enumerate([(1, 3), (2, 5), (7, 7), (50, 4), (9, 59)])]

    def run(size: int) -> tuple[list, list]:
        op = _serve(registry, policy=policy)
        for k in range(0, len(events), size):
            op.process(_rows(*events[k:k + size]))
        answers = op.process(_rows(*probes))[0]
        return answers.column("prediction").to_pylist(), op.policy.weight_list()

    whole = run(len(events))
    for size in (1, 7, 333):
        assert run(size) == whole, size


def test_a_promoted_version_is_swapped_in_between_batches(registry, tmp_path):
    reg = Registry(tmp_path)
    for name in ("theta", "svd"):
        src = registry.get(name)
        reg.promote(name, reg.register(name, src.read_bytes(), src.format).version)
    op = _serve(reg, refresh_s=0.0)
    assert "velox:1" in op.process(_rows(_req(1, 1, 1)))[0].to_pylist()[0]["versions"]
    src = registry.get("theta")
    reg.promote("theta", reg.register("theta", src.read_bytes(), "npz", parent=1).version)

    def versions_after_loading(n):
        # A new version loads on a background thread; batches go on meanwhile with the old one.
        for k in range(200):
            out = op.process(_rows(_req(n * 1000 + k, 1, 1)))[0].to_pylist()[0]
            if "velox:2" in out["versions"]:
                return out
            time.sleep(0.01)
        return out

    assert "velox:2" in versions_after_loading(2)["versions"]
    reg.promote("svd", reg.register("svd", b"not onnx", "onnx").version)  # a broken artifact keeps the old one
    for k in range(20):
        out = op.process(_rows(_req(3000 + k, 1, 1)))[0].to_pylist()[0]
        time.sleep(0.01)
    assert "svd:1" in out["versions"]
    assert op.containers[1]._refused == {2}


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"stages.0.models.1.kind"):
        Serve([{"kind": "mean"}, {"kind": "tensorflow"}], _path="stages.0.models")
    with pytest.raises(ConfigError, match=r"stages.0.models.0.model"):
        Serve([{"kind": "onnx"}], _path="stages.0.models")
    with pytest.raises(ConfigError, match="policy"):
        Serve([{"kind": "mean"}], policy="greedy", _path="stages.0.models")
    with pytest.raises(ConfigError, match="unique"):
        Serve([{"kind": "mean"}, {"kind": "mean"}], _path="stages.0.models")


@settings(max_examples=examples(60), deadline=None)
@given(policy=st.sampled_from(["exp4", "exp3"]),
       logw=st.lists(st.floats(-12.0, 0.0), min_size=4, max_size=4),
       cells=st.lists(st.lists(st.one_of(st.floats(-2.0, 8.0), st.just(float("nan"))), min_size=4, max_size=4),
                      min_size=1, max_size=12))
def test_segment_replies_match_the_row_by_row_reference(registry, policy, logw, cells):
    """The column-at-a-time replies against the plain reading of Clipper's rules, one row at a time: the
    Exp4 weighted mean of the models that answered (Exp3: the drawn one, else the most trusted that
    answered), clipped to the rating range; the flagged default when none answered."""
    op = _serve(registry, policy=policy)
    op.policy.logw, op.policy._w = list(logw), None
    arms = op.policy.arms
    table = np.asarray(cells, dtype=float)
    n = len(cells)
    rows, cids = list(range(n)), [f"c{k}" for k in range(n)]
    got_rows: list[dict] = []

    def reply(j, kind, **cols):
        got_rows.extend({"row": r, **{f: v[k] for f, v in cols.items()}} for k, r in enumerate(j))

    op._reply_segment(rows, np.arange(n), np.arange(n), cids, {a: table[:, j] for j, a in enumerate(arms)}, reply)
    w = op.policy.weight_list()
    fallback = op._default()
    for k, r in enumerate(got_rows):
        answered = {a: float(table[k, j]) for j, a in enumerate(arms) if np.isfinite(table[k, j])}
        assert r["answered"] == ",".join(answered)
        if not answered:
            assert r["default"] and r["model"] == "default" and r["prediction"] == fallback
            continue
        if policy == "exp4":
            want, model = op.policy.combine(answered), "exp4"
        else:
            model, _ = op.policy.choose(cids[k])
            if model not in answered:
                model = max(answered, key=lambda a: w[arms.index(a)])
            want = answered[model]
        assert not r["default"] and r["model"] == model
        assert r["prediction"] == pytest.approx(min(5.0, max(1.0, want)), rel=1e-12, abs=1e-12)
        assert r["scores"] == ",".join(f"{a}={v:.4f}" for a, v in answered.items())


def _npz(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _theta_arrays(registry) -> dict:
    import io

    with np.load(io.BytesIO(registry.get("theta").read_bytes())) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("break_it", [
    lambda a: {**a, "mu": np.zeros(0)},  # IndexError in the loader: it escaped and retried every refresh
    lambda a: {**a, "bu": a["bu"][:-3]},  # loads, then IndexError on a request
    lambda a: {**a, "P": a["P"][:, :2]},
    lambda a: {**a, "Q": np.full_like(a["Q"], np.nan)},
    lambda a: {**a, "user_ids": np.array(["x"] * len(a["user_ids"]))},
])
def test_a_malformed_version_is_refused_once_and_the_last_good_one_keeps_serving(registry, tmp_path, caplog,
                                                                              break_it):
    import logging

    reg = Registry(tmp_path)
    src = registry.get("theta")
    reg.promote("theta", reg.register("theta", src.read_bytes(), "npz").version)
    op = _serve(reg, models=[{"name": "velox", "kind": "velox", "model": "theta"}], refresh_s=0.0)
    before = op.process(_rows(_req(1, 1, 1)))[0].to_pylist()[0]
    reg.promote("theta", reg.register("theta", _npz(**break_it(_theta_arrays(registry))), "npz").version)
    with caplog.at_level(logging.WARNING):
        for k in range(40):
            out = op.process(_rows(_req(10 + k, 1, 1), _fb(k, 2, 3, 4.0)))[0].to_pylist()
            time.sleep(0.005)
    assert all(r["kind"] != "error" for r in out) and "velox:1" in out[0]["versions"]
    assert out[0]["default"] is False and before["default"] is False
    assert op.containers[0]._refused == {2}
    assert sum("serve.swap_failed" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("poison", [1e6, 1e300, -3.0, 5.5])
def test_a_thousand_poisoned_feedback_rows_change_no_models_predictions(registry, poison) -> None:
    probes = [_req(9000 + n, u, i) for n, (u, i) in enumerate([(1, 3), (2, 5), (7, 7), (50, 4)])]
    clean, poisoned = _serve(registry), _serve(registry)
    events = [_fb(n, 1 + n % 7, 1 + n % 29, float(1 + n % 5)) for n in range(200)]
    clean.process(_rows(*events))
    poisoned.process(_rows(*events))
    bad = [_fb(1000 + n, 1 + n % 7, 1 + n % 29, poison, reply="acks") for n in range(1000)]
    out = poisoned.process(_rows(*bad))[0].to_pylist()
    assert len(out) == 1000 and all(r["kind"] == "error" and "rating_range" in r["error"] for r in out)
    want = clean.process(_rows(*probes))[0]
    got = poisoned.process(_rows(*probes))[0]
    assert got.column("prediction").to_pylist() == want.column("prediction").to_pylist()
    assert poisoned.policy.weight_list() == clean.policy.weight_list()


@pytest.mark.parametrize("meta", [b"{not json", b'{"evil": 1}', b"[1, 2]", b'{"name": "theta", "version": 2}'])
def test_a_broken_registry_entry_never_silences_the_service(registry, tmp_path, meta) -> None:
    reg = Registry(tmp_path)
    src = registry.get("theta")
    reg.promote("theta", reg.register("theta", src.read_bytes(), "npz").version)
    op = _serve(reg, models=[{"name": "velox", "kind": "velox", "model": "theta"}, {"kind": "mean"}], refresh_s=0.0)
    assert "velox:1" in op.process(_rows(_req(1, 1, 1)))[0].to_pylist()[0]["versions"]
    v2 = reg.register("theta", src.read_bytes(), "npz").version
    reg.promote("theta", v2)
    (tmp_path / "theta" / str(v2) / "meta.json").write_bytes(meta)  # promoted, then broken on disk
    for k in range(30):
        out = op.process(_rows(_req(10 + k, 1, 1), _fb(k, 2, 3, 4.0)))[0].to_pylist()
        time.sleep(0.005)
    assert all(r["kind"] != "error" for r in out) and "velox:1" in out[0]["versions"]
    fresh = _serve(reg, models=[{"name": "velox", "kind": "velox", "model": "theta"}, {"kind": "mean"}])
    first = fresh.process(_rows(_req(99, 1, 1)))[0].to_pylist()[0]  # no good version at start: still answered
    assert first["kind"] == "prediction" and first["prediction"] is not None


def test_a_worker_starting_on_a_broken_newest_version_serves_the_last_good_one(registry, tmp_path) -> None:
    reg = Registry(tmp_path)
    good = reg.register("theta", registry.get("theta").read_bytes(), "npz").version
    reg.promote("theta", good)
    reg.promote("theta", reg.register("theta", _npz(**{**_theta_arrays(registry), "mu": np.zeros(0)}), "npz").version)
    op = _serve(reg, models=[{"name": "velox", "kind": "velox", "model": "theta"}])
    op.preflight()  # one promoted version loads: the worker may start
    out = op.process(_rows(_req(1, 1, 1)))[0].to_pylist()[0]
    assert out["kind"] == "prediction" and out["default"] is False and out["versions"] == f"velox:{good}"
    assert op.containers[0]._refused == {2}


@pytest.mark.parametrize("case", ["every_version_broken", "promotion_file_broken"])
def test_a_worker_fails_at_start_when_no_promoted_version_of_a_model_loads(registry, tmp_path, case) -> None:
    from dawnstream.models.registry import ModelError

    reg = Registry(tmp_path)
    for arrays in ({**_theta_arrays(registry), "mu": np.zeros(0)}, {**_theta_arrays(registry), "P": np.zeros(3)}):
        reg.promote("theta", reg.register("theta", _npz(**arrays), "npz").version)
    if case == "promotion_file_broken":
        (tmp_path / "theta" / "promoted.json").write_text("{not json")
    op = _serve(reg, models=[{"name": "velox", "kind": "velox", "model": "theta"}, {"kind": "mean"}])
    with pytest.raises(ModelError) as e:
        op.preflight()
    if case == "every_version_broken":
        assert "no promoted version of 'theta'" in str(e.value) and "version 2:" in str(e.value)
        assert "version 1:" in str(e.value) and "dawnstream models promote theta" in str(e.value)
    else:
        assert "promoted.json" in str(e.value)
    # Nothing promoted yet is a cold start, not an error: answers come without the model (flagged default).
    cold = Registry(tmp_path / "cold")
    cold.register("theta", registry.get("theta").read_bytes(), "npz")
    op = _serve(cold, models=[{"name": "velox", "kind": "velox", "model": "theta"}, {"kind": "mean"}])
    op.preflight()
    assert op.process(_rows(_req(1, 1, 1)))[0].to_pylist()[0]["kind"] == "prediction"
