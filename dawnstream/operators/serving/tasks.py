"""What a ``predict`` stage predicts: a number (regression) or a class (binary / multi-class classification).

A task fixes the shape of a prediction (a float, or ``k`` class probabilities), how a label is read
from feedback, the loss the selection policy learns from, and the metrics reported live:

- ``regression``: squared loss; RMSE. Exp3/Exp4 see the squared error divided by ``scale`` (the
  label range's width squared, or the running variance of the labels), capped at 1.
- ``binary`` / ``multiclass``: log loss; accuracy, log loss and (binary) ROC-AUC. A label is a class
  name or its index. Exp3/Exp4 see the log loss divided by ``ln(1/ε)`` with ``ε = 1e-4``, capped at 1
  (a model that gave the true class less than 1e-4 is as wrong as a model can be).

Metrics follow scikit-learn's definitions (``mean_squared_error``, ``log_loss``, ``roc_auc_score``);
the tests compare them to it.

>>> t = Task("binary", classes=["rotten", "fresh"])
>>> t.label("fresh"), t.label(0), t.label("meh")[1]
((1.0, None), (0.0, None), "label 'meh' is not one of the classes rotten, fresh")
>>> round(t.loss([0.2, 0.8], 1.0), 4)
0.2231
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dawnstream.errors import ConfigError

TASKS = ("regression", "binary", "multiclass")
EPS = 1e-4
"""Smallest probability a log loss is computed with (scikit-learn clips at machine epsilon; bandit losses
need a bound)."""
AUC_BINS = 1000
"""The live ROC-AUC sorts scores into this many equal bins of [0, 1] (ties within a bin count half): exact
for the scores rounded down to 1/1000, and a state of two small histograms however long the stream."""


class Task:
    """The prediction task.

    Args:
        kind: ``regression``, ``binary`` or ``multiclass``.
        classes: class names in the order a model's probabilities come in (classification; ``binary``
            needs exactly two, the second being the positive class).
        label_range: ``[low, high]`` for regression: predictions are clipped to it, feedback outside it is
            refused, and bandit losses are scaled by its width squared.
        path: config key path for errors.

    Raises:
        ConfigError: unknown kind, missing or wrong classes, a bad range.
    """

    def __init__(self, kind: str, classes: list[str] | None = None, label_range: list[float] | None = None,
                 path: str = "stages") -> None:
        if kind not in TASKS:
            raise ConfigError(f"{path}.task", f"expected one of {', '.join(TASKS)}, got {kind!r}")
        self.kind = kind
        self.classes = [str(c) for c in (classes or [])]
        if kind == "regression":
            if classes:
                raise ConfigError(f"{path}.classes", "a regression predicts a number: remove classes")
        else:
            want = "exactly 2" if kind == "binary" else "at least 2"
            if len(self.classes) < 2 or (kind == "binary" and len(self.classes) != 2) \
                    or len(set(self.classes)) != len(self.classes):
                raise ConfigError(f"{path}.classes", f"a {kind} task needs {want} distinct class names, "
                                                     f"got {classes!r}")
        self.range: tuple[float, float] | None = None
        if label_range is not None:
            if kind != "regression" or len(label_range) != 2 or not float(label_range[0]) < float(label_range[1]):
                raise ConfigError(f"{path}.label_range", f"expected [low, high] with low < high for a regression, "
                                                         f"got {label_range!r}")
            self.range = (float(label_range[0]), float(label_range[1]))
        self.index = {c: j for j, c in enumerate(self.classes)}

    @property
    def k(self) -> int:
        """Width of a prediction: 1 (regression) or the number of classes."""
        return 1 if self.kind == "regression" else len(self.classes)

    def label(self, v: Any) -> tuple[float | None, str | None]:
        """``(label, None)`` (a float; the class index for classification), or ``(None, why)``."""
        if self.kind == "regression":
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                return None, f"label must be a finite number, got {v!r:.60}"
            if self.range is not None and not self.range[0] <= v <= self.range[1]:
                return None, (f"label {v!r} is outside label_range [{self.range[0]:g}, {self.range[1]:g}]: "
                              "nothing was learned from it")
            return float(v), None
        if isinstance(v, str) and v in self.index:
            return float(self.index[v]), None
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(self.classes):
            return float(v), None
        if isinstance(v, float) and v.is_integer() and 0 <= v < len(self.classes):
            return float(v), None
        return None, f"label {v!r:.60} is not one of the classes {', '.join(self.classes)}"

    def clip(self, p: Any) -> Any:
        """A regression prediction clipped to the label range; class probabilities floored at 0 and
        renormalised (a model's rounding must not give a negative probability)."""
        if self.kind == "regression":
            v = float(p)
            return v if self.range is None else min(max(v, self.range[0]), self.range[1])
        q = [max(float(x), 0.0) if math.isfinite(x) else 0.0 for x in p]
        total = sum(q)
        return [x / total for x in q] if total > 0 else [1.0 / len(q)] * len(q)

    def loss(self, p: Any, y: float) -> float:
        """The task's loss of prediction ``p`` for label ``y``: squared error, or log loss (natural log)."""
        if self.kind == "regression":
            return (float(p) - y) ** 2
        return -math.log(max(float(p[int(y)]), EPS))

    def bandit_loss(self, p: Any, y: float, scale: float) -> float:
        """The loss Exp3/Exp4 learn from, in [0, 1] (see the module docstring)."""
        if self.kind == "regression":
            return min(self.loss(p, y) / scale, 1.0)
        return min(self.loss(p, y) / -math.log(EPS), 1.0)

    def decide(self, p: Any) -> str | None:
        """The class a probability vector picks (None for regression)."""
        if self.kind == "regression":
            return None
        return self.classes[int(np.argmax(p))]


class TaskMetrics:
    """Running metrics of one model's answers on feedback (progressive validation: each answer was made
    before its label was learned). Regression: RMSE; classification: log loss, accuracy, ROC-AUC (binary,
    from score histograms, :data:`AUC_BINS`)."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.n = 0
        self.loss_sum = 0.0
        self.correct = 0
        self.bins: tuple[dict[int, int], dict[int, int]] = ({}, {})  # negatives', positives' score bins

    def add(self, p: Any, y: float) -> None:
        """One answer ``p`` and its label ``y``."""
        self.n += 1
        self.loss_sum += self.task.loss(p, y)
        if self.task.kind != "regression":
            self.correct += int(int(np.argmax(p)) == int(y))
            if self.task.kind == "binary":
                b = min(max(int(float(p[1]) * AUC_BINS), 0), AUC_BINS - 1)
                counts = self.bins[int(y)]
                counts[b] = counts.get(b, 0) + 1

    def values(self) -> dict[str, float]:
        """``{rmse}`` or ``{log_loss, accuracy, roc_auc}`` (NaN before any feedback)."""
        if self.task.kind == "regression":
            return {"rmse": math.sqrt(self.loss_sum / self.n) if self.n else math.nan}
        out = {"log_loss": self.loss_sum / self.n if self.n else math.nan,
               "accuracy": self.correct / self.n if self.n else math.nan}
        if self.task.kind == "binary":
            out["roc_auc"] = binned_auc(*self.bins)
        return out

    def state(self) -> dict[str, Any]:
        return {"n": self.n, "loss_sum": self.loss_sum, "correct": self.correct,
                "bins": [{str(b): c for b, c in sorted(h.items())} for h in self.bins]}

    def load(self, state: dict[str, Any]) -> None:
        self.n, self.loss_sum = int(state.get("n", 0)), float(state.get("loss_sum", 0.0))
        self.correct = int(state.get("correct", 0))
        got = state.get("bins", [{}, {}])
        self.bins = ({int(b): int(c) for b, c in got[0].items()}, {int(b): int(c) for b, c in got[1].items()})


def binned_auc(neg: dict[int, int], pos: dict[int, int]) -> float:
    """ROC-AUC from score histograms (bin -> count of negatives, of positives); NaN with one class only.

    >>> binned_auc({1: 1, 4: 1}, {3: 1, 8: 1})   # scores 0.1, 0.4 (negatives), 0.35, 0.8 (positives)
    0.75
    """
    n_neg, n_pos = sum(neg.values()), sum(pos.values())
    if not n_neg or not n_pos:
        return math.nan
    below = 0  # negatives in lower bins
    total = 0.0
    for b in sorted(set(neg) | set(pos)):
        p, q = pos.get(b, 0), neg.get(b, 0)
        total += p * (below + 0.5 * q)
        below += q
    return total / (n_pos * n_neg)


def roc_auc(scores: list[float] | np.ndarray, labels: list[int] | np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half); NaN with one class only.

    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))
