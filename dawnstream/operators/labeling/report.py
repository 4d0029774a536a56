"""The LF table and the label model's score on gold, for iterating on LFs from a file (``dawnstream lfs``).

The table has snorkel's ``LFAnalysis.lf_summary`` columns (polarity, coverage, overlaps, conflicts, and
with gold: correct, incorrect, empirical accuracy; ``snorkel/labeling/analysis.py``), plus the label
model's learned accuracy per LF and our ``errors`` (rows on which the LF raised or voted no class) with
the last error's text. The score is snorkel's ``LabelModel.score`` (accuracy on the covered rows with
gold, ``tie_break_policy="abstain"`` counted as not covered) for the model refitted on every row, next to
majority vote on the same rows and the labels the stream gave (the online model, fitted on the rows
before each one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dawnstream.operators.labeling.label import Label
from dawnstream.operators.labeling.label_model import majority_vote
from dawnstream.operators.labeling.lf_stats import LFStats
from dawnstream.operators.labeling.votes import ABSTAIN

COLUMNS = ("polarity", "coverage", "overlaps", "conflicts", "errors", "learned_accuracy", "correct", "incorrect",
           "emp_accuracy")


def lf_table(stage: Label, L: np.ndarray | None = None, gold: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One dict per LF: :meth:`Label.summary` (statistics over the rows the stage trained on), with
    ``correct``/``incorrect``/``emp_accuracy`` recomputed from ``L`` ``(rows, m)`` int8 votes and ``gold``
    ``(rows,)`` int64 class per row (-1: none) when given."""
    rows = stage.summary()
    if L is not None and gold is not None and (gold >= 0).any():
        g = LFStats([lf.name for lf in stage.lfs], stage.k)
        g.add_gold(L, gold)
        acc = g.empirical_accuracies()
        for j, row in enumerate(rows):
            row["correct"] = int(g.gold_correct[j])
            row["incorrect"] = int(g.gold_covered[j] - g.gold_correct[j])
            row["emp_accuracy"] = float(acc[j])
    return rows


def _accuracy(pred: np.ndarray, gold: np.ndarray) -> dict[str, float | int]:
    scored = (gold >= 0) & (pred >= 0)
    return {"accuracy": round(float((pred[scored] == gold[scored]).mean()), 4) if scored.any() else float("nan"),
            "rows": int(scored.sum()), "coverage": round(float(scored.sum() / max(int((gold >= 0).sum()), 1)), 4)}


def _argmax_or_abstain(probs: np.ndarray) -> np.ndarray:
    """snorkel's ``tie_break_policy="abstain"``: -1 where the top probability is shared."""
    top = probs.max(axis=1, keepdims=True)
    tied = (np.abs(probs - top) < 1e-9).sum(axis=1) > 1
    return np.where(tied, ABSTAIN, probs.argmax(axis=1))


def model_scores(stage: Label, L: np.ndarray, gold: np.ndarray, online: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy on the rows with gold (``gold`` ``(rows,)`` int64, -1: none) that some LF covers, for: the
    stage's model refitted on all its statistics and applied to ``L`` (``label_model``), majority vote
    (``majority``), and the labels the stream gave (``online``, ``(rows,)`` int, -1: none), each with the
    number of rows scored and their share of the gold rows."""
    covered = (L != ABSTAIN).any(axis=1)
    g = np.where(covered, gold, -1)
    out: dict[str, Any] = {"gold_rows": int((gold >= 0).sum()), "covered_gold_rows": int((g >= 0).sum())}
    if stage.model != "majority":
        stage.refit(with_open_block=True)
    if stage.params is not None and stage.model != "majority":
        out[stage.model] = _accuracy(_argmax_or_abstain(stage.params.predict_proba(L)), g)
    out["majority"] = _accuracy(_argmax_or_abstain(majority_vote(L, stage.k)), g)
    if online is not None:
        out["online"] = _accuracy(np.where(covered, online, -1), g)
    return out
