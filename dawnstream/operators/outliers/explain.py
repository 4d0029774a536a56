"""Streaming explanation (MacroBase sec. 5.2, ``EWStreamingSummarizer``), operator ``explain``.

Per attribute combination (orders 1..max_order) two AMC sketches hold decayed counts: one over
outlier rows, one over all rows. Rows are buffered as integer keys until the next boundary (period
or emission); there the outlier keys are folded in first, then the total counts of single values
and of every combination the outlier sketch holds - so a combination's totals are exact from the
period its first outlier arrived in, and inlier-only combinations never take space (MacroBase's
M-CPS tree restricts inlier combinations to outlier-frequent items for the same reason). Every
``period`` rows the sketches decay by ``decay`` and are maintained to their stable size.

Every ``emit_every`` rows (and at the end of a finite input, or every ``emit_seconds`` of wall
clock when set) the stage emits either the top explanations (``output: explanations``; same
columns as the batch DIFF plus ``emitted_rows`` and ``emit_time``) or one *summary* row with its
counts (``output: summary``), which :class:`MergeExplanations` combines across partitions.
Emission points count rows, so the same stream gives the same outputs however it is batched.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from dawnstream.errors import ConfigError
from dawnstream.operators.base import Operator
from dawnstream.operators.outliers.amc import AMC
from dawnstream.operators.outliers.itemsets import (
    RATIO_METRICS,
    Counts,
    Encoder,
    Explanation,
    Itemset,
    explanations_table,
    rank,
    select,
)

CODE_BITS = 21
MAX_CODE = (1 << CODE_BITS) - 1
PANEL_TOP = 10  # explanations a dashboard panel shows


def _keys(sub: np.ndarray) -> np.ndarray:
    key = np.zeros(sub.shape[0], dtype=np.int64)
    for j in range(sub.shape[1]):
        key |= sub[:, j].astype(np.int64) << (CODE_BITS * j)
    return key


def _codes(key: int, k: int) -> list[int]:
    return [(key >> (CODE_BITS * j)) & MAX_CODE for j in range(k)]


class _Params:
    def __init__(self, attributes: Sequence[str], min_support: float, min_ratio: float, ratio: str, max_order: int,
                 semantics: str, top: int) -> None:
        if not attributes or isinstance(attributes, str):
            raise ConfigError("attributes", "give a list of attribute columns, e.g. [carrier, origin]")
        if not 0 < min_support <= 1:
            raise ConfigError("min_support", f"expected 0 < min_support <= 1, got {min_support}")
        if ratio not in RATIO_METRICS:
            raise ConfigError("ratio", f"expected one of {RATIO_METRICS}, got {ratio!r}")
        if semantics not in ("minimal", "closed"):
            raise ConfigError("semantics", f"expected 'minimal' or 'closed', got {semantics!r}")
        if not 1 <= max_order <= 3:
            raise ConfigError("max_order", f"streaming explanations support max_order 1..3, got {max_order}")
        self.attributes = list(attributes)
        self.min_support, self.min_ratio, self.ratio = float(min_support), float(min_ratio), ratio
        self.max_order, self.minimal, self.top = max_order, semantics == "minimal", top


class StreamingExplainer(Operator):
    """Decayed, continuously emitted explanations of the ``is_outlier`` column.

    Args:
        attributes: attribute columns to explain by.
        min_support, min_ratio, ratio, max_order: as in batch DIFF (defaults 0.01, 3.0, risk_ratio, 3).
        semantics: ``minimal`` (DIFF/APLinear) or ``closed`` (legacy FP-growth).
        emit_every: rows between emissions (default 100,000); ``emit_seconds``: also emit on wall clock.
        period: rows between decay + maintenance (default 10,000); decay: rate per period (0.01).
        amc_size: stable size of each sketch (default 10,000); top: explanations per emission (20).
        output: ``explanations`` or ``summary`` (for :class:`MergeExplanations`).
        outlier_column: boolean column marking outliers (default ``is_outlier``).
    """

    kind = "explain"
    stateful = True

    def __init__(self, attributes: Sequence[str], min_support: float = 0.01, min_ratio: float = 3.0,
                 ratio: str = "risk_ratio", max_order: int = 3, semantics: str = "minimal",
                 emit_every: int = 100_000, emit_seconds: float | None = None, period: int = 10_000,
                 decay: float = 0.01, amc_size: int = 10_000, top: int = 20, output: str = "explanations",
                 outlier_column: str = "is_outlier", name: str | None = None) -> None:
        super().__init__(name)
        self.p = _Params(attributes, min_support, min_ratio, ratio, max_order, semantics, top)
        if output not in ("explanations", "summary"):
            raise ConfigError("output", f"expected 'explanations' or 'summary', got {output!r}")
        if emit_every < 1 or period < 1 or not 0 <= decay < 1:
            raise ConfigError("period", "emit_every and period must be >= 1 and 0 <= decay < 1")
        self.output, self.outlier_column = output, outlier_column
        self.emit_every, self.emit_seconds, self.period, self.decay_rate = emit_every, emit_seconds, period, decay
        self.amc_size = amc_size
        A = len(self.p.attributes)  # noqa: N806
        self.combos = [c for k in range(1, min(max_order, A) + 1) for c in itertools.combinations(range(A), k)]
        self.encoder = Encoder(self.p.attributes)
        self.o_sketch = [AMC(amc_size) for _ in self.combos]
        self.t_sketch = [AMC(amc_size) for _ in self.combos]
        # Keys counted since the last boundary, folded into the sketches only at row-count boundaries:
        # integer counts make the float sums independent of how the stream was batched.
        self.pending_o: list[list[np.ndarray]] = [[] for _ in self.combos]
        self.pending_t: list[list[np.ndarray]] = [[] for _ in self.combos]
        self.O = 0.0  # noqa: N815 - decayed outlier count
        self.T = 0.0  # noqa: N815 - decayed row count
        self.o_new = 0  # outliers and rows since the last boundary: exact, added to O and T there
        self.t_new = 0
        self.rows_seen = 0
        self.next_period = period
        self.next_emit = emit_every
        self.seq = 0
        self.last_emit_rows = 0
        self.last_emit_wall = time.time()
        self._top: list[Explanation] = []  # the last emitted explanations, for panel()

    def required_columns(self) -> set[str]:
        return {*self.p.attributes, self.outlier_column}

    def panel(self) -> dict[str, Any]:
        """The last emission: its top explanations (``output: explanations``) and the decayed totals."""
        return {"kind": "explanations", "output": self.output, "rows_seen": self.rows_seen, "seq": self.seq,
                "outliers": self.O, "rows": self.T, "top": [e.to_dict() for e in self._top[:PANEL_TOP]]}

    def passes_through(self) -> bool:
        return False

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        n = batch.num_rows
        if n == 0:
            return []
        codes = self.encoder.encode(batch)
        if codes.size and codes.max() > MAX_CODE:
            raise ValueError(f"an attribute has more than {MAX_CODE} distinct values; it cannot be explained by")
        flags = np.asarray(pc.fill_null(batch.column(self.outlier_column), False).to_numpy(zero_copy_only=False),
                           dtype=bool)
        out: list[pa.RecordBatch] = []
        i = 0
        while i < n:
            end = min(n, i + min(self.next_period, self.next_emit) - self.rows_seen)
            self._count(codes[i:end], flags[i:end])
            self.rows_seen += end - i
            i = end
            if self.rows_seen in (self.next_period, self.next_emit):
                self._fold()
            if self.rows_seen == self.next_period:
                self._maintain()
                self.next_period += self.period
            if self.rows_seen == self.next_emit:
                out.extend(self._emit())
                self.next_emit += self.emit_every
        return out

    def _count(self, codes: np.ndarray, flags: np.ndarray) -> None:
        self.o_new += int(flags.sum())
        self.t_new += int(codes.shape[0])
        for c, attrs in enumerate(self.combos):
            sub = codes[:, attrs]
            present = (sub >= 0).all(axis=1)
            keys = _keys(sub[present]) if not present.all() else _keys(sub)
            if keys.size:
                self.pending_t[c].append(keys)
                om = flags[present]
                if om.any():
                    self.pending_o[c].append(keys[om])

    def _fold(self) -> None:
        self.O += float(self.o_new)
        self.T += float(self.t_new)
        self.o_new = self.t_new = 0
        for c, attrs in enumerate(self.combos):
            if self.pending_o[c]:
                self.o_sketch[c].update(np.concatenate(self.pending_o[c]))
                self.pending_o[c].clear()
            if self.pending_t[c]:
                keys = np.concatenate(self.pending_t[c])
                if len(attrs) > 1:  # totals only matter for combinations seen among outliers
                    uk, cnt = np.unique(keys, return_counts=True)
                    held = self.o_sketch[c].contains(uk)
                    self.t_sketch[c].update(uk[held], cnt[held].astype(np.float64))
                else:
                    self.t_sketch[c].update(keys)
                self.pending_t[c].clear()

    def _maintain(self) -> None:
        r = self.decay_rate
        for s in (*self.o_sketch, *self.t_sketch):
            s.decay(r)
            s.maintain()
        self.O *= 1.0 - r
        self.T *= 1.0 - r

    def counts(self) -> Counts:
        """Current decayed counts as itemsets (outlier counts for all held outlier itemsets)."""
        o_counts: dict[Itemset, float] = {}
        t_counts: dict[Itemset, float] = {}
        for c, attrs in enumerate(self.combos):
            items = self.o_sketch[c].items()
            if not items:
                continue
            keys = np.fromiter(items.keys(), dtype=np.int64, count=len(items))
            totals = self.t_sketch[c].lookup(keys)
            for key, t in zip(keys.tolist(), totals.tolist(), strict=True):
                s = tuple(zip(attrs, _codes(key, len(attrs)), strict=True))
                o_counts[s] = items[key]
                t_counts[s] = t
        return Counts(o_counts, t_counts, self.O, self.T)

    def explanations(self) -> list[Explanation]:
        """Top explanations of the current counts, ranked."""
        p = self.p
        chosen = select(self.counts(), p.min_support, p.min_ratio, p.ratio, p.max_order, p.minimal)
        return rank([Explanation(self.encoder.decode(s), sup, r, p.ratio, o, t) for s, sup, r, o, t in chosen])

    def _emit(self) -> list[pa.RecordBatch]:
        self.seq += 1
        self.last_emit_rows = self.rows_seen
        self.last_emit_wall = time.time()
        now_ms = int(self.last_emit_wall * 1000)
        if self.output == "summary":
            return [self.summary_batch(now_ms)]
        rows = self.explanations()[: self.p.top]
        self._top = rows
        extra = {"emitted_rows": self.rows_seen, "emit_time": now_ms, "seq": self.seq}
        table = explanations_table(rows, self.p.attributes, extra)
        table = table.set_column(table.schema.get_field_index("emit_time"), "emit_time",
                                 pc.cast(table.column("emit_time"), pa.timestamp("ms")))
        return table.to_batches() or []

    def summary_batch(self, now_ms: int) -> pa.RecordBatch:
        """One row: ``source``, ``seq``, ``rows_seen``, ``O``, ``T``, ``itemsets`` (JSON list of
        ``[{attribute: value}, outlier count, total count]``).

        Itemsets below a tenth of ``min_support`` in this partition are left out: one below that in
        every partition cannot pass globally, and leaving them out keeps summaries small (a few
        hundred KB instead of megabytes); the cost is a small undercount of itemsets near the
        threshold that are rare in some partitions.
        """
        c = self.counts()
        floor = 0.1 * self.p.min_support * c.O
        items = [[{self.p.attributes[a]: self.encoder.values[a][code] for a, code in s}, o, c.totals.get(s, o)]
                 for s, o in c.outliers.items() if o >= floor]
        return pa.RecordBatch.from_pydict({
            "source": [f"{self.name}/{self.partition}"], "seq": [self.seq], "rows_seen": [self.rows_seen],
            "O": [c.O], "T": [c.T], "itemsets": [orjson.dumps(items, option=orjson.OPT_NON_STR_KEYS).decode()],
            "emit_time": pa.array([now_ms], pa.timestamp("ms")),
        })

    def on_tick(self, now_ms: int) -> list[pa.RecordBatch]:
        if self.emit_seconds and now_ms / 1000.0 - self.last_emit_wall >= self.emit_seconds \
                and self.rows_seen > self.last_emit_rows:
            self._fold()
            return self._emit()
        return []

    def flush(self) -> list[pa.RecordBatch]:
        self._fold()
        return self._emit() if self.rows_seen > self.last_emit_rows else []

    def _state(self) -> Any:
        return {
            "values": self.encoder.values,
            "o": [s.to_state() for s in self.o_sketch], "t": [s.to_state() for s in self.t_sketch],
            "pending_o": [np.concatenate(p).tolist() if p else [] for p in self.pending_o],
            "pending_t": [np.concatenate(p).tolist() if p else [] for p in self.pending_t],
            "O": self.O, "T": self.T, "o_new": self.o_new, "t_new": self.t_new,
            "rows_seen": self.rows_seen, "next_period": self.next_period, "next_emit": self.next_emit,
            "seq": self.seq, "last_emit_rows": self.last_emit_rows,
        }

    def _load_state(self, st: Any) -> None:
        self.encoder.values = [list(v) for v in st["values"]]
        self.encoder.index = [{v: i for i, v in enumerate(vals)} for vals in self.encoder.values]
        self.o_sketch = [AMC.from_state(s) for s in st["o"]]
        self.t_sketch = [AMC.from_state(s) for s in st["t"]]
        self.pending_o = [[np.asarray(p, dtype=np.int64)] if p else [] for p in st["pending_o"]]
        self.pending_t = [[np.asarray(p, dtype=np.int64)] if p else [] for p in st["pending_t"]]
        self.O, self.T = float(st["O"]), float(st["T"])
        self.o_new, self.t_new = int(st.get("o_new", 0)), int(st.get("t_new", 0))
        self.rows_seen, self.next_period, self.next_emit = st["rows_seen"], st["next_period"], st["next_emit"]
        self.seq, self.last_emit_rows = st["seq"], st["last_emit_rows"]


class MergeExplanations(Operator):
    """Combine per-partition summaries (``explain`` with ``output: summary``) into explanations.

    Keeps the latest summary of every source, adds their decayed counts (counts are additive,
    so N partitions give the same totals as one stream) and emits the top explanations each
    time a new summary arrives.
    """

    kind = "merge_explanations"
    stateful = True

    def __init__(self, attributes: Sequence[str], min_support: float = 0.01, min_ratio: float = 3.0,
                 ratio: str = "risk_ratio", max_order: int = 3, semantics: str = "minimal", top: int = 20,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.p = _Params(attributes, min_support, min_ratio, ratio, max_order, semantics, top)
        self.latest: dict[str, dict[str, Any]] = {}
        self._top: list[Explanation] = []  # the last emitted explanations, for panel()

    def required_columns(self) -> set[str]:
        return {"source", "seq", "rows_seen", "O", "T", "itemsets"}

    def panel(self) -> dict[str, Any]:
        """The last merged emission: top explanations over every source's latest summary."""
        return {"kind": "explanations", "output": "explanations", "sources": len(self.latest),
                "rows_seen": sum(s["rows_seen"] for s in self.latest.values()),
                "outliers": sum(s["O"] for s in self.latest.values()),
                "rows": sum(s["T"] for s in self.latest.values()),
                "top": [e.to_dict() for e in self._top[:PANEL_TOP]]}

    def passes_through(self) -> bool:
        return False

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        changed = False
        for row in batch.to_pylist():
            prev = self.latest.get(row["source"])
            if prev is None or row["seq"] > prev["seq"]:
                self.latest[row["source"]] = {k: row[k] for k in ("seq", "rows_seen", "O", "T", "itemsets")}
                changed = True
        return self._emit() if changed else []

    def explanations(self) -> list[Explanation]:
        attrs = self.p.attributes
        index = {a: i for i, a in enumerate(attrs)}
        values: list[dict[Any, int]] = [{} for _ in attrs]
        back: list[list[Any]] = [[] for _ in attrs]
        o_counts: dict[Itemset, float] = {}
        t_counts: dict[Itemset, float] = {}
        O = T = 0.0  # noqa: N806
        for summary in self.latest.values():
            O += summary["O"]  # noqa: N806
            T += summary["T"]  # noqa: N806
            for item, o, t in orjson.loads(summary["itemsets"]):
                s = []
                for a, v in sorted(item.items(), key=lambda kv: index[kv[0]]):
                    j = index[a]
                    code = values[j].get(v)
                    if code is None:
                        code = values[j][v] = len(back[j])
                        back[j].append(v)
                    s.append((j, code))
                key = tuple(s)
                o_counts[key] = o_counts.get(key, 0.0) + o
                t_counts[key] = t_counts.get(key, 0.0) + t
        p = self.p
        chosen = select(Counts(o_counts, t_counts, O, T), p.min_support, p.min_ratio, p.ratio, p.max_order, p.minimal)
        return rank([Explanation({attrs[a]: back[a][c] for a, c in s}, sup, r, p.ratio, o, t)
                     for s, sup, r, o, t in chosen])

    def _emit(self) -> list[pa.RecordBatch]:
        rows = self.explanations()[: self.p.top]
        self._top = rows
        extra = {"sources": len(self.latest), "emitted_rows": sum(s["rows_seen"] for s in self.latest.values()),
                 "emit_time": int(time.time() * 1000)}
        table = explanations_table(rows, self.p.attributes, extra)
        table = table.set_column(table.schema.get_field_index("emit_time"), "emit_time",
                                 pc.cast(table.column("emit_time"), pa.timestamp("ms")))
        return table.to_batches() or []

    def _state(self) -> Any:
        return {"latest": self.latest}

    def _load_state(self, st: Any) -> None:
        self.latest = dict(st["latest"])
