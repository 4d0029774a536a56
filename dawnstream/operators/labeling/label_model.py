"""Label models fitted from vote statistics: snorkel's matrix-completion model and FlyingSquid's triplets.

Both take a :class:`~dawnstream.operators.labeling.votes.VoteStats` (``S = Uᵀ U`` and *n*), never the
rows, so a refit costs the same after a thousand rows or a million, and statistics summed over
partitions give the same model as one partition.

- :func:`fit_matrix_completion`: Ratner et al., "Training Complex Models with Multi-Task Weak
  Supervision" (AAAI'19), as snorkel 0.10's ``LabelModel.fit`` implements it: ``μ[j·k+y', y] =
  P(λ_j = y' | Y = y)`` minimising ``‖(O − μPμᵀ)∘M‖² + ‖μP1 − diag(O)‖²`` (``M`` masks each LF's own
  block) by SGD with momentum 0.9, lr 0.01, 100 steps from ``μ0 = clamp(diag(O)·prec/p)`` scaled by
  the seed's first uniform draw; then clamped to ``[ε, 1−ε]`` and the column permutation that trusts
  the LFs most (Hungarian assignment). Same arithmetic as snorkel, in float64 numpy instead of
  float32 torch.
- :func:`fit_triplets`: Fu et al., "Fast and Three-rious" (FlyingSquid, ICML'20), binary case: with
  votes in ±1 and ``a_j = E[λ_j Y | λ_j ≠ 0]``, conditionally independent LFs give
  ``E[λ_i λ_j] = a_i a_j``, so ``|a_i| = sqrt(|M_ij M_ik / M_jk|)`` in closed form, averaged (median)
  over triplets.

- :func:`fit_dependency_aware`: LFs built on overlapping lexicons are correlated, which the two above
  assume away (snorkel then clamps their accuracies to 1.0). The pairs the independent fit explains
  worst are found from S itself, taken out of the loss, and their votes down-weighted.

Prediction is the same for all (snorkel's ``predict_proba``, with per-LF weights on the log-likelihoods):
``P(Y=y | λ) ∝ p_y Π_{j voted} μ[j·k+λ_j, y]``; a row where every LF abstains gets the prior ``p``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from dawnstream.operators.labeling.votes import ABSTAIN, VoteStats
from dawnstream.operators.rowwise import softmax_rows


@dataclass
class LabelModelParams:
    """A fitted label model: ``mu`` ``(m·k, k)`` = P(λ_j = y' | Y = y), the class prior ``p`` ``(k,)``,
    and per-LF ``weights`` ``(m,)`` on each vote's log-likelihood (1: independent LFs; below 1 for LFs
    found dependent on others, :func:`fit_dependency_aware`)."""

    mu: np.ndarray
    p: np.ndarray
    coverage: np.ndarray
    weights: np.ndarray | None = None
    dependent: list[tuple[int, int]] | None = None
    held_out_scores: dict[str, float] | None = None

    @property
    def k(self) -> int:
        return len(self.p)

    def predict_proba(self, L: np.ndarray) -> np.ndarray:
        """``(n, m)`` votes -> ``(n, k)`` float64 class probabilities (all abstain: the prior).

        A row's log-likelihoods are gathered from ``log μ`` and added in LF order, then the log prior;
        no BLAS product and no reduction along an axis: a row's probabilities are the same bits
        whatever rows share its batch and whichever BLAS kernel the CPU gets (:mod:`~dawnstream.operators.rowwise`).

        Raises:
            ValueError: a vote outside ``-1..k-1`` or a number of LFs other than the model's.
        """
        L = np.asarray(L)
        k = self.k
        m = len(self.mu) // k
        if L.ndim != 2 or L.shape[1] != m:
            raise ValueError(f"expected (rows, {m}) votes, got shape {L.shape}")
        if L.size and (L.min() < ABSTAIN or L.max() >= k):
            raise ValueError(f"votes must be in -1..{k - 1}; found {int(L.min())}..{int(L.max())}")
        log_mu = np.log(self.mu)
        if self.weights is not None:
            log_mu = log_mu * np.repeat(self.weights, k)[:, None]
        logits = np.zeros((len(L), k))
        for j in range(m):
            v = L[:, j].astype(np.intp)
            voted = v != ABSTAIN
            logits[voted] += log_mu[j * k + v[voted]]
        logits += np.log(self.p)
        return softmax_rows(logits)

    def accuracies(self) -> np.ndarray:
        """Per LF, the estimated P(λ_j = Y | λ_j ≠ 0), ``(m,)`` (snorkel's ``get_weights``)."""
        k = self.k
        m = len(self.mu) // k
        acc = np.array([np.sum(np.diag(self.mu[j * k:(j + 1) * k]) * self.p) for j in range(m)])
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.clip(np.nan_to_num(acc / self.coverage), 1e-6, 1.0)

    def state(self) -> dict:
        return {"mu": self.mu.tolist(), "p": self.p.tolist(), "coverage": self.coverage.tolist(),
                "weights": None if self.weights is None else self.weights.tolist(),
                "dependent": None if self.dependent is None else [list(d) for d in self.dependent]}

    @classmethod
    def from_state(cls, s: dict) -> LabelModelParams:
        w = s.get("weights")
        dep = s.get("dependent")
        return cls(np.asarray(s["mu"], float), np.asarray(s["p"], float), np.asarray(s["coverage"], float),
                   None if w is None else np.asarray(w, float),
                   None if dep is None else [(int(a), int(b)) for a, b in dep])


def _prior(stats: VoteStats, class_balance: np.ndarray | list[float] | None) -> np.ndarray:
    if class_balance is None:
        return np.full(stats.k, 1.0 / stats.k)
    p = np.asarray(class_balance, float)
    if p.shape != (stats.k,) or np.any(p <= 0):
        raise ValueError(f"class_balance must be {stats.k} positive shares, got {p.tolist()}")
    return p / p.sum()


def fit_matrix_completion(stats: VoteStats, class_balance: np.ndarray | list[float] | None = None,
                          seed: int = 0, n_epochs: int = 100, lr: float = 0.01, l2: float = 0.0,
                          prec_init: float = 0.7, momentum: float = 0.9,
                          mu_eps: float | None = None,
                          dependent: list[tuple[int, int]] | None = None) -> LabelModelParams:
    """Snorkel's ``LabelModel.fit`` on the statistics of the rows (see the module docstring).

    Args:
        class_balance: P(Y = y), ``(k,)``; ``None``: uniform (snorkel's default).
        seed: snorkel's ``seed``; the initial μ is scaled by ``numpy.random.RandomState(seed).random_sample()``.
        dependent: LF pairs not assumed conditionally independent: their blocks of O leave the loss (as
            snorkel masks the cliques of a given dependency graph).

    Raises:
        ValueError: fewer than 3 LFs (as snorkel), no rows, or a bad ``class_balance``.
    """
    m, k = stats.m, stats.k
    if m < 3:
        raise ValueError("the label model needs at least 3 labeling functions")
    if stats.n <= 0:
        raise ValueError("no rows to fit the label model on")
    p = _prior(stats, class_balance)
    P = np.diag(p)
    moments = stats.moments
    d = m * k
    lps = np.diag(moments)
    mu_init = np.zeros((d, k))
    for j in range(m):
        for y in range(k):
            mu_init[j * k + y, y] = np.clip(lps[j * k + y] * prec_init / p[y], 0.0, 1.0)
    mu = mu_init * np.random.RandomState(seed).random_sample()
    mask = np.ones((d, d))
    for j in range(m):
        mask[j * k:(j + 1) * k, j * k:(j + 1) * k] = 0.0
    for i, j in dependent or ():
        mask[i * k:(i + 1) * k, j * k:(j + 1) * k] = 0.0
        mask[j * k:(j + 1) * k, i * k:(i + 1) * k] = 0.0
    diag_o = np.diag(moments)
    velocity = None
    for _ in range(n_epochs):
        R = (moments - mu @ P @ mu.T) * mask
        r2 = (mu @ P).sum(axis=1) - diag_o
        grad = -4.0 * R @ mu @ P + 2.0 * np.outer(r2, p) + 2.0 * l2 * l2 * (mu - mu_init) + l2 * mu
        velocity = grad if velocity is None else momentum * velocity + grad
        mu = mu - lr * velocity
    eps = mu_eps if mu_eps is not None else min(0.01, 1.0 / 10 ** np.ceil(np.log10(stats.n)))
    mu = np.clip(mu, eps, 1.0 - eps)
    mu = _break_permutation_symmetry(mu, p, m, k)
    return LabelModelParams(mu, p, stats.coverage())


def _agreement(stats: VoteStats) -> tuple[np.ndarray, np.ndarray]:
    """Two classes: ``M[i, j] = E[λ_i λ_j | both vote]`` in ±1 votes, and how many rows both voted on."""
    m, S = stats.m, stats.S
    both = np.zeros((m, m))
    agree = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            block = S[i * 2:(i + 1) * 2, j * 2:(j + 1) * 2]
            both[i, j] = block.sum()
            agree[i, j] = block[0, 0] + block[1, 1] - block[0, 1] - block[1, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(both > 0, agree / np.maximum(both, 1e-12), 0.0), both


def _accuracy_without(M: np.ndarray, both: np.ndarray, i: int, skip: set[int]) -> float | None:
    """FlyingSquid's ``|a_i|`` as the median over triplets (i, j, h) whose j, h are not in ``skip``."""
    others = [x for x in range(len(M)) if x != i and x not in skip]
    est = [np.sqrt(abs(M[i, j] * M[i, h] / M[j, h])) for j, h in itertools.combinations(others, 2)
           if abs(M[j, h]) > 1e-3 and both[i, j] > 0 and both[i, h] > 0]
    return float(np.median(est)) if est else None


def dependent_pairs(stats: VoteStats, model: LabelModelParams | None = None, factor: float = 5.0,
                    min_gap: float = 0.1) -> list[tuple[int, int]]:
    """LF pairs that are not conditionally independent given the class, found two ways from S:

    - **excess agreement** (LFs that vote both ways, two classes): ``E[λ_i λ_j]`` on rows both voted,
      in ±1 votes, against ``a_i a_j``, each accuracy estimated in closed form (FlyingSquid) from
      triplets that leave the other LF of the pair out, so near-copies cannot vouch for each other; a
      gap above ``min_gap`` and ``factor`` times the median pair's is a dependency;
    - **co-voting** (any LFs, e.g. two one-way lexicon LFs that share most of their words): the pair's
      block of ``O`` against the independent ``model``'s ``μPμᵀ``; a residual above ``factor`` times the
      median pair's is a dependency.

    The thresholds are set by the LFs at hand, not by the user.
    """
    m, k = stats.m, stats.k
    found: set[tuple[int, int]] = set()
    if k == 2:
        M, both = _agreement(stats)
        two_way: np.ndarray = np.asarray((np.diag(stats.S).reshape(m, 2) > 0).all(axis=1))
        gaps: dict[tuple[int, int], float] = {}
        for i, j in itertools.combinations(range(m), 2):
            if both[i, j] < 30 or not (two_way[i] and two_way[j]):
                continue  # too few co-votes, or a one-way LF (its agreement is all or nothing): see co-voting
            ai, aj = _accuracy_without(M, both, i, {j}), _accuracy_without(M, both, j, {i})
            if ai is not None and aj is not None:
                gaps[(i, j)] = abs(M[i, j]) - ai * aj
        if gaps:
            edge = max(min_gap, factor * float(np.median(np.maximum(list(gaps.values()), 0.0))))
            found |= {pair for pair, gap in gaps.items() if gap > edge}
    if model is not None:
        residual = np.abs(stats.moments - model.mu @ np.diag(model.p) @ model.mu.T)
        pairs = list(itertools.combinations(range(m), 2))
        r = np.array([residual[i * k:(i + 1) * k, j * k:(j + 1) * k].sum() for i, j in pairs])
        if len(r):
            edge = factor * max(float(np.median(r)), 1e-12)
            found |= {pair for pair, v in zip(pairs, r, strict=True) if v > edge}
    return sorted(found)


MIN_HELD_OUT = 100
"""Covered held-out (gold) rows :func:`fit_dependency_aware` needs before it may answer with the dependency-aware
model rather than plain matrix completion."""


def held_out_accuracy(model: LabelModelParams, L: np.ndarray, gold: np.ndarray) -> tuple[float, int]:
    """Accuracy of ``model``'s argmax on the rows of ``L`` ``(rows, m)`` some LF covers, against ``gold``
    ``(rows,)`` int, and how many rows that was."""
    covered = (np.asarray(L) != ABSTAIN).any(axis=1)
    if not covered.any():
        return float("nan"), 0
    pred = model.predict_proba(np.asarray(L)[covered]).argmax(axis=1)
    return float((pred == np.asarray(gold)[covered]).mean()), int(covered.sum())


def fit_dependency_aware(stats: VoteStats, class_balance: np.ndarray | list[float] | None = None, seed: int = 0,
                         factor: float = 5.0, shrink: float = 0.5,
                         held_out: tuple[np.ndarray, np.ndarray] | None = None,
                         min_held_out: int = MIN_HELD_OUT, gate: bool = True) -> LabelModelParams:
    """Matrix completion that learns which LFs are dependent from the statistics themselves: find the
    dependent pairs (:func:`dependent_pairs`), fit with those pairs' blocks out of the loss, and weigh
    each LF's vote by ``1 / (1 + shrink · its dependent pairs)`` so that a group of near-copies counts
    as less than that many independent votes.

    The rule is a heuristic that can lose (0.73-0.76 vs 0.76-0.77 held-out on the five-class ``debates``
    set, ``benchmarks/labeling.py``), so it is gated on held-out data: ``held_out`` = ``(L, gold)``, votes
    ``(rows, m)`` and gold classes ``(rows,)`` of rows *not* in ``stats`` (a dev set). The dependency-aware
    model is returned only when those rows include at least ``min_held_out`` covered ones and it is at
    least as accurate on them as plain matrix completion; otherwise plain matrix completion. Either way
    ``held_out_scores`` says what was compared. ``gate=False`` returns the rule's model regardless (to
    measure the rule itself).

    Raises:
        ValueError: as :func:`fit_matrix_completion`.
    """
    first = fit_matrix_completion(stats, class_balance, seed=seed)
    pairs = dependent_pairs(stats, first, factor)
    if not pairs:
        return first
    n_held = 0 if held_out is None else held_out_accuracy(first, *held_out)[1]
    if gate and (held_out is None or n_held < min_held_out):
        first.held_out_scores = {"rows": n_held, "needed": min_held_out}
        return first
    model = fit_matrix_completion(stats, class_balance, seed=seed, dependent=pairs)
    degree = np.zeros(stats.m)
    for i, j in pairs:
        degree[i] += 1
        degree[j] += 1
    model.weights = 1.0 / (1.0 + shrink * degree)
    model.dependent = pairs
    if held_out is None:
        return model
    plain, aware = held_out_accuracy(first, *held_out)[0], held_out_accuracy(model, *held_out)[0]
    scores = {"rows": n_held, "matrix_completion": plain, "dependency_aware": aware}
    chosen = model if aware >= plain or not gate else first
    chosen.held_out_scores = scores
    return chosen


def _break_permutation_symmetry(mu: np.ndarray, p: np.ndarray, m: int, k: int) -> np.ndarray:
    """Among column permutations that leave the loss unchanged (classes with equal prior), pick the one
    maximising Σ_j Σ_y P(λ_j = y, Y = y): the LFs are trusted to be better than adversarial."""
    from scipy.optimize import linear_sum_assignment

    probs_sum = sum(mu[j * k:(j + 1) * k] for j in range(m)) @ np.diag(p)
    Z = np.zeros((k, k))
    groups: dict[float, list[int]] = {}
    for i, f in enumerate(p):
        groups.setdefault(round(float(f), 3), []).append(i)
    for group in groups.values():
        if len(group) == 1:
            Z[group[0], group[0]] = 1.0
            continue
        proj = probs_sum[np.ix_(group, group)]
        rows, cols = linear_sum_assignment(-proj.T)
        for i, j in zip(rows, cols, strict=True):
            Z[group[i], group[j]] = 1.0
    return mu @ Z


def fit_triplets(stats: VoteStats, class_balance: np.ndarray | list[float] | None = None,
                 mu_eps: float = 0.01) -> LabelModelParams:
    """FlyingSquid's closed-form estimate for two classes (see the module docstring).

    Each LF's accuracy ``(1 + a_j)/2`` on the rows it labels becomes ``μ[j·k+y, y] = cov_j·acc_j`` and
    ``μ[j·k+y', y] = cov_j·(1 − acc_j)`` (abstaining independently of Y, FlyingSquid's assumption).

    Raises:
        ValueError: ``k != 2``, fewer than 3 LFs, or no rows.
    """
    m, k = stats.m, stats.k
    if k != 2:
        raise ValueError("the triplet label model handles two classes")
    if m < 3:
        raise ValueError("the label model needs at least 3 labeling functions")
    if stats.n <= 0:
        raise ValueError("no rows to fit the label model on")
    p = _prior(stats, class_balance)
    M, both = _agreement(stats)
    a = np.full(m, 0.4)  # accuracy 0.7 when no triplet says anything (snorkel's prec_init)
    for i in range(m):
        est = []
        for j, h in itertools.combinations([x for x in range(m) if x != i], 2):
            if abs(M[j, h]) > 1e-3 and both[i, j] > 0 and both[i, h] > 0 and both[j, h] > 0:
                est.append(np.sqrt(abs(M[i, j] * M[i, h] / M[j, h])))
        if est:
            a[i] = float(np.median(est))
    acc = np.clip((1.0 + a) / 2.0, 0.5 + mu_eps, 1.0 - mu_eps)
    cov = stats.coverage()
    mu = np.zeros((2 * m, 2))
    for j in range(m):
        for y in range(2):
            mu[j * 2 + y, y] = cov[j] * acc[j]
            mu[j * 2 + (1 - y), y] = cov[j] * (1.0 - acc[j])
    return LabelModelParams(np.clip(mu, mu_eps * 1e-2, 1.0), p, cov)


def majority_vote(L: np.ndarray, k: int) -> np.ndarray:
    """Class probabilities by majority vote, ``(n, k)``: the share of non-abstaining votes per class
    (all abstain: uniform). Ties are split evenly, as snorkel's ``MajorityLabelVoter`` breaks them at random."""
    L = np.asarray(L)
    counts = np.stack([(L == y).sum(axis=1) for y in range(k)], axis=1).astype(float)
    top = counts.max(axis=1, keepdims=True)
    winners = (counts == top) & (top > 0)
    out = np.where(winners, 1.0, 0.0)
    out[top[:, 0] == 0] = 1.0
    return out / out.sum(axis=1, keepdims=True)


__all__ = ["ABSTAIN", "LabelModelParams", "dependent_pairs", "fit_dependency_aware", "fit_matrix_completion",
           "fit_triplets", "majority_vote"]
