"""``window_count``: tumbling event-time windows, row count per key.

Each row falls in the window ``[floor(t / size) * size, + size)``. A window is emitted once the
watermark (the largest event time seen minus ``lateness``) passes its end; rows that arrive for an
already-emitted window are dropped and counted in ``late_rows``. Open windows are plain dicts,
snapshot as JSON.

Counting: with ``accel`` on (the topology default), the keys are dictionary-encoded (Arrow) and
(window, key) becomes one dense integer, counted by a compiled ``group_aggregate`` of the accel
layer; a batch whose dense domain would exceed 2**22 cells uses Arrow's hash aggregation
(``pyarrow.Table.group_by``), as does ``accel: off``. Both give the same counts.
(Tumbling windows with watermarks: Akidau et al., "The Dataflow Model", VLDB 2015, sec. 2.)
"""

from __future__ import annotations

import re
import time as _time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from dawnstream.errors import ConfigError
from dawnstream.operators.base import Operator
from dawnstream.operators.group_by import SOURCE_PARTITION

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str | int, path: str = "size") -> int:
    """``"15m"`` -> 900000. Accepts ms, s, m, h, d, or an int number of ms.

    Raises:
        ConfigError: not a positive duration.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        ms = text
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ConfigError(path, f"expected a duration like '500ms', '30s', '15m', '1h', '1d'; got {text!r}")
        ms = int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if ms <= 0:
        raise ConfigError(path, f"duration must be positive, got {text!r}")
    return ms


NO_TIME = np.iinfo(np.int64).min
"""The time of a row without one (null or unusable): it never closes a window and is not counted."""
MIN_EVENT_MS = -62_135_596_800_000
"""0001-01-01T00:00:00Z: event times before it are unusable (as after :data:`MAX_EVENT_MS`)."""
MAX_EVENT_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: a window's end past it would overflow the int64 arithmetic of ms."""


def event_times(col: pa.Array | pa.ChunkedArray, unit: str = "ms") -> tuple[np.ndarray, np.ndarray]:
    """Event times as int64 ms since the epoch, and which rows carry an unusable one (a string that is not
    a time, a number that is not finite or lies outside years 1-9999 once in ms); both ``(rows,)``.
    Nulls and unusable values get :data:`NO_TIME`.

    Accepts timestamp/date columns, ISO-8601 strings, or numbers in ``unit`` (``ms`` or ``s``).

    Raises:
        TypeError: a column of another type.
    """
    t = col.type
    n = len(col)
    unusable = np.zeros(n, bool)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            col = pc.cast(col, pa.timestamp("ms"))
        except pa.ArrowInvalid:  # some value is not a time: find which, one by one
            vals = []
            for i, v in enumerate(col.to_pylist()):
                try:
                    vals.append(None if v is None else pa.array([v]).cast(pa.timestamp("ms"))[0].value)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    unusable[i] = True
                    vals.append(None)
            col = pa.array(vals, pa.int64()).cast(pa.timestamp("ms"))
        t = col.type
    if pa.types.is_date(t):
        col = pc.cast(pc.cast(col, pa.date32()), pa.timestamp("ms"))
        t = col.type
    if pa.types.is_timestamp(t):
        if t.tz is not None:
            col = pc.cast(col, pa.timestamp(t.unit))
        col = pc.cast(col, pa.timestamp("ms")).cast(pa.int64())
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        ms = np.asarray(pc.fill_null(pc.cast(col, pa.float64(), safe=False), 0.0).to_numpy(zero_copy_only=False),
                        np.float64)  # (inexact beyond 2**53 ms: far outside the usable range anyway)
        if unit == "s":
            ms = ms * 1000.0
        with np.errstate(invalid="ignore"):
            unusable |= ~((ms >= MIN_EVENT_MS) & (ms <= MAX_EVENT_MS))  # NaN and inf too
        if unusable.any():
            col = pc.if_else(pa.array(unusable), pa.scalar(None, col.type), col)
        if unit == "s":
            col = pc.multiply(pc.cast(col, pa.float64()), 1000.0)
        col = pc.cast(col, pa.int64(), safe=False)
    elif not pa.types.is_integer(t):
        raise TypeError(f"time column has type {t}; expected a timestamp, ISO string or number")
    out = np.array(pc.fill_null(col, NO_TIME).to_numpy(zero_copy_only=False), dtype=np.int64)  # a copy
    out[unusable] = NO_TIME
    return out, unusable


