"""The general serving stage (``predict``) without a broker: declared schemas, any ONNX model on the user's
columns, tasks and their metrics against scikit-learn, Velox's per-key layer against batch references,
delayed feedback (out of order, twice, unknown, past the TTL), restore with feedback outstanding, and the
MovieLens numbers of the ``serve`` stage reproduced on the general path."""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.errors import ConfigError
from dawnstream.models.mf import fit_als
from dawnstream.models.registry import ModelError, Registry
from dawnstream.operators.learning.key_layer import KeyLayer
from dawnstream.operators.learning.online_ridge import ridge_batch
from dawnstream.operators.serving.features import FeatureSchema
from dawnstream.operators.serving.predict import REPLY_SCHEMA, Predict
from dawnstream.operators.serving.serve import Serve
from dawnstream.operators.serving.tasks import Task, TaskMetrics, roc_auc
from dawnstream.streams.store import KeyedStore

FEATURES = {"amount": "float64", "age": "int64", "country": "category", "emb": "vector[2]"}


# -- schema ----------------------------------------------------------------------------------------------
def _reference_ok(kind: str, v: object) -> bool:
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "float64":
        return number and math.isfinite(v)  # type: ignore[arg-type]
    if kind == "int64":
        return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63
    if kind == "category":
        return isinstance(v, str)
    return isinstance(v, list) and len(v) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                   st.text(max_size=5), st.lists(st.one_of(st.floats(), st.integers(), st.booleans(), st.text()),
                                                 max_size=3))


@settings(max_examples=examples(300), deadline=None)
@given(column=st.sampled_from(sorted(FEATURES)), value=VALUES)
def test_schema_validation_matches_the_reference(column, value) -> None:
    schema = FeatureSchema(FEATURES)
    row = {"amount": 1.0, "age": 3, "country": "NL", "emb": [0.0, 1.0], column: value}
    why = schema.problem(row)
    assert (why is None) == _reference_ok(FEATURES[column].split("[")[0], value), (value, why)
    if why is not None:
        assert repr(column) in why  # the error names the field


@pytest.mark.parametrize(("kw", "path"), [
    ({"features": {"x": "decimal"}}, "stages.features.x"),
    ({"features": {}}, "stages.features"),
    ({"task": "ranking"}, "stages.task"),
    ({"classes": ["only"]}, "stages.classes"),
    ({"models": [{"kind": "online", "over": "nothing"}]}, "stages.models.0.over"),
    ({"models": [{"kind": "prior"}, {"kind": "online", "over": "prior", "features": "e"}]}, "stages.models.1.features"),
    ({"models": [{"kind": "onnx"}]}, "stages.models.0.model"),
    ({"models": [{"kind": "onnx", "model": "m", "inputs": {"X": ["country"]}}]}, "stages.models.0.inputs.X"),
    ({"models": [{"kind": "onnx", "model": "m", "inputs": {"X": "missing"}}]}, "stages.models.0.inputs.X"),
    ({"models": [{"kind": "prior", "colour": 1}]}, "stages.models.0.colour"),
    ({"label_field": "x"}, "stages.label_field"),
])
def test_config_errors_name_the_key(kw, path) -> None:
    args = {"features": {"x": "float64", "country": "category"}, "task": "binary", "classes": ["no", "yes"],
            "models": [{"kind": "prior"}], **kw}
    with pytest.raises(ConfigError) as e:
        Predict(**args, _path="stages.0")
    assert e.value.path == path


