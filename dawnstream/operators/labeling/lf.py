"""Labeling functions: row-wise for convenience, vectorized over an Arrow batch for speed.

A labeling function (LF) votes a class ``0..k-1`` for a row or abstains (:data:`ABSTAIN` = -1)
(Snorkel, Ratner et al., VLDB'18, section 2). Two forms:

- **row-wise**: ``@labeling_function(name=...)`` on ``f(row: dict, **resources) -> int``, as in
  snorkel; called once per row.
- **vectorized**: ``@labeling_function(name=..., vectorized=True)`` on ``f(batch: LFBatch,
  **resources) -> array of int`` (one vote per row), or built by :func:`keyword_lf`,
  :func:`regex_lf` and :func:`lexicon_lf`, which run through ``pyarrow.compute`` and one tokenization
  of the batch shared by every LF (:class:`LFBatch`).

An LF that raises abstains: a row-wise LF on that row, a vectorized one on the whole batch; either
way each such row is counted in the LF's ``errors`` statistic, and the row itself goes on.

>>> from dawnstream.operators.labeling.lf import ABSTAIN, LFBatch, keyword_lf, labeling_function
>>> import pyarrow as pa
>>> @labeling_function(name="short")
... def short(row):
...     return 0 if len(row["text"]) < 15 else ABSTAIN
>>> dull = keyword_lf("dull", ["dull", "boring"], label=0)
>>> batch = LFBatch(pa.record_batch({"text": ["Dull, boring.", "A long and lovely film."]}))
>>> short.apply(batch)[0].tolist(), dull.apply(batch)[0].tolist()
([0, -1], [0, -1])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dawnstream.operators.labeling.votes import ABSTAIN

TOKEN_PATTERN = r"[^a-z0-9']+"
"""Token separators after lower-casing (apostrophes stay: ``don't``, ``isn't``)."""


class LFBatch:
    """One Arrow batch as LFs see it, with what they share computed once.

    Args:
        batch: the rows; ``text`` names the column tokenized for lexicon LFs.
    """

    def __init__(self, batch: pa.RecordBatch, text: str = "text") -> None:
        self.batch = batch
        self.text_column = text
        self.num_rows = batch.num_rows
        self._lower: pa.Array | None = None
        self._tokens: tuple[pa.Array, np.ndarray] | None = None
        self._rows: list[dict[str, Any]] | None = None

    def column(self, name: str) -> pa.Array:
        """A column of the batch."""
        return self.batch.column(name)

    @property
    def lower(self) -> pa.Array:
        """The text column, lower-cased (nulls stay null)."""
        if self._lower is None:
            self._lower = pc.utf8_lower(self.batch.column(self.text_column))
        return self._lower

    @property
    def tokens(self) -> tuple[pa.Array, np.ndarray]:
        """All tokens of the batch flattened (string array) and the row of each one (``int64``)."""
        if self._tokens is None:
            lists = pc.split_pattern_regex(pc.fill_null(self.lower, ""), TOKEN_PATTERN)
            flat = pc.list_flatten(lists)
            parents = pc.list_parent_indices(lists).to_numpy()
            keep = pc.not_equal(flat, "")
            self._tokens = (flat.filter(keep), parents[keep.to_numpy(zero_copy_only=False)])
        return self._tokens

    def token_counts(self) -> np.ndarray:
        """Tokens per row, ``(rows,)`` int64."""
        return np.bincount(self.tokens[1], minlength=self.num_rows)

    def rows(self) -> list[dict[str, Any]]:
        """The rows as dicts (for row-wise LFs; built once per batch)."""
        if self._rows is None:
            self._rows = self.batch.to_pylist()
        return self._rows


@dataclass
class LabelingFunction:
    """A named LF. ``fn`` is row-wise unless ``vectorized``; ``resources`` are passed as keyword arguments.
    ``labels``: the class indexes it can vote, when known at definition (the label stage checks them against
    its classes when it loads); ``last_error``: why it last failed on a row (the exception's last line)."""

    name: str
    fn: Callable[..., Any]
    resources: Mapping[str, Any] = field(default_factory=dict)
    vectorized: bool = False
    labels: tuple[Any, ...] = ()
    last_error: str | None = field(default=None, compare=False)

    def apply(self, batch: LFBatch) -> tuple[np.ndarray, np.ndarray]:
        """Votes ``(rows,)`` int64 and errors ``(rows,)`` bool (True: the LF raised there, or voted something
        that is not an integer, and abstains). Range checks against the classes are the label stage's."""
        n = batch.num_rows
        if self.vectorized:
            try:
                raw = np.asarray(self.fn(batch, **self.resources))
                if raw.shape != (n,):
                    raise ValueError(f"returned {raw.shape} votes for {n} rows")
                if raw.dtype.kind not in "iu":
                    raise TypeError(f"voted {raw.dtype} values ({raw.tolist()[:3]!r:.60}...), not class indexes")
            except Exception as e:  # noqa: BLE001 - a failing LF abstains; the error count says so
                self.last_error = f"{type(e).__name__}: {e}"
                return np.full(n, ABSTAIN, np.int64), np.ones(n, bool)
            return raw.astype(np.int64), np.zeros(n, bool)
        out = np.full(n, ABSTAIN, np.int64)
        errors = np.zeros(n, bool)
        for i, row in enumerate(batch.rows()):
            try:
                v = self.fn(row, **self.resources)
                if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool)):
                    raise TypeError(f"voted {v!r:.40}, not a class index")
                out[i] = ABSTAIN if v is None else int(v)
            except Exception as e:  # noqa: BLE001
                errors[i] = True
                self.last_error = f"{type(e).__name__}: {e}"
        return out, errors


