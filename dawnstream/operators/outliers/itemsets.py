"""Explanations: attribute-value itemsets that are common among outliers and rare among inliers.

Definitions (MacroBase, SIGMOD 2017 sec. 5; ``lib/.../aplinear``, ``RiskRatio.java``): O outliers
among T rows; an itemset X matches o outliers among t rows.

- support = o / O (outlier support);
- global_ratio = (o / t) / (O / T);
- risk_ratio = (o / t) / ((O - o) / (T - t)); 0 when t = 0 or t = T, +inf when o = O.

Selection is APriori over orders 1..max_order: an itemset is a candidate only if every subset one
item smaller passed the support threshold. Two semantics:

- ``minimal`` (default; MacroBase's DIFF / APLinear): a set passing support and ratio is reported
  and never extended; sets passing support but not ratio are extended.
- ``closed`` (MacroBase's legacy FP-growth path): every set passing both thresholds is reported,
  then sets with a reported superset of equal outlier count are dropped.

Results are ranked by ratio, then support, then outlier count (descending), then attribute values.
Counts may be fractional (decayed streaming counts).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Item = tuple[int, int]  # (attribute index, value code)
Itemset = tuple[Item, ...]  # sorted by attribute index
RATIO_METRICS = ("risk_ratio", "global_ratio")


def risk_ratio(o: float, t: float, O: float, T: float) -> float:  # noqa: N803 - paper notation
    """(o/t) / ((O-o)/(T-t)); 0 if t == 0 or t == T; +inf if o == O."""
    if t <= 0 or t >= T:
        return 0.0
    if o >= O:
        return math.inf
    return (o / t) / ((O - o) / (T - t))


def global_ratio(o: float, t: float, O: float, T: float) -> float:  # noqa: N803
    """(o/t) / (O/T); 0 if t == 0 or O == 0."""
    if t <= 0 or O <= 0:
        return 0.0
    return (o / t) / (O / T)


RATIOS = {"risk_ratio": risk_ratio, "global_ratio": global_ratio}


@dataclass(frozen=True)
class Explanation:
    """One reported itemset: ``attributes`` maps column name -> value."""

    attributes: dict[str, Any]
    support: float
    ratio: float
    ratio_metric: str
    outlier_count: float
    total_count: float

    def to_dict(self) -> dict[str, Any]:
        return {"attributes": self.attributes, "support": self.support, "ratio": self.ratio,
                "ratio_metric": self.ratio_metric, "outlier_count": self.outlier_count,
                "total_count": self.total_count}


@dataclass
class Counts:
    """Outlier and total counts per itemset (all orders), with the totals O and T."""

    outliers: dict[Itemset, float]
    totals: dict[Itemset, float]
    O: float  # noqa: N815
    T: float  # noqa: N815


def select(counts: Counts, min_support: float = 0.01, min_ratio: float = 3.0, ratio_metric: str = "risk_ratio",
           max_order: int = 3, minimal: bool = True) -> list[tuple[Itemset, float, float, float, float]]:
    """Apply support/ratio thresholds with APriori pruning to precomputed counts.

    Returns:
        ``[(itemset, support, ratio, o, t), ...]`` unranked.

    Raises:
        ValueError: unknown ratio metric or max_order < 1.
    """
    if ratio_metric not in RATIOS:
        raise ValueError(f"unknown ratio {ratio_metric!r}; expected one of {RATIO_METRICS}")
    if max_order < 1:
        raise ValueError("max_order must be >= 1")
    ratio_fn = RATIOS[ratio_metric]
    O, T = counts.O, counts.T  # noqa: N806
    if O <= 0:
        return []
    by_order: dict[int, list[Itemset]] = {}
    for s in counts.outliers:
        by_order.setdefault(len(s), []).append(s)
    supported: set[Itemset] = set()
    extendable: set[Itemset] = set()
    reported: list[tuple[Itemset, float, float, float, float]] = []
    for k in range(1, max_order + 1):
        for s in by_order.get(k, []):
            if k > 1 and not all(sub in (extendable if minimal else supported)
                                 for sub in itertools.combinations(s, k - 1)):
                continue
            o = counts.outliers[s]
            if o / O < min_support:
                continue
            supported.add(s)
            t = counts.totals.get(s, o)
            r = ratio_fn(o, max(t, o), O, T)
            if r >= min_ratio:
                reported.append((s, o / O, r, o, max(t, o)))
                if not minimal:
                    extendable.add(s)
            else:
                extendable.add(s)
    if not minimal:
        keep = []
        for s, sup, r, o, t in reported:
            sset = set(s)
            if any(len(s2) > len(s) and o2 == o and sset < set(s2) for s2, _, _, o2, _ in reported):
                continue
            keep.append((s, sup, r, o, t))
        reported = keep
    return reported


def rank(rows: list[Explanation]) -> list[Explanation]:
    """Ratio, then support, then outlier count, all descending; ties by attribute text."""
    return sorted(rows, key=lambda e: (-e.ratio, -e.support, -e.outlier_count,
                                        sorted((k, str(v)) for k, v in e.attributes.items())))


class Encoder:
    """Stable integer codes per attribute value (null -> -1), shared across batches."""

    def __init__(self, attributes: Sequence[str]) -> None:
        self.attributes = list(attributes)
        self.values: list[list[Any]] = [[] for _ in self.attributes]
        self.index: list[dict[Any, int]] = [{} for _ in self.attributes]

    def encode(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """n x A int64 code matrix for ``table``'s attribute columns.

        Raises:
            KeyError: an attribute column is missing.
        """
        n = table.num_rows
        out = np.empty((n, len(self.attributes)), dtype=np.int64)
        for j, name in enumerate(self.attributes):
            col = table.column(name)
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            if pa.types.is_floating(col.type):
                col = pc.cast(col, pa.string())  # float attributes are labels here; keep them hashable
            enc = pc.dictionary_encode(col)
            dictionary = enc.dictionary.to_pylist()
            mapping = np.empty(len(dictionary) + 1, dtype=np.int64)
            idx = self.index[j]
            for d, v in enumerate(dictionary):
                code = idx.get(v)
                if code is None:
                    code = idx[v] = len(self.values[j])
                    self.values[j].append(v)
                mapping[d] = code
            mapping[-1] = -1
            ind = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            out[:, j] = mapping[ind]
        return out

    def decode(self, itemset: Itemset) -> dict[str, Any]:
        return {self.attributes[a]: self.values[a][c] for a, c in itemset}


def count_itemsets(codes: np.ndarray, outliers: np.ndarray, max_order: int,
                   allowed: list[np.ndarray] | None = None, weight: float = 1.0) -> tuple[dict, dict]:
    """Count itemsets of orders 1..max_order among outlier rows and among all rows.

    Args:
        codes: n x A int64 codes (-1 = null, never an item).
        outliers: bool[n].
        allowed: per attribute, bool mask over codes of items that may appear in combinations
            (order >= 2); ``None`` allows all. Order-1 counts are always complete.
        weight: count added per row (decayed streams scale increments instead of decaying counts).

    Returns:
        ``(outlier_counts, total_counts)`` dicts keyed by itemset. Total counts are only kept for
        itemsets that occur among outliers (the others cannot be reported).
    """
    n, A = codes.shape  # noqa: N806
    o_counts: dict[Itemset, float] = {}
    t_counts: dict[Itemset, float] = {}
    if n == 0:
        return o_counts, t_counts
    for k in range(1, min(max_order, A) + 1):
        for attrs in itertools.combinations(range(A), k):
            sub = codes[:, attrs]
            ok = (sub >= 0).all(axis=1)
            if k > 1 and allowed is not None:
                for pos, a in enumerate(attrs):
                    ok &= allowed[a][np.maximum(sub[:, pos], 0)]
            if not ok.any():
                continue
            om = ok & outliers
            if not om.any():
                continue
            keys_o, cnt_o = np.unique(sub[om], axis=0, return_counts=True)
            keys_t, cnt_t = np.unique(sub[ok], axis=0, return_counts=True)
            tmap = {tuple(r): c for r, c in zip(keys_t.tolist(), cnt_t.tolist(), strict=True)}
            for r, c in zip(keys_o.tolist(), cnt_o.tolist(), strict=True):
                s = tuple(zip(attrs, r, strict=True))
                o_counts[s] = o_counts.get(s, 0.0) + c * weight
                t_counts[s] = t_counts.get(s, 0.0) + tmap[tuple(r)] * weight
    return o_counts, t_counts


def explain_table(table: pa.Table | pa.RecordBatch, outliers: np.ndarray, attributes: Sequence[str],
                  min_support: float = 0.01, min_ratio: float = 3.0, ratio_metric: str = "risk_ratio",
                  max_order: int = 3, minimal: bool = True) -> list[Explanation]:
    """Batch DIFF: explain ``outliers`` (bool[n]) over ``attributes`` of ``table``.

    Combinations are counted only among items whose own outlier support passes ``min_support``
    (APriori's downward closure), so the cost stays near one pass per attribute combination.
    """
    enc = Encoder(attributes)
    codes = enc.encode(table)
    outliers = np.asarray(outliers, dtype=bool)
    O, T = float(outliers.sum()), float(len(outliers))  # noqa: N806
    allowed = []
    for j in range(len(attributes)):
        card = len(enc.values[j])
        col = codes[:, j]
        oc = np.bincount(col[outliers & (col >= 0)], minlength=card) if card else np.zeros(0)
        allowed.append(oc >= max(min_support * O, 1e-12) if card else np.zeros(1, dtype=bool))
    o_counts, t_counts = count_itemsets(codes, outliers, max_order, allowed)
    chosen = select(Counts(o_counts, t_counts, O, T), min_support, min_ratio, ratio_metric, max_order, minimal)
    return rank([Explanation(enc.decode(s), sup, r, ratio_metric, o, t) for s, sup, r, o, t in chosen])


def explanations_table(rows: list[Explanation], attributes: Sequence[str],
                       extra: Mapping[str, Any] | None = None) -> pa.Table:
    """Explanations as rows: one column per attribute (null when not in the itemset), ``support``,
    ``ratio``, ``ratio_metric``, ``outlier_count``, ``total_count`` (+ ``extra`` constant columns)."""
    data: dict[str, list[Any]] = {a: [] for a in attributes}
    for e in rows:
        for a in attributes:
            v = e.attributes.get(a)
            data[a].append(None if v is None else str(v))
    cols: dict[str, Any] = {a: pa.array(v, pa.string()) for a, v in data.items()}
    cols["support"] = pa.array([e.support for e in rows], pa.float64())
    cols["ratio"] = pa.array([e.ratio for e in rows], pa.float64())
    cols["ratio_metric"] = pa.array([e.ratio_metric for e in rows], pa.string())
    cols["outlier_count"] = pa.array([e.outlier_count for e in rows], pa.float64())
    cols["total_count"] = pa.array([e.total_count for e in rows], pa.float64())
    for k, v in (extra or {}).items():
        cols[k] = pa.array([v] * len(rows))
    return pa.table(cols)