class WindowCount(Operator):
    """Row count per key per tumbling window of event time.

    Args:
        key: key column name or list of names.
        time: event-time column (timestamp, ISO string, or number in ``time_unit``).
        size: window length, e.g. ``"1h"`` (see :func:`parse_duration_ms`).
        lateness: how far behind the largest event time a row may still arrive (default 0).
        time_unit: unit of a numeric time column, ``ms`` or ``s``.
        max_skew: how far ahead of the wall clock an event time may be (default ``1d``; ``null``: no
            bound). A row past it is dead-lettered with the reason instead of moving the watermark
            there, which would close every open window and drop every later row as late. (A
            replay long after the fact is unaffected: its times are in the past.)

    Rows whose time is unusable (not a time, not finite, outside years 1-9999) are dead-lettered too.

    Output rows: ``window_start``, ``window_end`` (timestamp[ms], UTC), the key columns, ``count`` (int64),
    emitted in window order then key order.

    >>> import pyarrow as pa
    >>> w = WindowCount(key="k", time="t", size="10ms")
    >>> w.process(pa.record_batch({"k": ["a", "a", "b", "a"], "t": [1, 2, 3, 11]}))[0].to_pydict()["count"]
    [2, 1]
    """

    kind = "window_count"
    stateful = True
    keyed_state = True
    """Open windows' counts go to the keyed store, one record per (window, key), written at a checkpoint
    only when changed (a closed window's records are deleted): 300,000 keys in an open window once made
    a snapshot over the changelog's 16 MiB message limit and stopped the job on every restart. The
    blob keeps the watermark; without a runner's store (``process``, tests) the counts travel in it."""

    def __init__(
        self,
        key: str | Sequence[str],
        time: str,
        size: str | int,
        lateness: str | int = 0,
        time_unit: str = "ms",
        max_skew: str | int | None = "1d",
        upstream_partitions: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if upstream_partitions is not None and (not isinstance(upstream_partitions, int) or upstream_partitions < 1):
            raise ConfigError("upstream_partitions", f"expected a partition count >= 1, got {upstream_partitions!r}")
        self.upstream_partitions = upstream_partitions
        self.upstream_active: set[int] | None = None
        """The upstream partitions that hold rows at all (set by the runner); None: all of them."""
        self.max_skew_ms = None if max_skew in (None, "none", "off") else parse_duration_ms(max_skew, "max_skew")
        self.clock = _time.time  # wall clock, s (tests set it)
        self.keys = [key] if isinstance(key, str) else list(key)
        if not self.keys:
            raise ConfigError("key", "window_count needs at least one key column")
        self.time = time
        self.size_ms = parse_duration_ms(size, "size")
        self.lateness_ms = 0 if lateness in (0, "0") else parse_duration_ms(lateness, "lateness")
        if time_unit not in ("ms", "s"):
            raise ConfigError("time_unit", f"expected 'ms' or 's', got {time_unit!r}")
        self.time_unit = time_unit
        self.counts: dict[tuple[Any, ...], int] = {}  # (window_start, *key values) -> count
        self._changed: set[tuple[Any, ...]] = set()  # groups counted or emitted since the last checkpoint
        self._from_store = False  # restored: rebuild the counts from the store's records before use
        self.watermark: int | None = None
        self.emitted_until: int | None = None  # windows starting before this are closed
        self.late_rows = 0
        self.source_marks: dict[int, int] = {}  # upstream partition -> largest event time it sent (group_by)
        self._key_types: list[pa.DataType] | None = None
        self.accel = "off"  # set by build_chain from the topology
        self._exes: dict[int, Any] = {}  # dense domain -> compiled count

    def required_columns(self) -> set[str]:
        return {*self.keys, self.time}

    def passes_through(self) -> bool:
        return False

    def produced_columns(self) -> set[str]:
        return {"window_start", "window_end", "count", *self.keys}

    def explain(self, schema: pa.Schema | None = None) -> str:
        if self.accel == "off":
            return super().explain(schema)
        return (f"stage {self.name} (window_count): count per (window, key) compiled - keys dictionary-"
                "encoded into one dense group key, one group_aggregate pass (Arrow hash aggregation "
                "when a batch needs more than 2**22 cells)")

    def _refused(self, batch: pa.RecordBatch, margin_ms: int = 0) -> tuple[np.ndarray, dict[int, str]]:
        """Event times of ``batch`` and the rows to refuse, with why."""
        col = batch.column(self.time)
        t, unusable = event_times(col, self.time_unit)
        why: dict[int, str] = {}
        for i in np.flatnonzero(unusable).tolist():
            why[i] = (f"column {self.time!r}: {col[i].as_py()!r:.60} is not a usable event time (a time between "
                      f"years 1 and 9999{'' if self.time_unit == 'ms' else ', in seconds'})")
        if self.max_skew_ms is not None:
            edge = int(self.clock() * 1000) + self.max_skew_ms + margin_ms
            for i in np.flatnonzero(t > edge).tolist():
                ahead_h = (int(t[i]) - edge + self.max_skew_ms) / 3_600_000
                why[i] = (f"column {self.time!r}: event time {np.datetime64(int(t[i]), 'ms')} is {ahead_h:,.1f} h "
                          f"ahead of the wall clock, past max_skew ({self.max_skew_ms / 3_600_000:g} h): it would "
                          "close every open window (raise max_skew if the producer's clock is that far ahead)")
        return t, why

    def bad_rows(self, batch: pa.RecordBatch) -> dict[int, str]:
        return self._refused(batch)[1] if batch.num_rows else {}

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        if batch.num_rows == 0:
            return []
        self._load_store()
        # (a minute of margin: the runner refused these rows a moment ago, with an earlier clock)
        t, refused = self._refused(batch, margin_ms=60_000)
        if refused:  # only when the time column is made by an earlier stage: the runner could not look first
            row, why = next(iter(sorted(refused.items())))
            raise ValueError(f"row {row}: {why}")
        valid = t != NO_TIME
        starts = (t // self.size_ms) * self.size_ms
        # A row is late when its window had closed *before that row* (watermark of the rows before
        # it), so lateness does not depend on where micro-batches happen to end.
        lo = np.iinfo(np.int64).min
        prior = np.where(valid, t, lo)
        if SOURCE_PARTITION in batch.schema.names:
            before = self._before_per_source(batch, prior)
        else:
            before = np.maximum.accumulate(np.concatenate([[self.watermark if self.watermark is not None else lo],
                                                           prior[:-1]]))
        late = valid & (before != lo) & (starts + self.size_ms <= before - self.lateness_ms)
        if self.emitted_until is not None:
            late |= valid & (starts < self.emitted_until)
        self.late_rows += int(late.sum())
        valid &= ~late
        if self._key_types is None:
            self._key_types = [batch.schema.field(k).type for k in self.keys]
        if valid.any():
            if self.accel == "off" or not self._count_dense(batch, starts, valid):
                self._count_hashed(batch, starts, valid)
            if not self.source_marks:
                top = int(t[valid].max())
                self.watermark = top if self.watermark is None else max(self.watermark, top)
        return self._emit_closed()

    def _before_per_source(self, batch: pa.RecordBatch, prior: np.ndarray) -> np.ndarray:
        """The watermark before each row when rows come from several upstream partitions (a
        ``group_by``'s repartition topic): the smallest, over the upstream partitions seen so far, of the
        largest event time each has sent - one running ahead of the others closes no window early (the
        watermark of a shuffle is the minimum of its inputs': the Dataflow model, Flink's watermarks).
        Updates ``source_marks`` and ``watermark`` to after the batch."""
        lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        src = np.asarray(batch.column(SOURCE_PARTITION).fill_null(-1).to_numpy(zero_copy_only=False), np.int64)
        seen = sorted(set(self.source_marks) | set(np.unique(src).tolist()))
        before = np.full(len(prior), hi, np.int64)
        for k in seen:
            mine = np.where(src == k, prior, lo)
            mark = self.source_marks.get(k, lo)
            upto = np.maximum.accumulate(np.concatenate([[mark], mine[:-1]]))
            before = np.minimum(before, upto)
            top = max(mark, int(mine.max()) if len(mine) else lo)
            if top != lo:
                self.source_marks[k] = top
        # Until every upstream partition that holds rows has sent an event time, nothing is known complete.
        if self.upstream_partitions is not None:
            needed = self.upstream_active if self.upstream_active is not None else set(range(self.upstream_partitions))
            if not needed <= set(self.source_marks):
                self.watermark = None
                return np.full(len(prior), lo, np.int64)
        self.watermark = min(self.source_marks.values()) if self.source_marks else None
        return before

    def _count_hashed(self, batch: pa.RecordBatch, starts: np.ndarray, valid: np.ndarray) -> None:
        table = pa.table({"__ws": starts, **{f"__k{i}": batch.column(k) for i, k in enumerate(self.keys)}})
        table = table.filter(pa.array(valid))
        cols = ["__ws", *[f"__k{i}" for i in range(len(self.keys))]]
        agg = table.group_by(cols, use_threads=False).aggregate([([], "count_all")]).to_pydict()
        for row in zip(*(agg[c] for c in cols), agg["count_all"], strict=True):
            k = tuple(row[:-1])
            self.counts[k] = self.counts.get(k, 0) + int(row[-1])
            if self.store is not None:
                self._changed.add(k)

    def _count_dense(self, batch: pa.RecordBatch, starts: np.ndarray, valid: np.ndarray) -> bool:
        """Count through the accel layer; False (nothing counted) when the dense domain is too big."""
        from dawnstream.accel.backends import build
        from dawnstream.accel.ir import GroupAggregate, Program, col, param

        w = starts // self.size_ms
        w0 = int(w[valid].min())
        cells = int(w[valid].max()) - w0 + 1
        dicts: list[list[Any]] = []
        codes: list[np.ndarray] = []
        for k in self.keys:
            enc = pc.dictionary_encode(batch.column(k), null_encoding="encode")
            dicts.append(enc.dictionary.to_pylist())
            codes.append(np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64))
            cells *= max(len(dicts[-1]), 1)
        if cells > 1 << 22:
            return False
        domain = max(1024, 1 << (cells - 1).bit_length())  # few distinct programs, each compiled once
        if domain not in self._exes:
            dense = col("w", "int64") - param("w0", "int64")
            for i in range(len(self.keys)):
                dense = dense * param(f"n{i}", "int64") + col(f"k{i}", "int64")
            prog = Program([GroupAggregate("counts", "count", dense, None, domain, where=col("valid", "bool"))],
                           {"w": "int64", "valid": "bool", **{f"k{i}": "int64" for i in range(len(self.keys))}},
                           params={"w0": "int64", **{f"n{i}": "int64" for i in range(len(self.keys))}})
            self._exes[domain] = build(prog, self.accel)
        params = {"w0": w0, **{f"n{i}": max(len(d), 1) for i, d in enumerate(dicts)}}
        counts = self._exes[domain].run({"w": w, "valid": valid, **{f"k{i}": c for i, c in enumerate(codes)}},
                                        params)["counts"]
        for cell in np.flatnonzero(counts):
            rest, key = int(cell), []
            for d in reversed(dicts):
                rest, j = divmod(rest, max(len(d), 1))
                key.append(d[j])
            group = ((w0 + rest) * self.size_ms, *reversed(key))
            self.counts[group] = self.counts.get(group, 0) + int(counts[cell])
            if self.store is not None:
                self._changed.add(group)
        return True

    def _emit_closed(self, everything: bool = False) -> list[pa.RecordBatch]:
        if self.watermark is None and not everything:
            return []
        limit = (self.watermark if self.watermark is not None else np.iinfo(np.int64).min // 2) - self.lateness_ms
        # A window [s, s+size) is complete once the watermark reaches s + size.
        closed = sorted(
            (k for k in self.counts if everything or k[0] + self.size_ms <= limit),
            key=lambda k: tuple((v is None, v) for v in k),
        )
        if not everything:
            bound = ((limit - self.size_ms) // self.size_ms + 1) * self.size_ms
            self.emitted_until = bound if self.emitted_until is None else max(self.emitted_until, bound)
        if not closed:
            return []
        starts = [k[0] for k in closed]
        data: dict[str, pa.Array] = {
            "window_start": pa.array(starts, pa.timestamp("ms")),
            "window_end": pa.array([s + self.size_ms for s in starts], pa.timestamp("ms")),
        }
        types = self._key_types or [None] * len(self.keys)
        for i, k in enumerate(self.keys):
            data[k] = pa.array([key[i + 1] for key in closed], type=types[i])
        data["count"] = pa.array([self.counts.pop(key) for key in closed], pa.int64())
        if self.store is not None:
            self._changed.update(closed)
        return [pa.RecordBatch.from_pydict(data)]

    def flush(self) -> list[pa.RecordBatch]:
        self._load_store()
        return self._emit_closed(everything=True)

    # -- state: the blob, and the counts in the keyed store ------------------------------------------
    def _load_store(self) -> None:
        """After a restore: the counts are the store's records (read back from the changelog by then)."""
        if self._from_store:
            self._from_store = False
            self.counts = {tuple(orjson.loads(k)): int(v) for k, v in self.store.items()}

    def _state(self) -> Any:
        self._load_store()
        out: dict[str, Any] = {
            "watermark": self.watermark,
            "emitted_until": self.emitted_until,
            "late_rows": self.late_rows,
            "source_marks": [[k, v] for k, v in sorted(self.source_marks.items())],
            "key_types": [str(t) for t in self._key_types] if self._key_types else None,
        }
        if not self.has_keyed_store():
            out["counts"] = [[list(k), c] for k, c in self.counts.items()]
            return out
        for k in self._changed:
            name = orjson.dumps(list(k)).decode()
            if k in self.counts:
                self.store[name] = str(self.counts[k]).encode()
            elif name in self.store:
                del self.store[name]
        self._changed.clear()
        return out

    def _load_state(self, state: Any) -> None:
        from dawnstream.topics.schema import parse_type

        self._changed = set()
        if "counts" in state:  # a blob of before the keyed store, or of a run without one
            self.counts = {tuple(k): int(c) for k, c in state["counts"]}
            self._from_store = False
            if self.has_keyed_store():  # move them into the store at the next checkpoint
                self._changed = set(self.counts)
        else:
            self.counts, self._from_store = {}, True
        self.watermark = state["watermark"]
        self.emitted_until = state["emitted_until"]
        self.late_rows = int(state["late_rows"])
        self.source_marks = {int(k): int(v) for k, v in state.get("source_marks", [])}
        kt = state.get("key_types")
        self._key_types = [_type_from_str(t, parse_type) for t in kt] if kt else None


def _type_from_str(text: str, parse_type: Any) -> pa.DataType:
    aliases = {"double": "float64", "float": "float32", "large_string": "string"}
    try:
        return parse_type(aliases.get(text, text))
    except ConfigError:
        return pa.string()
