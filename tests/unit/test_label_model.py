"""Label models and LF statistics from vote statistics, against snorkel 0.10 (the reference, test-only)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.operators.labeling.label_model import fit_matrix_completion, fit_triplets, majority_vote
from dawnstream.operators.labeling.lf_stats import LFStats
from dawnstream.operators.labeling.votes import VoteStats

# Results promised bit for bit: `make test` runs these again under a second OpenBLAS kernel.
pytestmark = pytest.mark.bitexact

snorkel_labeling = pytest.importorskip("snorkel.labeling")
warnings.filterwarnings("ignore", category=FutureWarning)


def synthetic(seed: int, n: int, m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Conditionally independent LFs with accuracies in [0.55, 0.9] and coverages in [0.1, 0.9]."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    L = np.full((n, m), -1, np.int64)
    for j in range(m):
        votes = rng.random(n) < rng.uniform(0.1, 0.9)
        right = rng.random(n) < rng.uniform(0.55, 0.9)
        wrong = (y + rng.integers(1, k, n)) % k
        L[votes, j] = np.where(right[votes], y[votes], wrong[votes])
    return L, y


matrices = st.builds(synthetic, st.integers(0, 10_000), st.integers(200, 1500), st.integers(3, 8), st.integers(2, 4))


@settings(max_examples=examples(25), deadline=None)
@given(matrices, st.integers(0, 1000))
def test_matrix_completion_equals_snorkels_label_model(data, seed) -> None:
    from snorkel.labeling.model import LabelModel

    L, _ = data
    k = int(max(L.max() + 1, 2))
    ref = LabelModel(cardinality=k, verbose=False)
    ref.fit(L, seed=seed, progress_bar=False)
    stats = VoteStats(L.shape[1], k)
    stats.add(L)
    ours = fit_matrix_completion(stats, seed=seed)
    assert np.abs(ours.mu - ref.mu.detach().numpy()).max() < 1e-5  # float32 torch vs float64 numpy
    assert np.abs(ours.predict_proba(L) - ref.predict_proba(L)).max() < 1e-4
    assert np.abs(ours.accuracies() - ref.get_weights()).max() < 1e-5


@settings(max_examples=examples(20), deadline=None)
@given(matrices, st.lists(st.integers(0, 2000), min_size=3, max_size=3))
def test_statistics_merged_from_four_partitions_give_the_same_model(data, cuts) -> None:
    L, _ = data
    k = int(max(L.max() + 1, 2))
    whole = VoteStats(L.shape[1], k)
    whole.add(L)
    edges = [0, *sorted(min(c, len(L)) for c in cuts), len(L)]
    parts = []
    for a, b in zip(edges, edges[1:], strict=False):
        s = VoteStats(L.shape[1], k)
        s.add(L[a:b])
        parts.append(s)
    merged = parts[0].merge(parts[1]).merge(parts[2]).merge(parts[3])
    assert merged.n == whole.n and np.array_equal(merged.S, whole.S)
    a, b = fit_matrix_completion(whole, seed=3), fit_matrix_completion(merged, seed=3)
    assert np.array_equal(a.predict_proba(L), b.predict_proba(L))


@settings(max_examples=examples(30), deadline=None)
@given(matrices, st.integers(0, 10_000))
def test_lf_statistics_equal_snorkels_lf_analysis(data, seed) -> None:
    from snorkel.labeling import LFAnalysis

    L, y = data
    k = int(max(L.max() + 1, 2))
    gold = np.where(np.random.default_rng(seed).random(len(y)) < 0.5, y, -1)
    stats = LFStats([f"lf{j}" for j in range(L.shape[1])], k)
    half = len(L) // 3
    stats.add(L[:half].astype(np.int8))  # the stage's label matrices are int8
    stats.add_gold(L[:half], gold[:half])
    rest = LFStats(stats.names, k)
    rest.add(L[half:])
    rest.add_gold(L[half:], gold[half:])
    stats = stats.merge(rest)
    ref = LFAnalysis(L)
    assert np.allclose(stats.coverage(), ref.lf_coverages(), atol=0, rtol=1e-12)
    assert np.allclose(stats.overlaps(), ref.lf_overlaps(), atol=0, rtol=1e-12)
    assert np.allclose(stats.conflicts(), ref.lf_conflicts(), atol=0, rtol=1e-12)
    assert stats.polarities() == ref.lf_polarities()
    has = gold >= 0
    assert np.allclose(stats.empirical_accuracies(), LFAnalysis(L[has]).lf_empirical_accuracies(gold[has]))


def test_a_row_where_every_lf_abstains_gets_the_class_prior() -> None:
    L, _ = synthetic(1, 2000, 5, 2)
    stats = VoteStats(5, 2)
    stats.add(L)
    model = fit_matrix_completion(stats, class_balance=[0.3, 0.7])
    probs = model.predict_proba(np.array([[-1] * 5, L[0]]))
    assert probs[0].tolist() == pytest.approx([0.3, 0.7])
    assert probs[1].tolist() != pytest.approx([0.3, 0.7])


def test_triplets_recover_the_accuracies_of_independent_lfs() -> None:
    rng = np.random.default_rng(5)
    n, accs = 200_000, np.array([0.9, 0.8, 0.7, 0.65, 0.85])
    y = rng.integers(0, 2, n)
    L = np.full((n, 5), -1)
    for j, a in enumerate(accs):
        v = rng.random(n) < 0.6
        L[v, j] = np.where(rng.random(v.sum()) < a, y[v], 1 - y[v])
    stats = VoteStats(5, 2)
    stats.add(L)
    model = fit_triplets(stats)
    assert np.abs(model.accuracies() - accs).max() < 0.02
    covered = (L != -1).any(axis=1)
    assert (model.predict_proba(L)[covered].argmax(1) == y[covered]).mean() > 0.85


def test_majority_vote_agrees_with_snorkels_where_there_is_a_majority() -> None:
    from snorkel.labeling.model import MajorityLabelVoter

    L, _ = synthetic(2, 3000, 6, 3)
    ours = majority_vote(L, 3)
    ref = MajorityLabelVoter(cardinality=3).predict_proba(L)
    clear = ours.max(axis=1) == 1.0
    assert clear.sum() > 1000 and np.allclose(ours[clear], ref[clear])


def test_scaling_forgets_old_rows() -> None:
    old, _ = synthetic(3, 1000, 4, 2)
    stats = VoteStats(4, 2)
    stats.add(old)
    stats.scale(0.5)
    stats.add(old[:10])
    assert stats.n == pytest.approx(510)
    assert stats.coverage() == pytest.approx(((old != -1).sum(0) * 0.5 + (old[:10] != -1).sum(0)) / 510)


def test_bad_votes_and_too_few_lfs_say_what_is_wrong() -> None:
    stats = VoteStats(2, 2)
    with pytest.raises(ValueError, match="votes must be in -1..1"):
        stats.add(np.array([[0, 2]]))
    stats.add(np.array([[0, 1]]))
    with pytest.raises(ValueError, match="at least 3 labeling functions"):
        fit_matrix_completion(stats)


def test_dependency_aware_model_finds_copied_lfs_and_beats_the_independent_fit() -> None:
    from dawnstream.operators.labeling.label_model import fit_dependency_aware

    rng = np.random.default_rng(11)
    n = 20_000
    y = rng.integers(0, 2, n)
    cols = []
    for acc in (0.85, 0.8, 0.75, 0.8, 0.7):
        v = rng.random(n) < 0.5
        col = np.full(n, -1)
        col[v] = np.where(rng.random(v.sum()) < acc, y[v], 1 - y[v])
        cols.append(col)
    v = rng.random(n) < 0.6
    bad = np.full(n, -1)
    bad[v] = np.where(rng.random(v.sum()) < 0.58, y[v], 1 - y[v])
    L = np.stack([*cols, bad, bad, bad], axis=1)  # one weak LF written three times
    stats = VoteStats(L.shape[1], 2)
    stats.add(L)
    plain = fit_matrix_completion(stats, seed=0)
    aware = fit_dependency_aware(stats, seed=0, gate=False)
    assert {(5, 6), (5, 7), (6, 7)} <= set(aware.dependent or [])
    assert aware.weights is not None and aware.weights[5:].max() < aware.weights[:5].min()
    covered = (L != -1).any(axis=1)
    acc = lambda m: (m.predict_proba(L)[covered].argmax(1) == y[covered]).mean()  # noqa: E731
    assert acc(aware) > acc(plain) + 0.01
    # gated on held-out gold rows (here the first 2,000, as a dev set would be), it keeps the better model
    gated = fit_dependency_aware(stats, seed=0, held_out=(L[:2000], y[:2000]))
    assert gated.dependent == aware.dependent and gated.held_out_scores["dependency_aware"] > \
        gated.held_out_scores["matrix_completion"]
    assert fit_dependency_aware(stats, seed=0).dependent is None  # no held-out rows: plain matrix completion
