"""The transport-free heart of a worker: messages in, records out, dead letters on the side.

Both runners (Kafka and in-process) call :class:`BatchProcessor`, so a topology behaves the same
in tests, in the one-shot CLI and against a broker. Per micro-batch and partition it decodes
messages to one Arrow table (choosing the codec per message from the ``content-type`` header),
runs the partition's operator chain, encodes the outputs and builds dead-letter records.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from dawnstream.errors import DATA_ERRORS
from dawnstream.operators.base import Chain, Operator, StageStats
from dawnstream.operators.filter import Filter
from dawnstream.streams.config import OutputSpec, Topology
from dawnstream.streams.store import KeyedStore
from dawnstream.topics.codecs import CODECS, Codec, Decoded, codec_for_content_type, get_codec
from dawnstream.topics.codecs.base import CONTENT_TYPE_HEADER
from dawnstream.topics.dlq import dead_letter
from dawnstream.topics.message import Encoded, Message, OutRecord, Rejected
from dawnstream.topics.schema import RowSchema

ROW_CODECS = {"json", "arrow"}
OPERATOR_DATA_ERRORS = (*DATA_ERRORS, pa.ArrowNotImplementedError)


@dataclass
class BatchResult:
    """What one micro-batch of one partition produced.

    Attributes:
        outputs: ``[(default topic, Encoded), ...]`` in production order.
        dead_letters: ``[(dlq topic, record), ...]``.
        rows_in: rows decoded + rows rejected (messages for which the row count is unknown count 1).
        rows_out: rows in the chain's output batches (before fan-out to several output topics).
        rows_dead: rows (or messages) dead-lettered.
        stage_stats: ``[seconds, rows in, rows out]`` per stage (``decode``, each operator, ``encode``).
        published: global-table records ``(key, value)`` for the job's global topic
            (:mod:`~dawnstream.streams.global_table`), produced with the outputs.
        touched: (ticks) the partitions whose state the tick changed.
    """

    outputs: list[tuple[str, Encoded]] = field(default_factory=list)
    dead_letters: list[tuple[str, OutRecord]] = field(default_factory=list)
    rows_in: int = 0
    rows_out: int = 0
    rows_dead: int = 0
    dead_by_stage: dict[str, int] = field(default_factory=dict)
    stage_stats: StageStats = field(default_factory=dict)
    out_batches: list[pa.RecordBatch] = field(default_factory=list)
    published: list[tuple[str, bytes]] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)


def _make_output_codec(out: OutputSpec) -> Codec:
    if out.codec == "arrow":
        return get_codec("arrow", max_rows_per_message=out.max_rows_per_message)
    return get_codec(out.codec)


def _encode_partitioned(codec: Codec, rows: pa.RecordBatch, key: str, partitions: int,
                        source: int | None) -> Encoded:
    """``rows`` encoded per destination partition (:func:`~dawnstream.operators.group_by.partition_of`):
    the messages of partition p hold exactly its rows, in their order, each with the input partition
    ``source`` they were read from (:data:`~dawnstream.operators.group_by.SOURCE_PARTITION`)."""
    from dawnstream.operators.group_by import SOURCE_PARTITION, partition_of

    part = partition_of(rows, key, partitions)
    if source is not None:
        rows = rows.append_column(SOURCE_PARTITION, pa.array(np.full(rows.num_rows, source, np.int32)))
    values: list[bytes] = []
    dest: list[int] = []
    headers = None
    for p in np.unique(part).tolist():
        sub = codec.encode(rows.filter(pa.array(part == p)))
        values += sub.values
        dest += [p] * len(sub.values)
        headers = sub.headers
    return Encoded(values, None, headers, partitions=dest)


def _combine(parts: list[tuple[list[int], Decoded]], rejected: list[Rejected], schema: RowSchema) -> Decoded:
    """One :class:`Decoded` from decodes of sub-lists of a batch (``parts``: the sub-list's indexes into
    the batch, and its result), plus messages already ``rejected``."""
    tables: list[pa.Table] = []
    kept: list[int] = []
    rows: list[int] = []
    for idx, d in parts:
        rejected.extend(d.rejected)
        if d.table is not None:
            tables.append(d.table)
            kept.extend(idx[j] for j in d.kept)
            rows.extend(d.rows_per_kept)
    if not tables:
        return Decoded(None, rejected=rejected)
    return Decoded(schema.concat(tables), kept, rows, rejected)


class BatchProcessor:
    """Decode -> chain -> encode for one topology; one chain (and schema) per input partition.

    Args:
        topology: a validated :class:`~dawnstream.streams.config.Topology`.
        keep_batches: also return the output Arrow batches (in-process runner, tests).
    """

    def __init__(self, topology: Topology, keep_batches: bool = False) -> None:
        self.topology = topology
        self.keep_batches = keep_batches
        self.chains: dict[int, Chain] = {}
        self.schemas: dict[int, RowSchema] = {}
        probe = self._probe = topology.build_chain()
        # Columns the chain reads, and every column the topology declares a type for, must be present.
        self.required = probe.required_columns() | set(topology.input.row_schema)
        self.numeric = probe.numeric_columns()
        self.input_codec_name = topology.input.codec
        self.codecs: dict[str, Codec] = {name: get_codec(name) for name in CODECS}
        limit = topology.input.max_message_bytes
        self.codecs["json"] = get_codec("json", max_message_bytes=limit)
        from dawnstream.streams.state import changelog_topic
        from dawnstream.topics.reply_topics import ReplyTopics

        inp = topology.input
        outs = [o.topic for o in topology.outputs]
        self.replies = ReplyTopics(inp.reply_topics if inp.reply_topics is not None else outs,
                                   forbidden=[inp.topic, changelog_topic(topology.name)], outputs=outs)
        if topology.guarantee == "exactly_once":
            self.replies.ok_ttl_s = 0.0  # asked once per batch: a stale yes would stall the transaction
        self.codecs["requests"] = get_codec("requests", max_message_bytes=limit, replies=self.replies)
        self.codecs["arrow"] = get_codec("arrow", max_decoded_bytes=topology.input.max_decoded_bytes)
        self.codecs["frames"] = get_codec("frames", max_frame_pixels=topology.input.max_frame_pixels)
        self.outputs = [(o, _make_output_codec(o)) for o in topology.outputs]
        self.routes = [Filter(expr=o.where) if o.where is not None else None for o in topology.outputs]
        self._ct_cache: dict[bytes, str] = {}
        self.require_key = topology.input.require_key
        self.upstream_active: set[int] | None = None
        from dawnstream.streams.global_table import GlobalTable, global_topic

        self.global_table = GlobalTable()
        self.global_topic = global_topic(topology.name) if any(op.uses_global for op in probe.operators) else None
        self.global_partitions: set[int] | None = None
        self.global_drained: set[int] = set()
        self.hold_until_tick = False  # a Kafka worker's global stages emit held rows at ticks only

    def preflight(self) -> None:
        """Ask every stage whether it can run at all (:meth:`~dawnstream.operators.base.Operator.preflight`)
        on the chain built to read the topology's columns (no partition's), before the first message.

        Raises:
            DawnstreamError: a stage cannot run, saying why and what to do.
        """
        for op in self._probe.operators:
            op.preflight()

    # -- per-partition state ----------------------------------------------------------------
    def chain(self, partition: int) -> Chain:
        """The chain of ``partition`` (created on first use)."""
        c = self.chains.get(partition)
        if c is None:
            c = self.chains[partition] = self.topology.build_chain()
            for op in c.operators:
                op.partition = partition
                if op.keyed_state:
                    op.store = KeyedStore()
                if self.upstream_active is not None and hasattr(op, "upstream_active"):
                    op.upstream_active = set(self.upstream_active)
                if op.uses_global:
                    self._share_global(op)
        return c

    def _share_global(self, op: Operator) -> None:
        op.global_table = self.global_table  # type: ignore[attr-defined]
        op.global_partitions = None if self.global_partitions is None else set(self.global_partitions)  # type: ignore[attr-defined]
        op.hold_until_tick = self.hold_until_tick  # type: ignore[attr-defined]
        op.global_drained = set(self.global_drained)  # type: ignore[attr-defined]

    def set_global_partitions(self, partitions: set[int], drained: set[int] | None = None) -> None:
        """The input partitions whose rows a global stage's model learns from (the runner: those holding rows),
        and those read to their end (a model waiting for their next block need not wait)."""
        self.global_partitions = set(partitions)
        self.global_drained = set(drained or ())
        for c in self.chains.values():
            for op in c.operators:
                if op.uses_global:
                    self._share_global(op)

    def holding(self) -> int:
        """Rows global stages hold, waiting for other partitions' blocks (the ``label`` stage)."""
        return sum(int(getattr(op, "holding", 0)) for c in self.chains.values() for op in c.operators if op.uses_global)

    @staticmethod
    def _published(chain: Chain, res: BatchResult) -> None:
        for op in chain.operators:
            if op.uses_global:
                res.published.extend(op.take_published())

    def set_upstream_active(self, active: set[int]) -> None:
        """After a ``group_by``: the upstream partitions that hold rows at all (the runner reads them from
        the upstream topic's offsets); windows wait for these, not for partitions that are empty."""
        self.upstream_active = set(active)
        for c in self.chains.values():
            for op in c.operators:
                if hasattr(op, "upstream_active"):
                    op.upstream_active = set(active)

    def schema(self, partition: int) -> RowSchema:
        s = self.schemas.get(partition)
        if s is None:
            s = self.schemas[partition] = RowSchema(
                self.topology.input.row_schema, required=self.required, numeric=self.numeric,
                max_columns=self.topology.input.max_columns,
            )
        return s

    def snapshot(self, partition: int, offset: int) -> bytes:
        """State of ``partition`` after every input offset below ``offset`` (JSON, see streams.state)."""
        import base64

        import orjson

        chain = self.chain(partition)
        schema = self.schema(partition)
        return orjson.dumps({
            "format": 1, "offset": offset,
            "schema": base64.b64encode(schema.arrow_schema().serialize().to_pybytes()).decode(),
            "stages": {name: base64.b64encode(data).decode() for name, data in chain.snapshot().items()},
        })

    def keyed_changes(self, partition: int) -> list[tuple[bytes, bytes | None]]:
        """Changelog records of the keys changed since the last call, ``p<p>/<stage>/<key>``."""
        out: list[tuple[bytes, bytes | None]] = []
        for op in self.chain(partition).operators:
            if op.keyed_state:
                prefix = f"p{partition}/{op.name}/".encode()
                out.extend((prefix + k, v) for k, v in op.store.changes())
        return out

    def apply_keyed(self, partition: int, records: dict[bytes, bytes | None]) -> None:
        """Load keyed-store records read back from the changelog (after :meth:`restore`)."""
        stores = {f"p{partition}/{op.name}/".encode(): op.store
                  for op in self.chain(partition).operators if op.keyed_state}
        for key, value in records.items():
            parts = key.split(b"/", 2)  # p<p> / <stage> / <key, which may itself hold '/'>
            store = stores.get(parts[0] + b"/" + parts[1] + b"/") if len(parts) == 3 else None
            if store is not None:
                store.apply(parts[2], value)

    def restore(self, partition: int, data: bytes) -> int:
        """Load a snapshot into ``partition``'s chain and schema; returns its input offset.

        Raises:
            ValueError: a snapshot of another format or topology (stage names that do not match).
        """
        import base64

        import orjson

        doc = orjson.loads(data)
        if doc.get("format") != 1:
            raise ValueError(f"unknown snapshot format {doc.get('format')!r}")
        self.drop_partition(partition)
        chain = self.chain(partition)
        names = {op.name for op in chain.operators if op.stateful}
        if set(doc["stages"]) - names:
            raise ValueError(f"snapshot has stages {sorted(doc['stages'])}, the topology has {sorted(names)}: "
                             "the topology changed; reset its changelog and consumer group to start over")
        chain.restore({k: base64.b64decode(v) for k, v in doc["stages"].items()})
        schema = self.schema(partition)
        learned = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(doc["schema"])))
        for f in learned:
            schema.fields.setdefault(f.name, f.type)
        return int(doc["offset"])

    def drop_partition(self, partition: int) -> None:
        """Forget a revoked partition's chain and schema."""
        self.chains.pop(partition, None)
        self.schemas.pop(partition, None)

    # -- decode -----------------------------------------------------------------------------
    def _codec_name(self, m: Message) -> str | Rejected:
        if self.require_key and m.key is None:
            return Rejected(m, "null key: this topic requires a message key (input.require_key)")
        ct = None
        for k, v in m.headers:
            if k == CONTENT_TYPE_HEADER or k.lower() == CONTENT_TYPE_HEADER:
                ct = v
        if ct is None:
            return self.input_codec_name
        hit = self._ct_cache.get(ct)
        if hit is not None:
            return hit
        res = self._resolve_content_type(m, ct)
        if isinstance(res, str) and len(self._ct_cache) < 64:
            self._ct_cache[ct] = res
        return res

    def _resolve_content_type(self, m: Message, ct: bytes) -> str | Rejected:
        topic_codec = self.input_codec_name
        try:
            ct_text = ct.decode("ascii")
        except UnicodeDecodeError:
            return Rejected(m, "content-type header is not ASCII")
        name = codec_for_content_type(ct_text)
        if name is None:
            return Rejected(m, f"unknown content-type {ct_text!r}; expected application/json, "
                               "application/vnd.apache.arrow.stream, image/jpeg or image/png")
        if topic_codec == "requests" and name == "json":
            return "requests"
        if name == topic_codec or (name in ROW_CODECS and topic_codec in ROW_CODECS):
            return name
        return Rejected(m, f"content-type {ct_text!r} cannot be decoded on a {topic_codec!r} topic")

    def decode(self, partition: int, messages: list[Message]) -> Decoded:
        """Decode one partition's messages; never raises for bad input."""
        schema = self.schema(partition)
        self.replies.new_batch()
        groups: dict[str, list[int]] = {}
        rejected: list[Rejected] = []
        for i, m in enumerate(messages):
            name = self._codec_name(m)
            if isinstance(name, Rejected):
                rejected.append(name)
            else:
                groups.setdefault(name, []).append(i)
        if len(groups) == 1 and not rejected and not self.require_key:
            (name,) = groups
            return self._decode_safely(name, messages, schema)
        parts = [(idx, self._decode_safely(name, [messages[i] for i in idx], schema)) for name, idx in groups.items()]
        return _combine(parts, rejected, schema)

    def _decode_safely(self, name: str, messages: list[Message], schema: RowSchema) -> Decoded:
        """``codec.decode``, and if the codec itself raises (a bug, or input it did not foresee),
        decode message by message so only the messages that make it raise are dead-lettered."""
        codec = self.codecs[name]
        try:
            return codec.decode(messages, schema)
        except Exception:  # noqa: BLE001 - whatever a message contains must end as a dead letter
            pass
        parts: list[tuple[list[int], Decoded]] = []
        rejected: list[Rejected] = []
        for i, m in enumerate(messages):
            try:
                parts.append(([i], codec.decode([m], schema)))
            except Exception as e:  # noqa: BLE001
                rejected.append(Rejected(m, f"the {name} decoder failed on this message: {type(e).__name__}: {e}"))
        return _combine(parts, rejected, schema)

    # -- the whole step ---------------------------------------------------------------------
    def process(self, partition: int, messages: list[Message]) -> BatchResult:
        """Decode, run the chain and encode one partition's micro-batch.

        A data error inside an operator (:data:`~dawnstream.errors.DATA_ERRORS`) dead-letters the
        batch's messages with that stage's name and the error (the worker keeps running); decoding
        problems dead-letter single messages.

        Raises:
            Exception: any other exception of an operator (a bug): nothing of the batch is emitted.
        """
        res = BatchResult()
        t0 = time.perf_counter()
        decoded = self.decode(partition, messages)
        for r in decoded.rejected:
            self._dead(res, r)
        res.rows_in = decoded.num_rows + sum(max(r.rows, 1) for r in decoded.rejected)
        res.stage_stats["decode"] = [time.perf_counter() - t0, res.rows_in, decoded.num_rows]
        if decoded.table is None:
            return res
        table = decoded.table.combine_chunks()
        if table.num_rows == 0:
            return res
        rb = table.to_batches()[0]
        chain = self.chain(partition)
        refused = chain.bad_rows(rb)
        if refused:  # before any stage runs: a refused row's message is dead-lettered alone, no state moves
            rb, decoded = self._drop_refused(res, messages, decoded, rb, refused)
            if rb.num_rows == 0:
                return res
        try:
            out = chain.process(rb, res.stage_stats)
        except OPERATOR_DATA_ERRORS as e:  # the batch's values: dead letters; anything else is a bug and stops
            stage = self._failing_stage(chain, res.stage_stats)
            for i, n in zip(decoded.kept, decoded.rows_per_kept, strict=True):
                self._dead(res, Rejected(messages[i], f"{type(e).__name__}: {e}", stage=stage, rows=n))
            self._published(chain, res)
            return res
        self._published(chain, res)
        try:
            self.emit(out, res, partition)
        except Exception as e:  # noqa: BLE001 - an output that cannot be encoded must not stop the worker
            res.outputs.clear()
            res.out_batches.clear()
            res.rows_out = 0
            for i, n in zip(decoded.kept, decoded.rows_per_kept, strict=True):
                self._dead(res, Rejected(messages[i], f"cannot encode the output: {type(e).__name__}: {e}",
                                         stage="encode", rows=n))
        return res

    def _drop_refused(self, res: BatchResult, messages: list[Message], decoded: Decoded, rb: pa.RecordBatch,
                      refused: dict[int, tuple[str, str]]) -> tuple[pa.RecordBatch, Decoded]:
        """Dead-letter the messages that carry a refused row (all of that message's rows: an Arrow message
        is one unit) and return the rows of the others."""
        owner = np.repeat(np.arange(len(decoded.kept)), decoded.rows_per_kept)
        first_row = np.concatenate([[0], np.cumsum(decoded.rows_per_kept)])
        reasons: dict[int, tuple[str, str]] = {}
        for row in sorted(refused):
            j = int(owner[row])
            if j not in reasons:
                stage, why = refused[row]
                n = decoded.rows_per_kept[j]
                reasons[j] = (stage, why if n == 1 else f"row {row - int(first_row[j])} of {n}: {why}")
        for j, (stage, why) in reasons.items():
            self._dead(res, Rejected(messages[decoded.kept[j]], why, stage=stage, rows=decoded.rows_per_kept[j]))
        keep = ~np.isin(owner, list(reasons))
        left = [j for j in range(len(decoded.kept)) if j not in reasons]
        return rb.filter(pa.array(keep)), Decoded(None, [decoded.kept[j] for j in left],
                                                   [decoded.rows_per_kept[j] for j in left], decoded.rejected)

    @staticmethod
    def _failing_stage(chain: Chain, stats: StageStats) -> str:
        for op in chain.operators:
            if op.name not in stats:
                return op.name
        return chain.operators[-1].name if chain.operators else "chain"

    def emit(self, batches: list[pa.RecordBatch], res: BatchResult, partition: int | None = None) -> None:
        """Encode ``batches`` (output rows of input ``partition``) for every output topic into ``res``."""
        from dawnstream.operators.group_by import SOURCE_PARTITION

        t0 = time.perf_counter()
        n_in = sum(b.num_rows for b in batches)
        n_records = 0
        for b in batches:
            if SOURCE_PARTITION in b.schema.names:  # after a group_by: the upstream partition is not output
                b = b.drop_columns([SOURCE_PARTITION])
            res.rows_out += b.num_rows
            if self.keep_batches:
                res.out_batches.append(b)
            for (spec, codec), route in zip(self.outputs, self.routes, strict=True):
                rows = b if route is None else route.process(b)[0]
                if not rows.num_rows:
                    continue
                enc = codec.encode(rows, spec.key_field) if spec.partition_by is None else \
                    _encode_partitioned(codec, rows, spec.partition_by, spec.partitions or 1, partition)
                n_records += len(enc)
                res.outputs.append((spec.topic, enc))
        s = res.stage_stats.setdefault("encode", [0.0, 0, 0])
        s[0] += time.perf_counter() - t0
        s[1] += n_in
        s[2] += n_records

    def _dead(self, res: BatchResult, r: Rejected) -> None:
        res.dead_letters.append(dead_letter(r))
        n = max(r.rows, 1)
        res.rows_dead += n
        res.dead_by_stage[r.stage] = res.dead_by_stage.get(r.stage, 0) + n

    def tick(self, now_ms: int, skip: Callable[[int], bool] = lambda p: False) -> BatchResult:
        """Run time-driven emission of every partition's chain (not of those ``skip`` names: still recovering)."""
        res = BatchResult()
        for p, chain in list(self.chains.items()):
            if skip(p):
                continue
            before = [getattr(op, "tick_changes", 0) for op in chain.operators]
            out = chain.on_tick(now_ms)
            if out or before != [getattr(op, "tick_changes", 0) for op in chain.operators]:
                res.touched.add(p)  # emitted, or its state moved (a global stage folded a block)
            if out:
                self.emit(out, res, p)
            self._published(chain, res)
        return res

    def flush(self) -> BatchResult:
        """End of a finite input: flush every chain (open windows are emitted, held rows labelled)."""
        res = BatchResult()
        for p in sorted(self.chains):
            self.emit(self.chains[p].flush(), res, p)
            self._published(self.chains[p], res)
        return res
