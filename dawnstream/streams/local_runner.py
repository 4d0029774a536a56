"""In-process runner: the same operator chain over files, tables or messages, without Kafka.

Used by the one-shot CLI (``dawnstream process``) and the unit tests. Messages go through the
same :class:`~dawnstream.streams.processor.BatchProcessor` as in a worker, so decoding and
dead-lettering behave identically; Arrow tables skip decoding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from dawnstream.errors import DawnstreamError
from dawnstream.streams.config import Topology
from dawnstream.streams.processor import BatchProcessor
from dawnstream.topics.message import Message, OutRecord


@dataclass
class LocalResult:
    """Outputs of a local run: Arrow batches, encoded records per topic, dead letters, counts."""

    batches: list[pa.RecordBatch] = field(default_factory=list)
    records: list[tuple[str, OutRecord]] = field(default_factory=list)
    dead_letters: list[tuple[str, OutRecord]] = field(default_factory=list)
    rows_in: int = 0
    rows_out: int = 0
    rows_dead: int = 0

    def table(self) -> pa.Table | None:
        """All output rows as one table (``None`` when nothing came out)."""
        return pa.Table.from_batches(self.batches) if self.batches else None


class LocalRunner:
    """Run a topology's chain in this process.

    Args:
        topology: validated topology (its input/output topics only label the records).
        batch_rows: rows per micro-batch when feeding a table, default ``batch.max_messages``.
        encode: also encode output records (as a worker would produce them).
    """

    def __init__(self, topology: Topology, batch_rows: int | None = None, encode: bool = True) -> None:
        self.topology = topology
        self.processor = BatchProcessor(topology, keep_batches=True)
        self.processor.preflight()
        self.batch_rows = batch_rows or topology.batch.max_messages
        self.encode = encode

    def _collect(self, res_outputs: LocalResult, res: object) -> None:
        from dawnstream.streams.processor import BatchResult

        assert isinstance(res, BatchResult)
        res_outputs.batches.extend(res.out_batches)
        if self.encode:
            for topic, enc in res.outputs:
                res_outputs.records.extend((rec.topic or topic, rec) for rec in enc.records())
        res_outputs.dead_letters.extend(res.dead_letters)
        res_outputs.rows_in += res.rows_in
        res_outputs.rows_out += res.rows_out
        res_outputs.rows_dead += res.rows_dead

    def run_messages(self, messages: Iterable[Message], flush: bool = True) -> LocalResult:
        """Decode and process messages in micro-batches of ``batch_rows`` (per partition)."""
        out = LocalResult()
        pending: dict[int, list[Message]] = {}
        messages = list(messages)
        self.processor.set_global_partitions({m.partition for m in messages} or {0})  # every partition's rows
        for m in messages:
            lst = pending.setdefault(m.partition, [])
            lst.append(m)
            if len(lst) >= self.batch_rows:
                self._collect(out, self.processor.process(m.partition, lst))
                pending[m.partition] = []
        for p, lst in pending.items():
            if lst:
                self._collect(out, self.processor.process(p, lst))
        if flush:
            self._collect(out, self.processor.flush())
        return out

    def run_table(self, table: pa.Table, flush: bool = True) -> LocalResult:
        """Process an Arrow table in micro-batches (partition 0), then flush.

        Raises:
            DawnstreamError: the table lacks columns the chain reads.
        """
        missing = sorted(self.processor.required - set(table.column_names))
        if missing:
            raise DawnstreamError(
                f"the input lacks column(s) {missing} that the stages read; it has {table.column_names}"
            )
        out = LocalResult()
        chain = self.processor.chain(0)
        for b in table.to_batches(max_chunksize=self.batch_rows):
            if b.num_rows == 0:
                continue
            out.rows_in += b.num_rows
            from dawnstream.streams.processor import BatchResult

            res = BatchResult()
            self.processor.emit(chain.process(b, res.stage_stats), res)
            self._collect(out, res)
        if flush:
            self._collect(out, self.processor.flush())
        return out
