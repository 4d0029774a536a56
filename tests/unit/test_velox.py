"""Velox hybrid learner: online ridge equals the batch solution; θ swaps; golden RMSE on MovieLens."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.models.mf import BiasedMF, fit_als
from dawnstream.operators.learning.online_ridge import ridge_batch, sm_update
from dawnstream.operators.learning.velox import UserState, VeloxModel


@settings(max_examples=examples(60), deadline=None)
@given(n=st.integers(1, 30), d=st.integers(1, 6), lam=st.floats(0.1, 20.0), seed=st.integers(0, 2**16))
def test_sherman_morrison_matches_batch_ridge(n, d, lam, seed):
    rng = np.random.default_rng(seed)
    X, y, prior = rng.normal(size=(n, d)), rng.normal(size=n) * 3, rng.normal(size=d)
    a_inv, s, w = np.eye(d) / lam, np.zeros(d), prior.copy()
    for x, t in zip(X, y, strict=True):
        sm_update(a_inv, s, w, x.copy(), float(t), prior, lam)
    ref_a, ref_s, ref_w = ridge_batch(X, y, prior, lam)
    np.testing.assert_allclose(w, ref_w, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(a_inv, ref_a, rtol=1e-6, atol=1e-9)


def _theta(seed: int, k: int = 3) -> BiasedMF:
    rng = np.random.default_rng(seed)
    items = np.arange(10, 20, dtype=np.int64)
    return BiasedMF(3.5, np.array([1, 2], dtype=np.int64), rng.normal(size=(2, k)), rng.normal(size=2),
                    items, rng.normal(size=(10, k)), rng.normal(size=10) * 0.3)


@settings(max_examples=examples(30), deadline=None)
@given(events=st.lists(st.tuples(st.integers(0, 3), st.integers(8, 21), st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0])),
                       min_size=1, max_size=40), seed=st.integers(0, 1000))
def test_swap_rebuilds_as_if_learned_under_new_theta(events, seed):
    old, new = _theta(seed), _theta(seed + 1)
    swapped, fresh = VeloxModel(old, 1), VeloxModel(new, 2)
    for u, i, r in events:
        swapped.learn_one(u, i, r)
        fresh.learn_one(u, i, r)
    swapped.swap(new, 2)
    for u in range(5):
        for i in (10, 15, 99):
            assert swapped.predict_one(u, i) == pytest.approx(fresh.predict_one(u, i), rel=1e-6, abs=1e-9)


@pytest.mark.bitexact
def test_user_state_roundtrip_and_restore_from_store():
    vx = VeloxModel(_theta(0), 1)
    for i, r in [(10, 5.0), (11, 1.0), (30, 4.0)]:
        vx.learn_one(7, i, r)
    stored = vx.users[7].to_bytes()
    again = VeloxModel(_theta(0), 1)
    assert again.predict_one(7, 12, stored=stored) == pytest.approx(vx.predict_one(7, 12))
    with pytest.raises(ValueError, match="not a Velox user state"):
        UserState.from_bytes(b"garbage-bytes-here-and-more-of-them", again.prior, again.lam)


def test_without_theta_predicts_running_mean():
    vx = VeloxModel(None, 0)
    vx.learn_one(1, 1, 4.0)
    vx.learn_one(2, 2, 2.0)
    assert vx.predict_one(3, 3) == 3.0


def test_onnx_export_matches_numpy_predictions():
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(3)
    users, items = rng.integers(1, 50, 400), rng.integers(1, 80, 400)
    m = fit_als(users, items, rng.integers(1, 6, 400).astype(float), k=4, iters=3)
    sess = ort.InferenceSession(m.to_onnx())
    qu = np.array([1, 5, 49, 1000, -3, 7], dtype=np.int64)
    qi = np.array([1, 79, 500, 2, 3, -1], dtype=np.int64)
    got = sess.run(None, {"user_id": qu, "item_id": qi})[0]
    np.testing.assert_allclose(got, m.predict(qu, qi), rtol=1e-5, atol=1e-5)


def test_golden_movielens_rmse():
    """The issue's anchors on MovieLens-100k (last 20% predicted before it is learned): global mean 1.119,
    static SVD 1.029, Velox hybrid 0.954. Ours must be at least as good."""
    from dawnstream.sources import movielens

    t = movielens()
    u, i, r = (t.column(c).to_numpy() for c in ("user_id", "item_id", "rating"))
    n = int(0.8 * len(r))
    assert np.sqrt(np.mean((r[n:] - r[:n].mean()) ** 2)) == pytest.approx(1.119, abs=0.001)
    theta = fit_als(u[:n], i[:n], r[:n])
    static = np.sqrt(np.mean((r[n:] - np.clip(theta.predict(u[n:], i[n:]), 1, 5)) ** 2))
    assert static <= 1.03
    vx = VeloxModel(theta, 1, rating_range=(1.0, 5.0))
    for a, b, c in zip(u[:n].tolist(), i[:n].tolist(), r[:n].tolist(), strict=True):
        vx.learn_one(a, b, c)
    err = []
    for a, b, c in zip(u[n:].tolist(), i[n:].tolist(), r[n:].tolist(), strict=True):
        err.append(vx.predict_one(a, b) - c)
        vx.learn_one(a, b, c)
    assert np.sqrt(np.mean(np.square(err))) <= 0.955