# -- tasks and metrics ---------------------------------------------------------------------------------
def test_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p1 = np.clip(0.3 * y + rng.uniform(0, 0.7, 500), 1e-3, 1 - 1e-3)
    m = TaskMetrics(Task("binary", ["a", "b"]))
    for yi, pi in zip(y, p1, strict=True):
        m.add([1 - pi, pi], float(yi))
    got = m.values()
    assert got["log_loss"] == pytest.approx(log_loss(y, p1), rel=1e-12)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, p1 > 0.5))
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, np.floor(p1 * 1000)), rel=1e-12)  # binned scores
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, p1), abs=2e-3)
    k3 = rng.integers(0, 3, 300)
    P = rng.dirichlet([1, 1, 1], 300)
    m3 = TaskMetrics(Task("multiclass", ["a", "b", "c"]))
    for yi, pi in zip(k3, P, strict=True):
        m3.add(pi.tolist(), float(yi))
    assert m3.values()["log_loss"] == pytest.approx(log_loss(k3, P, labels=[0, 1, 2]), rel=1e-9)
    reg = TaskMetrics(Task("regression"))
    yr, pr = rng.normal(size=200), rng.normal(size=200)
    for a, b in zip(pr, yr, strict=True):
        reg.add(a, b)
    assert reg.values()["rmse"] == pytest.approx(math.sqrt(mean_squared_error(yr, pr)), rel=1e-12)


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.integers(0, 1)), min_size=2, max_size=40))
def test_roc_auc_matches_scikit_learn_with_ties(pairs) -> None:
    from sklearn.metrics import roc_auc_score

    s, y = [p for p, _ in pairs], [t for _, t in pairs]
    if len(set(y)) < 2:
        assert math.isnan(roc_auc(s, y))
    else:
        assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


# -- Velox's per-key layer against batch references ---------------------------------------------------------
def test_the_regression_layer_is_the_batch_ridge_regression() -> None:
    rng = np.random.default_rng(2)
    layer = KeyLayer("regression", lam=3.0, extra=2)
    rows = [(rng.normal(3, 1), rng.normal(size=2)) for _ in range(200)]
    ys = [2.0 + 0.5 * b + e @ [1.0, -1.0] + rng.normal(0, 0.1) for b, e in rows]
    for (b, e), y in zip(rows, ys, strict=True):
        layer.learn("k", b, y, e.tolist())
    X = np.array([[b, *e, 1.0] for b, e in rows])
    _, _, w = ridge_batch(X, np.array(ys), np.array([1.0, 0.0, 0.0, 0.0]), 3.0)
    assert np.allclose(layer.state("k").w, w, atol=1e-9)


def test_the_binary_layer_approaches_the_maximum_likelihood_fit() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    base = rng.uniform(0.05, 0.95, 6000)
    logit = np.log(base / (1 - base))
    y = (rng.random(6000) < 1 / (1 + np.exp(-(0.4 * logit + 0.8)))).astype(int)  # miscalibrated for this key
    layer = KeyLayer("binary", k=2, lam=1.0)
    for b, yi in zip(base, y, strict=True):
        layer.learn("k", [1 - b, b], float(yi))
    mle = LogisticRegression(C=1e6).fit(logit[:, None], y)
    assert layer.state("k").w == pytest.approx([mle.coef_[0, 0], mle.intercept_[0]], abs=0.1)


def test_a_key_never_seen_gets_the_population_and_untrained_layers_answer_the_model() -> None:
    layer = KeyLayer("multiclass", k=3)
    assert layer.predict("x", [0.2, 0.5, 0.3]) == pytest.approx([0.2, 0.5, 0.3])
    for _ in range(50):
        layer.learn("a", [0.2, 0.5, 0.3], 2.0)
    assert layer.predict("a", [0.2, 0.5, 0.3])[2] > 0.6
    assert layer.predict("never", [0.2, 0.5, 0.3])[2] == pytest.approx(layer.predict(None, [0.2, 0.5, 0.3])[2])