def labeling_function(name: str | None = None, resources: Mapping[str, Any] | None = None,
                      vectorized: bool = False) -> Callable[[Callable[..., Any]], LabelingFunction]:
    """Decorator turning a function into a :class:`LabelingFunction` (snorkel's ``@labeling_function``)."""

    def wrap(fn: Callable[..., Any]) -> LabelingFunction:
        return LabelingFunction(name or fn.__name__, fn, dict(resources or {}), vectorized)

    return wrap


def regex_lf(name: str, pattern: str, label: int, column: str | None = None) -> LabelingFunction:
    """Votes ``label`` where ``pattern`` (RE2 syntax, matched on the lower-cased text, or on ``column``
    as is) matches; abstains elsewhere.

    Raises:
        ValueError: ``pattern`` is not a valid regular expression.
    """
    re.compile(pattern)  # fail at definition, not on the first batch

    def apply(batch: LFBatch) -> np.ndarray:
        values = batch.lower if column is None else batch.column(column)
        hit = pc.fill_null(pc.match_substring_regex(values, pattern), False).to_numpy(zero_copy_only=False)
        return np.where(hit, label, ABSTAIN)

    return LabelingFunction(name, apply, vectorized=True, labels=(label,))


def keyword_lf(name: str, words: list[str], label: int) -> LabelingFunction:
    """Votes ``label`` where any of ``words`` occurs as a whole word (case-insensitive)."""
    pattern = r"\b(" + "|".join(re.escape(w.lower()) for w in words) + r")\b"
    return regex_lf(name, pattern, label)


def lexicon_lf(name: str, lexicon: Mapping[str, float], positive: int, negative: int, threshold: float,
               normalize: bool = True) -> LabelingFunction:
    """Scores each row by its tokens' lexicon values (summed, or averaged over all its tokens when
    ``normalize``); votes ``positive`` above ``threshold``, ``negative`` below ``-threshold``, else
    abstains. Tokens come from the batch's shared tokenization (:attr:`LFBatch.tokens`)."""
    words = pa.array(list(lexicon), pa.string())
    values = np.asarray(list(lexicon.values()), np.float64)

    def apply(batch: LFBatch) -> np.ndarray:
        flat, rows = batch.tokens
        idx = pc.fill_null(pc.index_in(flat, value_set=words), -1).to_numpy()
        found = idx >= 0
        score = np.bincount(rows[found], weights=values[idx[found]], minlength=batch.num_rows)
        if normalize:
            score = score / np.maximum(batch.token_counts(), 1)
        return np.where(score > threshold, positive, np.where(score < -threshold, negative, ABSTAIN))

    return LabelingFunction(name, apply, vectorized=True, labels=(positive, negative))
