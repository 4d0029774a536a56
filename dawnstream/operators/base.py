"""The operator protocol: pure functions of Arrow record batches plus explicit, serialisable state.

Operators never touch Kafka or files. A runner feeds each partition's micro-batch to that
partition's chain, produces what comes out, and (with exactly-once) stores ``snapshot()`` bytes.
Snapshots are JSON, Arrow IPC or ``.npz``; never pickle.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import orjson
import pyarrow as pa

SNAPSHOT_FORMAT = 1
StageStats = dict[str, list[float]]
"""Per stage name: ``[seconds, rows in, rows out]``."""


class Operator(ABC):
    """One stage of a chain.

    Subclasses set ``kind`` (the name used in topology configs) and implement :meth:`process`.

    Args:
        name: stage name, unique in the chain (used in metrics, DLQ ``dlq.stage`` and changelogs).
    """

    kind: ClassVar[str] = ""
    stateful: ClassVar[bool] = False
    uses_global: ClassVar[bool] = False
    """True: the stage learns from every partition's rows through the job's global table
    (:mod:`~dawnstream.streams.global_table`). The processor gives each partition's instance the worker's
    table as ``global_table`` and the contributing input partitions as ``global_partitions``, and
    produces the records :meth:`take_published` hands over in the same transaction as the batch."""
    keyed_state: ClassVar[bool] = False
    """True: the runner gives each partition's instance a :class:`~dawnstream.streams.store.KeyedStore`
    as ``self.store`` (state checkpointed key by key, past one message); ``snapshot()`` then holds
    only what is not in the store."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.kind
        self.partition: int | None = None  # set by the runner: the input partition this instance serves
        self.store: Any = None  # a KeyedStore when keyed_state (set by the processor)

    def has_keyed_store(self) -> bool:
        """True when a runner gave this instance a keyed store (``keyed_state`` stages run without one in
        ``dawnstream process`` and tests, where their whole state travels in the snapshot blob)."""
        from dawnstream.streams.store import KeyedStore

        return isinstance(self.store, KeyedStore)

    def required_columns(self) -> set[str]:
        """Input columns this stage reads; rows lacking one are dead-lettered before the chain."""
        return set()

    def numeric_columns(self) -> set[str]:
        """Input columns this stage needs as numbers (string values there are dead-lettered)."""
        return set()

    def produced_columns(self) -> set[str]:
        """Columns this stage adds (later stages may read them without the input carrying them)."""
        return set()

    def passes_through(self) -> bool:
        """True when later stages see the input columns (False for ``select`` and aggregations)."""
        return True

    @abstractmethod
    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """Consume one batch, return zero or more output batches.

        A data error (:data:`~dawnstream.errors.DATA_ERRORS`) must be raised before the stage changes its
        state: the runner dead-letters the whole batch, and the stage must be as if it never saw it (a
        replay after a crash cuts the stream elsewhere). Values that one row can be refused for belong in
        :meth:`bad_rows`, which costs that row only.
        """

    def bad_rows(self, batch: pa.RecordBatch) -> dict[int, str]:
        """Rows of ``batch`` this stage refuses, ``{row index: why}``: values no row may carry (a gold label
        that is no class, an event time past the allowed skew). :meth:`Chain.bad_rows` asks each stage that
        reads input columns before any stage runs, so such a row is dead-lettered alone and moves no state
        (raising from :meth:`process` instead costs the whole batch). Must not change state. Default: none."""
        return {}

    def preflight(self) -> None:
        """Called once when a worker starts, before its first message: raise if this stage cannot work
        at all (e.g. every promoted version of a model it serves fails to load), so the job fails at
        start naming why instead of answering every request with an error. Default: nothing to check.

        Raises:
            DawnstreamError: the stage cannot run; the message says what to do.
        """
        return None

    def explain(self, schema: pa.Schema | None = None) -> str:
        """One line for ``dawnstream accel plan``: how this stage runs on batches of ``schema``
        (compiled by the accel layer, or interpreted). Operators with an accel lowering override it."""
        return f"stage {self.name} ({self.kind}): interpreted (no accel lowering)"

    def gauges(self) -> dict[str, float]:
        """Live numbers for ``/metrics`` (``dawnstream_stage_value{name=...}``), read every few seconds by
        the runner's thread. Default: none."""
        return {}

    def panel(self) -> dict[str, Any] | None:
        """What this stage's users look at, JSON-ready (e.g. the top explanations, the LF table), served at
        the worker's ``/stages`` for ``dawnstream ui``. Read by the runner's thread every few seconds, like
        :meth:`gauges`, so it must be cheap: return what the stage last computed. Default: None."""
        return None

    def on_tick(self, now_ms: int) -> list[pa.RecordBatch]:
        """Time-driven emission (wall clock ``now_ms``); default emits nothing."""
        return []

    def take_published(self) -> list[tuple[str, bytes]]:
        """Global-table records (``(key, value)``) published since the last call (``uses_global`` stages)."""
        return []

    def flush(self) -> list[pa.RecordBatch]:
        """End of a finite input: emit what is still held (open windows...). Default: nothing."""
        return []

    def snapshot(self) -> bytes:
        """Serialised state (JSON with a format version for stateless/simple operators)."""
        return orjson.dumps({"format": SNAPSHOT_FORMAT, "kind": self.kind, "state": self._state()})

    def restore(self, data: bytes) -> None:
        """Load state written by :meth:`snapshot`.

        Raises:
            ValueError: the snapshot is for another operator kind or a newer format.
        """
        doc = orjson.loads(data)
        if doc.get("kind") != self.kind or doc.get("format", 0) > SNAPSHOT_FORMAT:
            raise ValueError(
                f"snapshot of kind {doc.get('kind')!r} format {doc.get('format')} cannot restore "
                f"{self.kind!r} (format {SNAPSHOT_FORMAT})"
            )
        self._load_state(doc.get("state"))

    def _state(self) -> Any:
        return None

    def _load_state(self, state: Any) -> None:
        return None


