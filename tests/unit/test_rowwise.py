"""Per-row arithmetic (:mod:`dawnstream.operators.rowwise`): a row's result is the same bits alone or in
any batch, and equals the plain numpy expression up to rounding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from propkit import examples

from dawnstream.operators.rowwise import quadratic_form, row_dot, row_sum, softmax_rows

# Results promised bit for bit: `make test` runs these again under a second OpenBLAS kernel.
pytestmark = pytest.mark.bitexact

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


def matrices(cols: int) -> st.SearchStrategy[np.ndarray]:
    return st.integers(1, 40).flatmap(lambda n: arrays(np.float64, (n, cols), elements=finite))


@settings(max_examples=examples(60), deadline=None)
@given(st.integers(1, 12).flatmap(matrices))
@example(np.array([[1e16, 1.0, -1e16, 1.0] * 3]))  # cancellation: a different order gives another answer
def test_each_row_alone_gives_the_bits_it_gets_in_the_batch(X: np.ndarray) -> None:
    whole = {"sum": row_sum(X), "dot": row_dot(X, X[::-1]), "soft": softmax_rows(X / 1e5),
             "quad": quadratic_form(X, np.outer(X[0], X[0]) / 1e12 + np.eye(X.shape[1]))}
    for i in range(len(X)):
        one = X[i:i + 1]
        assert row_sum(one)[0] == whole["sum"][i]
        assert row_dot(one, X[::-1][i:i + 1])[0] == whole["dot"][i]
        assert np.array_equal(softmax_rows(one / 1e5)[0], whole["soft"][i])
        assert quadratic_form(one, np.outer(X[0], X[0]) / 1e12 + np.eye(X.shape[1]))[0] == whole["quad"][i]


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(1, 6).flatmap(matrices))
def test_results_match_numpy(X: np.ndarray) -> None:
    P = np.eye(X.shape[1]) + 0.25
    assert np.allclose(row_sum(X), X.sum(axis=1), rtol=1e-9, atol=1e-3)
    assert np.allclose(quadratic_form(X, P), np.einsum("ij,jk,ik->i", X, P, X), rtol=1e-9, atol=1e-3)
    z = X / 1e5
    e = np.exp(z - z.max(axis=1, keepdims=True))
    assert np.allclose(softmax_rows(z), e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    assert np.allclose(softmax_rows(z).sum(axis=1), 1.0)
