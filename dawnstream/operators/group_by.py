"""``group_by``: re-key the stream so that every row of a key reaches the same partition.

Keyed state and windows are per input partition. When the input is keyed by something else (flights
keyed by ``tailnum``, counted by ``origin``), each partition holds part of every key, and a window
count gives one partial count per (window, key, partition). ``group_by: {key: origin}`` splits the
job in two where it stands, as Kafka Streams splits a topology into sub-topologies at a repartition
(``KStream.groupBy``; Quix Streams ``StreamingDataFrame.group_by``):

1. the stages before it read the input and write their rows to an internal **repartition topic**
   ``state.<job>.by-<key>.v1`` (owned by the job, created with its partition count), as Arrow IPC,
   one message per destination partition per batch: partition = CRC-32 of the key's UTF-8 bytes mod
   the partition count (:func:`partition_of`);
2. the stages after it read the repartition topic, where every row of a key is in one partition.
   Each row carries the input partition it came from (:data:`SOURCE_PARTITION`), so an event-time
   window there advances with the slowest upstream partition, not the fastest: the upstream
   partitions' rows interleave on the repartition topic in whatever order their batches were read.
   Upstream partitions that hold no rows at all are left out (the runner reads the input topic's
   offsets: :meth:`~dawnstream.streams.processor.BatchProcessor.set_upstream_active`).

Each half is a worker of its own (``dawnstream run`` starts both, in one supervised job; the
first's metrics port is ``metrics.port + 100``) with its own consumer group and changelog; under
``exactly_once`` both hops are transactional and the second reads ``read_committed``, so a row is
counted once end to end. Outside Kafka (``dawnstream process``: one partition) the stage passes rows
through unchanged, which is what re-keying one partition amounts to.
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dawnstream.errors import ConfigError
from dawnstream.operators.base import Operator

SOURCE_PARTITION = "__source_partition"
"""Column the rows on a repartition topic carry: the input partition they were read from (int32). The
watermark of a window after the ``group_by`` is the minimum over these upstream partitions of their
latest event time (:class:`~dawnstream.operators.window_count.WindowCount`); outputs never carry it."""


def partition_of(batch: pa.RecordBatch, key: str, partitions: int) -> np.ndarray:
    """The repartition topic's partition of each row: CRC-32 (zlib) of the key value's text, mod ``partitions``.

    Args:
        batch: rows with a column ``key`` (any type, read as its Arrow string cast; a null key: partition 0).
        key: the column to group by.
        partitions: the repartition topic's partition count (>= 1).

    Returns:
        int32 array ``[batch.num_rows]`` of partition numbers in ``[0, partitions)``.
    """
    col = batch.column(key)
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    words = col.dictionary
    if not pa.types.is_string(words.type):
        words = words.cast(pa.string())  # as a JSON row's value and an Arrow column's would both read
    table = np.asarray([zlib.crc32(w.encode()) % partitions if w is not None else 0 for w in words.to_pylist()]
                       + [0], dtype=np.int32)  # the last entry: a null key
    idx = col.indices.fill_null(len(words)).to_numpy(zero_copy_only=False).astype(np.int64)
    return table[idx]


class GroupBy(Operator):
    """Marks where the job is re-keyed by ``key`` (see the module docstring); passes rows through.

    Args:
        key: the column whose value decides the partition (required in every row).

    Raises:
        ConfigError: ``key`` is not a non-empty column name.

    >>> op = GroupBy(key="origin")
    >>> op.process(pa.record_batch({"origin": ["JFK"], "n": [1]}))[0].num_rows
    1
    """

    kind = "group_by"

    def __init__(self, key: str, name: str | None = None) -> None:
        super().__init__(name)
        if not isinstance(key, str) or not key:
            raise ConfigError("key", f"expected the name of the column to group by, got {key!r}")
        self.key = key

    def required_columns(self) -> set[str]:
        return {self.key}

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        if self.key not in batch.schema.names:
            raise KeyError(f"group_by: no column {self.key!r} to group by (columns: {batch.schema.names})")
        return [batch]

    def _state(self) -> None:
        return None

    def _load_state(self, state: object) -> None:
        return None


__all__ = ["SOURCE_PARTITION", "GroupBy", "partition_of"]