class Chain:
    """An ordered list of operators applied batch by batch.

    Output batches of stage *i* are the inputs of stage *i+1*; whatever the last stage returns is
    the chain's output.
    """

    def __init__(self, operators: Iterable[Operator]) -> None:
        self.operators = list(operators)
        names = [op.name for op in self.operators]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {sorted(dupes)}")

    def _input_columns(self, wanted: Callable[[Operator], set[str]]) -> set[str]:
        need: set[str] = set()
        produced: set[str] = set()
        for op in self.operators:
            need |= wanted(op) - produced
            produced |= op.produced_columns()
            if not op.passes_through():
                break
        return need

    def required_columns(self) -> set[str]:
        """Columns the *input* must carry: each stage's reads minus what earlier stages produce."""
        return self._input_columns(lambda op: op.required_columns())

    def numeric_columns(self) -> set[str]:
        """Input columns the chain uses as numbers (same scoping as :meth:`required_columns`)."""
        return self._input_columns(lambda op: op.numeric_columns())

    def bad_rows(self, batch: pa.RecordBatch) -> dict[int, tuple[str, str]]:
        """Rows of the chain's input that a stage refuses (:meth:`Operator.bad_rows`), ``{row: (stage, why)}``,
        the first refusing stage's. Asked of the stages that read the input's columns as given: up to the
        first stage that does not pass its input through, and not of a stage reading a column an earlier
        stage produces (that stage's :meth:`~Operator.process` still raises on it, costing the batch)."""
        out: dict[int, tuple[str, str]] = {}
        produced: set[str] = set()
        names = set(batch.schema.names)
        for op in self.operators:
            reads = op.required_columns()
            if not (reads & produced) and reads <= names:
                for row, why in op.bad_rows(batch).items():
                    out.setdefault(row, (op.name, why))
            produced |= op.produced_columns()
            if not op.passes_through():
                break
        return out

    def process(self, batch: pa.RecordBatch, stats: StageStats | None = None) -> list[pa.RecordBatch]:
        """Run ``batch`` through every stage.

        Args:
            stats: if given, accumulates ``[seconds, rows in, rows out]`` per stage name.
        """
        return self._cascade(0, [batch], stats)

    def _cascade(
        self, start: int, batches: list[pa.RecordBatch], stats: StageStats | None = None
    ) -> list[pa.RecordBatch]:
        for op in self.operators[start:]:
            t0 = time.perf_counter()
            nxt: list[pa.RecordBatch] = []
            for b in batches:
                nxt.extend(op.process(b))
            if stats is not None:
                s = stats.setdefault(op.name, [0.0, 0, 0])
                s[0] += time.perf_counter() - t0
                s[1] += sum(b.num_rows for b in batches)
                s[2] += sum(b.num_rows for b in nxt)
            batches = [b for b in nxt if b.num_rows]
        return batches

    def gauges(self) -> dict[str, float]:
        """Live numbers for ``/metrics`` (``dawnstream_stage_value{name=...}``), read every few seconds by
        the runner's thread. Default: none."""
        return {}

    def on_tick(self, now_ms: int) -> list[pa.RecordBatch]:
        """Tick every stage; what a stage emits flows through the stages after it."""
        out: list[pa.RecordBatch] = []
        for i, op in enumerate(self.operators):
            emitted = op.on_tick(now_ms)
            if emitted:
                out.extend(self._cascade(i + 1, emitted))
        return out

    def flush(self) -> list[pa.RecordBatch]:
        """Flush every stage in order (end of a finite input)."""
        out: list[pa.RecordBatch] = []
        for i, op in enumerate(self.operators):
            emitted = op.flush()
            if emitted:
                out.extend(self._cascade(i + 1, emitted))
        return out

    def snapshot(self) -> dict[str, bytes]:
        """``{stage name: snapshot bytes}`` for stateful stages."""
        return {op.name: op.snapshot() for op in self.operators if op.stateful}

    def restore(self, snapshots: Mapping[str, bytes]) -> None:
        """Restore stages from :meth:`snapshot` output (unknown names are ignored)."""
        for op in self.operators:
            if op.name in snapshots:
                op.restore(snapshots[op.name])
