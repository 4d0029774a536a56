"""Labeling-function statistics kept online, defined exactly as snorkel's ``LFAnalysis``.

Per LF *j*, over the *n* rows seen (``snorkel/labeling/analysis.py``):

- **coverage**: share of rows *j* labels;
- **overlaps**: share of rows *j* labels that at least one other LF labels too;
- **conflicts**: share of rows *j* labels on which two LFs (any two) vote different classes;
- **polarity**: the classes *j* has voted;
- **empirical accuracy** (rows with a gold label only): share of *j*'s votes equal to gold;
- **errors** (ours): rows on which *j* raised and was counted as abstaining.

All are counts, so partitions add them (:meth:`LFStats.merge`) and a snapshot is a few integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dawnstream.operators.labeling.votes import ABSTAIN


@dataclass
class LFStats:
    """Counts per LF (each ``(m,)`` int64) and the rows they were taken over.

    Args:
        names: the LFs' names, in label-matrix column order.
    """

    names: list[str]
    k: int = 2
    n: int = 0
    covered: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    overlapped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    conflicted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    voted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (m, k): votes per class
    gold_n: int = 0
    gold_covered: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    gold_correct: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    errors: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        m = len(self.names)
        for name in ("covered", "overlapped", "conflicted", "gold_covered", "gold_correct", "errors"):
            if getattr(self, name).size == 0:
                setattr(self, name, np.zeros(m, np.int64))
        if self.voted.size == 0:
            self.voted = np.zeros((m, self.k), np.int64)

    def add(self, L: np.ndarray, errors: np.ndarray | None = None) -> None:
        """Count a batch of rows.

        Args:
            L: ``(rows, m)`` votes in ``-1..k-1``.
            errors: ``(rows, m)`` bool, True where the LF raised on the row.
        """
        L = np.asarray(L, np.int64)  # (the label matrix is int8: a sentinel must fit the dtype)
        if L.size == 0:
            return
        votes = L != ABSTAIN
        per_row = votes.sum(axis=1)
        hi = np.where(votes, L, -1).max(axis=1)
        lo = np.where(votes, L, self.k).min(axis=1)
        conflict = (per_row > 1) & (hi != lo)
        self.n += len(L)
        self.covered += votes.sum(axis=0)
        self.overlapped += (votes & (per_row > 1)[:, None]).sum(axis=0)
        self.conflicted += (votes & conflict[:, None]).sum(axis=0)
        for y in range(self.k):
            self.voted[:, y] += (L == y).sum(axis=0)
        if errors is not None:
            self.errors += np.asarray(errors).sum(axis=0)

    def add_gold(self, L: np.ndarray, gold: np.ndarray) -> None:
        """Count the votes on rows whose gold class is known (a dev set, or rows back from review):
        only the accuracy counters move, as snorkel keeps ``L_dev`` apart from ``L_train``.

        Args:
            L: ``(rows, m)`` votes.
            gold: ``(rows,)`` gold class per row (``-1``: none, ignored).
        """
        L, g = np.asarray(L), np.asarray(gold)
        has = g >= 0
        votes = (L != ABSTAIN) & has[:, None]
        self.gold_n += int(has.sum())
        self.gold_covered += votes.sum(axis=0)
        self.gold_correct += (votes & (L == g[:, None])).sum(axis=0)

    def merge(self, other: LFStats) -> LFStats:
        """The statistics of both sets of rows."""
        if other.names != self.names or other.k != self.k:
            raise ValueError("cannot merge statistics of different labeling functions")
        return LFStats(self.names, self.k, self.n + other.n, self.covered + other.covered,
                       self.overlapped + other.overlapped, self.conflicted + other.conflicted,
                       self.voted + other.voted, self.gold_n + other.gold_n,
                       self.gold_covered + other.gold_covered, self.gold_correct + other.gold_correct,
                       self.errors + other.errors)

    def _share(self, counts: np.ndarray, of: np.ndarray | int) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nan_to_num(counts / of)

    def coverage(self) -> np.ndarray:
        """``LFAnalysis.lf_coverages()``, ``(m,)`` float64."""
        return self._share(self.covered, max(self.n, 1))

    def overlaps(self) -> np.ndarray:
        """``LFAnalysis.lf_overlaps()``."""
        return self._share(self.overlapped, max(self.n, 1))

    def conflicts(self) -> np.ndarray:
        """``LFAnalysis.lf_conflicts()``."""
        return self._share(self.conflicted, max(self.n, 1))

    def polarities(self) -> list[list[int]]:
        """``LFAnalysis.lf_polarities()``: the classes each LF has voted, sorted."""
        return [[y for y in range(self.k) if self.voted[j, y]] for j in range(len(self.names))]

    def empirical_accuracies(self) -> np.ndarray:
        """``LFAnalysis.lf_empirical_accuracies(Y)`` over the rows that had gold (0 where an LF voted on none)."""
        return self._share(self.gold_correct, self.gold_covered)

    def summary(self) -> list[dict]:
        """One dict per LF: name, polarity, coverage, overlaps, conflicts, errors, and empirical accuracy
        once gold labels arrived - snorkel's ``lf_summary`` columns."""
        rows = []
        acc = self.empirical_accuracies()
        for j, name in enumerate(self.names):
            row = {"lf": name, "polarity": self.polarities()[j], "coverage": float(self.coverage()[j]),
                   "overlaps": float(self.overlaps()[j]), "conflicts": float(self.conflicts()[j]),
                   "errors": int(self.errors[j])}
            if self.gold_n:
                row["emp_accuracy"] = float(acc[j])
                row["correct"] = int(self.gold_correct[j])
                row["incorrect"] = int(self.gold_covered[j] - self.gold_correct[j])
            rows.append(row)
        return rows

    def state(self) -> dict:
        return {"names": self.names, "k": self.k, "n": self.n, "gold_n": self.gold_n,
                **{f: getattr(self, f).tolist() for f in ("covered", "overlapped", "conflicted", "voted",
                                                           "gold_covered", "gold_correct", "errors")}}

    @classmethod
    def from_state(cls, s: dict) -> LFStats:
        arr = {f: np.asarray(s[f], np.int64) for f in ("covered", "overlapped", "conflicted", "voted",
                                                       "gold_covered", "gold_correct", "errors")}
        return cls(list(s["names"]), int(s["k"]), int(s["n"]), gold_n=int(s["gold_n"]), **arr)