# -- the stage -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def churn(tmp_path_factory):
    """A user's scikit-learn classifier on their own columns, exported by skl2onnx, in a registry."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(11)
    X = rng.normal(size=(3000, 3)).astype(np.float32)
    plan = rng.integers(0, 2, 3000)
    y = (X @ np.array([1.5, -2.0, 0.5]) + 1.5 * plan - 0.75 + rng.normal(0, 0.5, 3000) > 0).astype(int)
    clf = LogisticRegression().fit(X, y)  # does not see the plan: the per-plan layer can learn it
    root = tmp_path_factory.mktemp("registry")
    reg = Registry(root)
    onx = to_onnx(clf, X[:1], options={"zipmap": False})
    reg.promote("churn", reg.register("churn", onx.SerializeToString(), "onnx").version)
    three = LogisticRegression().fit(X, (X[:, 0] > 0.5).astype(int) + (X[:, 1] > 0.5))
    reg.promote("tiers", reg.register("tiers", to_onnx(three, X[:1], options={"zipmap": False})
                                      .SerializeToString(), "onnx").version)
    return root, X, plan, y, clf


def _stage(root, **kw) -> Predict:
    args = {"features": {"tenure": "float64", "spend": "float64", "calls": "float64", "plan": "category"},
            "task": "binary", "classes": ["stays", "churns"],
            "models": [{"name": "lr", "kind": "onnx", "model": "churn", "inputs": {"X": ["tenure", "spend", "calls"]}},
                       {"name": "per_plan", "kind": "online", "over": "lr", "key": "plan"}, {"kind": "prior"}],
            "categories": {"plan": ["basic", "pro"]}, "registry": str(root), "slo_ms": 10_000, **kw}
    op = Predict(**args)
    op.store = KeyedStore()
    return op


def _req(k, X, plan, t=None) -> dict:
    return {"correlation_id": f"c{k}", "reply_to": "r", "tenure": float(X[k, 0]), "spend": float(X[k, 1]),
            "calls": float(X[k, 2]), "plan": ["basic", "pro"][int(plan[k])], "label": None,
            "kafka_timestamp_ms": 1_000_000 + k if t is None else t}


def _fb(k, y, t=None, label=None) -> dict:
    return {"correlation_id": f"c{k}", "reply_to": None, "tenure": None, "spend": None, "calls": None, "plan": None,
            "label": int(y[k]) if label is None else label, "kafka_timestamp_ms": 2_000_000 + k if t is None else t}


SCHEMA = pa.schema([("correlation_id", pa.string()), ("reply_to", pa.string()), ("tenure", pa.float64()),
                    ("spend", pa.float64()), ("calls", pa.float64()), ("plan", pa.string()), ("label", pa.int64()),
                    ("kafka_timestamp_ms", pa.int64())])


def _batch(rows) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(list(rows), schema=SCHEMA)


def _apply(op: Predict, rows) -> list[dict]:
    """What a runner does: drop the rows ``bad_rows`` refuses (dead letters), process the rest."""
    b = _batch(rows)
    bad = op.bad_rows(b)
    keep = [j for j in range(b.num_rows) if j not in bad]
    out = op.process(b.take(pa.array(keep, pa.int64())))
    return [r for o in out for r in o.to_pylist()]


def test_a_users_onnx_classifier_answers_its_own_probabilities(churn) -> None:
    root, X, plan, _, clf = churn
    op = _stage(root)
    out = _apply(op, [_req(k, X, plan) for k in range(200)])
    assert len(out) == 200 and all(r["kind"] == "prediction" for r in out)
    lr = [float(dict(s.split("=") for s in r["scores"].split(","))["lr"]) for r in out]
    assert np.abs(np.array(lr) - clf.predict_proba(X[:200].astype(np.float64))[:, 1]).max() < 1e-4  # 4 decimals
    assert all(r["label"] in ("stays", "churns") and abs(sum(r["probabilities"]) - 1) < 1e-9 for r in out)
    assert pa.Table.from_pylist(out, schema=REPLY_SCHEMA).num_rows == 200
    bad = _apply(op, [{**_req(900, X, plan), "plan": "gold"}, {**_req(901, X, plan), "tenure": None}])
    assert [r["kind"] for r in bad] == ["error", "error"]
    assert "'plan'" in bad[0]["error"] and "'tenure'" in bad[1]["error"]


def test_multiclass_onnx_and_its_log_loss(churn) -> None:
    from sklearn.metrics import log_loss

    root, X, plan, _, _ = churn
    truth = (X[:, 0] > 0.5).astype(int) + (X[:, 1] > 0.5)
    op = _stage(root, task="multiclass", classes=["low", "mid", "high"],
                models=[{"name": "lr", "kind": "onnx", "model": "tiers", "inputs": {"X": ["tenure", "spend", "calls"]}},
                        {"name": "per_plan", "kind": "online", "over": "lr", "key": "plan"}, {"kind": "prior"}])
    out = _apply(op, [_req(k, X, plan) for k in range(300)])
    _apply(op, [_fb(k, truth) for k in range(300)])  # a class index is a label too
    probs = [[float(v) for v in r["probabilities"]] for r in out]
    assert op.status()["metrics"]["served"]["log_loss"] == pytest.approx(log_loss(truth[:300], probs, labels=[0, 1, 2]),
                                                                        rel=1e-6)


def test_an_onnx_model_whose_inputs_do_not_match_is_refused_with_both_signatures(churn) -> None:
    root, *_ = churn
    op = _stage(root, models=[{"name": "lr", "kind": "onnx", "model": "churn", "inputs": {"X": ["tenure", "spend"]}}])
    with pytest.raises(ModelError) as e:
        op.preflight()
    msg = str(e.value)
    assert "X: tensor(float)[None, 3]" in msg and "X <- ['tenure', 'spend']: float[n, 2]" in msg
    wrong_name = _stage(root, models=[{"name": "lr", "kind": "onnx", "model": "churn",
                                       "inputs": {"features": ["tenure", "spend", "calls"]}}])
    with pytest.raises(ModelError, match="has inputs \\['X'\\], but the stage maps \\['features'\\]"):
        wrong_name.preflight()
    regression = _stage(root, task="regression", classes=None, models=[
        {"name": "lr", "kind": "onnx", "model": "churn", "inputs": {"X": ["tenure", "spend", "calls"]}}])
    with pytest.raises(ModelError, match="expected 1 finite number"):
        regression.preflight()


def test_delayed_feedback_out_of_order_twice_unknown_and_past_the_ttl(churn) -> None:
    root, X, plan, y, _ = churn
    op = _stage(root, feedback_ttl_s=60)
    _apply(op, [_req(k, X, plan, t=1_000 * k) for k in range(100)])  # request k at k s
    order = list(range(100))
    random.Random(3).shuffle(order)
    late = 100_000  # at 100 s: requests before 40 s are past the 60 s TTL
    rows = [_fb(k, y, t=late) for k in order] + [_fb(5, y, t=late), _fb(77, y, t=late), _fb(999, y, t=late),
                                                 _fb(50, y, t=late, label=7)]
    b = _batch(rows)
    bad = op.bad_rows(b)
    late_ones = {j for j, k in enumerate(order) if k < 40}  # requests more than 60 s before their feedback
    assert set(bad) == late_ones | {100, 101, 102, 103}
    assert all("TTL of 60 s" in bad[j] for j in late_ones) and "TTL" in bad[100]  # request 5, again
    assert "already applied" in bad[101]  # 77's second piece of feedback
    assert "c999" in bad[102] and "label 7 is not one of the classes" in bad[103]
    _apply(op, rows)
    assert op.counters["feedback"] == 60 and op.status()["scored"]["lr"] == 60
    # the records expire with event time: the store does not grow without bound
    _apply(op, [_req(200, X, plan, t=10_000_000)])
    assert sum(k.startswith("served/") for k in op.store) == 1 and op.counters["expired"] >= 100


def test_the_layer_learns_from_what_was_served_and_beats_the_model_per_key(churn) -> None:
    root, X, plan, y, _ = churn
    op = _stage(root)
    for s in range(0, 3000, 250):
        _apply(op, [_req(k, X, plan) for k in range(s, s + 250)])
        _apply(op, [_fb(k, y) for k in range(s, s + 250)])
    m = op.status()["metrics"]
    assert m["per_plan"]["log_loss"] < m["lr"]["log_loss"] - 0.02  # the plan effect the model never saw
    assert m["served"]["log_loss"] < m["lr"]["log_loss"]


@pytest.mark.bitexact
def test_a_restore_with_feedback_outstanding_learns_the_same_bits(churn) -> None:
    root, X, plan, y, _ = churn
    events = [_req(k, X, plan) for k in range(300)] + [_fb(k, y) for k in range(300)]
    pairs = [e for pair in zip(events[150:300], events[300:450], strict=True) for e in pair]
    events = events[:150] + pairs + events[450:]
    probes = [_req(1000 + k, X, plan) for k in range(20)]

    def run(cut: int | None) -> tuple:
        op = _stage(root)
        if cut is None:
            _apply(op, events)
        else:
            _apply(op, events[:cut])
            again = _stage(root)
            again.store = KeyedStore()
            for key, value in op.store.items():
                again.store[key] = value
            op.snapshot()
            for key, value in op.store.items():
                again.store[key] = value
            again.restore(op.snapshot())
            op = again
            _apply(op, events[cut:])
        answers = [r["probabilities"] for r in _apply(op, probes)]
        return answers, op.policy.weight_list(), op.status()["metrics"]

    whole = run(None)
    assert run(200) == whole and run(451) == whole


def test_the_general_path_reproduces_the_serve_stages_movielens_numbers() -> None:
    from dawnstream.sources import movielens

    t = movielens()
    u, i = np.asarray(t.column("user_id")), np.asarray(t.column("item_id"))
    r = np.asarray(t.column("rating"), float)
    theta = fit_als(u[:20_000], i[:20_000], r[:20_000], k=10, iters=6)
    reg = Registry(pytest.importorskip("tempfile").mkdtemp())
    reg.promote("theta", reg.register("theta", theta.to_npz(), "npz").version)
    reg.promote("svd", reg.register("svd", theta.to_onnx(), "onnx").version)
    models = [{"name": "velox", "kind": "velox", "model": "theta"}, {"name": "svd", "kind": "onnx", "model": "svd"},
              {"kind": "mean"}]
    serve = Serve(models, registry=str(reg.root), rating_range=[1, 5], slo_ms=10_000)
    general = Predict(features={"user_id": "int64", "item_id": "int64"}, task="regression", label_range=[1, 5],
                      label_field="rating", registry=str(reg.root), slo_ms=10_000,
                      models=[{"name": "svd", "kind": "onnx", "model": "svd"},
                              {"name": "velox", "kind": "online", "over": "svd", "key": "user_id", "features": "qi",
                               "lam": 8.0}, {"kind": "prior"}])
    n0, n = 20_000, 6_000
    for s in range(n0, n0 + n, 500):
        ks = range(s, s + 500)
        serve.process(pa.RecordBatch.from_pylist([{"correlation_id": f"f{k}", "reply_to": None, "user_id": int(u[k]),
                                                   "item_id": int(i[k]), "rating": float(r[k])} for k in ks]))
        rows = []
        for k in ks:  # each request, then its feedback: the order the serve stage learns in
            rows.append({"correlation_id": f"q{k}", "user_id": int(u[k]), "item_id": int(i[k]), "rating": None,
                         "kafka_timestamp_ms": k})
            rows.append({"correlation_id": f"q{k}", "user_id": None, "item_id": None, "rating": float(r[k]),
                         "kafka_timestamp_ms": k})
        general.process(pa.RecordBatch.from_pylist(rows))
    old = serve.status()["rmse"]
    new = {k: v["rmse"] for k, v in general.status()["metrics"].items()}
    assert new["svd"] == pytest.approx(old["svd"], abs=1e-4)  # the same graph (float32)
    assert new["prior"] == pytest.approx(old["mean"], abs=1e-3)  # only the first answer differs (3 vs 1)
    assert new["velox"] < old["velox"] + 0.01  # the general layer on θ's item vectors, as Velox does
    assert new["served"] < old["served"] + 0.01


@pytest.mark.bitexact
def test_what_is_learned_does_not_depend_on_batch_cuts_with_exact_onnx_and_timestamps_that_go_back(tmp_path) -> None:
    # The MF graph's ReduceSum moves answers in their last bits with the batch; `exact` calls it row by row.
    rng = np.random.default_rng(8)
    users, items = rng.integers(1, 60, 4000), rng.integers(1, 90, 4000)
    ratings = np.clip(np.round(3 + (users % 3) - (items % 2) + rng.normal(0, 0.7, 4000)), 1, 5)
    theta = fit_als(users, items, ratings, k=6, iters=4)
    reg = Registry(tmp_path)
    reg.promote("svd", reg.register("svd", theta.to_onnx(), "onnx").version)
    events, t = [], 0
    for k in range(600):
        t += int(rng.integers(-2_000, 5_000))  # Kafka timestamps from several producers: not monotonic
        u, i = int(users[k]), int(items[k])
        events.append({"correlation_id": f"q{k}", "user_id": u, "item_id": i, "rating": None, "kafka_timestamp_ms": t})
        j = k - int(rng.integers(0, 40))  # feedback for a recent request, some past the 60 s TTL, some twice
        if j >= 0:
            events.append({"correlation_id": f"q{j}", "user_id": None, "item_id": None,
                           "rating": float(ratings[j]), "kafka_timestamp_ms": t})
    schema = pa.schema([("correlation_id", pa.string()), ("user_id", pa.int64()), ("item_id", pa.int64()),
                        ("rating", pa.float64()), ("kafka_timestamp_ms", pa.int64())])

    def run(size: int) -> tuple:
        op = Predict(features={"user_id": "int64", "item_id": "int64"}, task="regression", label_range=[1, 5],
                     label_field="rating", registry=str(tmp_path), slo_ms=10_000, feedback_ttl_s=60,
                     models=[{"name": "svd", "kind": "onnx", "model": "svd", "exact": True},
                             {"name": "velox", "kind": "online", "over": "svd", "key": "user_id", "features": "qi"},
                             {"kind": "prior"}])
        op.store = KeyedStore()
        replies, refused = [], []
        for s in range(0, len(events), size):
            b = pa.RecordBatch.from_pylist(events[s:s + size], schema=schema)
            bad = op.bad_rows(b)
            refused += [(s + j, why) for j, why in sorted(bad.items())]
            keep = pa.array([j for j in range(b.num_rows) if j not in bad], pa.int64())
            replies += [{k: v for k, v in r.items() if k != "latency_ms"} for o in op.process(b.take(keep))
                        for r in o.to_pylist()]
        replies.sort(key=lambda r: r["correlation_id"])
        return replies, refused, op.policy.weight_list(), op.status()["metrics"], op.counters

    whole = run(len(events))
    assert 0 < len(whole[1]) < len(events) // 4 and whole[4]["expired"] > 0
    assert whole[4]["feedback_refused"] == 0  # bad_rows refused exactly what process() would have
    for size in (1, 7, 333):
        assert run(size) == whole, size


def test_a_model_that_missed_the_slo_is_asked_again_at_feedback_time_and_learned_from(churn) -> None:
    import time as _time

    root, X, plan, y, clf = churn
    op = _stage(root, slo_ms=30)
    _apply(op, [_req(0, X, plan)])  # loads the model
    lr = op.models[0]
    real = lr.answer

    def slow(cols, n):  # noqa: ANN001, ANN202 - the model, 0.3 s late
        _time.sleep(0.3)
        return real(cols, n)

    lr.answer = slow  # type: ignore[method-assign]
    t0 = _time.perf_counter()
    out = _apply(op, [_req(k, X, plan) for k in range(1, 40)])
    assert _time.perf_counter() - t0 < 0.25 and all(r["answered"] == "prior" for r in out)  # replied without it
    del lr.answer  # on time again
    _time.sleep(0.4)  # the late call finishes on its thread
    _apply(op, [_fb(k, y) for k in range(1, 40)])
    st = op.status()
    assert st["scored"]["lr"] == 39 and st["scored"]["per_plan"] == 39  # asked at feedback time, then learned
    assert op.models[1].layer.state("basic").n + op.models[1].layer.state("pro").n == 39
    want = clf.predict_proba(X[1:40].astype(np.float64))
    truth = y[1:40]
    from sklearn.metrics import log_loss

    assert st["metrics"]["lr"]["log_loss"] == pytest.approx(log_loss(truth, want, labels=[0, 1]), rel=1e-5)


def test_a_newly_promoted_version_is_swapped_in_between_batches_and_retrain_points_to_register(churn, tmp_path) -> None:
    import shutil

    from dawnstream.streams.config import parse_topology
    from dawnstream.streams.retrain import Retrainer

    root, X, plan, _, _ = churn
    mine = tmp_path / "registry"
    shutil.copytree(root, mine)
    op = _stage(mine, refresh_s=0.0)
    assert {r["versions"] for r in _apply(op, [_req(k, X, plan) for k in range(5)])} == {"lr:1,per_plan:0,prior:0"}
    reg = Registry(mine)
    reg.promote("churn", reg.register("churn", reg.get("churn", 1).read_bytes(), "onnx").version)
    seen: set[str] = set()
    for k in range(5, 200, 5):  # the new version loads on a thread, then is installed between two batches
        seen |= {r["versions"] for r in _apply(op, [_req(j, X, plan) for j in range(k, k + 5)])}
        if "lr:2,per_plan:0,prior:0" in seen:
            break
    assert "lr:2,per_plan:0,prior:0" in seen
    stage = {"op": "predict", "features": {"x": "float64"}, "task": "regression", "models": [{"kind": "prior"}]}
    doc = {"name": "p", "input": {"topic": "serving.x.requests.v1", "codec": "requests"},
           "outputs": [{"topic": "serving.x.replies.v1"}],
           "stages": [stage]}
    with pytest.raises(ConfigError, match="models register"):
        Retrainer(parse_topology(doc))


def test_a_sender_cannot_set_event_time(churn) -> None:
    from dawnstream.topics.codecs.requests import RequestsCodec
    from dawnstream.topics.message import Message
    from dawnstream.topics.schema import RowSchema

    body = b'{"tenure": 1.0, "spend": 1.0, "calls": 1.0, "plan": "pro", "kafka_timestamp_ms": 99999999999999}'
    m = Message(body, b"pro", [("correlation-id", b"c1"), ("reply-to", b"r")], timestamp_ms=1_700_000_000_000)
    table = RequestsCodec().decode([m], RowSchema({})).table
    assert table.column("kafka_timestamp_ms").to_pylist() == [1_700_000_000_000]  # Kafka's, not the body's
    root, X, plan, y, _ = churn
    op = _stage(root, feedback_ttl_s=60)
    now = int(__import__("time").time() * 1000)
    _apply(op, [_req(k, X, plan, t=now) for k in range(10)])
    _apply(op, [_req(10, X, plan, t=now + 365 * 86_400_000)])  # CreateTime a year ahead: counts as now
    assert not op.bad_rows(_batch([_fb(k, y, t=now + 1_000) for k in range(10)]))  # nothing expired
