"""JSON rows: one JSON object per message (what most producers send).

Decoding parses the whole micro-batch at once with ``pyarrow.json`` (C++, ~1.8 us/row here) and
falls back to checking each message with ``orjson`` only when the bulk parse fails or a required
column has nulls, so one bad message never costs the batch its speed or its good rows.
Encoding uses ``polars.DataFrame.write_ndjson`` (Rust, ~1.1 us/row) and splits the lines.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from dawnstream.topics.codecs.base import CONTENT_TYPE_HEADER, Codec, Decoded, keys_of
from dawnstream.topics.message import Encoded, Message, Rejected
from dawnstream.topics.schema import (
    FLOAT_EXACT_LIMIT,
    RowSchema,
    beyond_exact_float,
    cast_json_values,
    int_in_range,
    value_fits,
)

_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, pa.ArrowIndexError)


SMALL_BATCH = 384
"""Batches up to this many rows of plain values are encoded row by row (orjson, ~1.2 µs a row of a serving
reply): polars' writer costs ~330 µs a call before its ~0.6 µs a row, so it wins only above ~400 rows
(measured on the serve stage's 11-column replies: 64 rows 77 vs 330 µs, 1,024 rows 1.2 vs 0.6 ms)."""

SMALL_DECODE = 32
"""Batches below this many messages whose columns the schema already knows are decoded row by row
(orjson, ~7 µs a row): pyarrow's JSON reader costs ~200 µs a call whatever the size, which a serving
worker paid on every partition's micro-batch of a few requests. A batch that brings a new column takes the
checked row path whatever its size: the column's type is learned from the first good row that carries it
(:func:`_learn_from`), never from the reader's guess over a whole batch, so it does not depend on the cut."""


KNOWN_DECODE = 256
"""Batches below this many messages whose rows are plain and whose columns the schema knows are decoded a
column at a time (:meth:`JsonRowsCodec._known_columns`, ~1 µs a row of a serving request): the row path's
checks cost ~5 µs a row and pyarrow's reader ~200 µs a call, which at the few dozen requests a serving
worker's micro-batch holds under load was a quarter of its CPU per request. Above it the reader wins."""


def _fits_column(col: list[Any], t: pa.DataType) -> bool:
    """Whether every value of ``col`` (parsed JSON) is null or of the exact Python type that column type
    ``t`` takes without question (what :func:`~dawnstream.topics.schema.value_fits` accepts first);
    False for anything else, including what the row path would still accept (6.0 in an integer column),
    so that it decides."""
    vals = [v for v in col if v is not None]
    if not vals:
        return True
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return all(type(v) is str for v in vals)
    if pa.types.is_boolean(t):
        return all(type(v) is bool for v in vals)
    if pa.types.is_integer(t):
        if not all(type(v) is int for v in vals):
            return False
        return int_in_range(min(vals), t) and int_in_range(max(vals), t)
    if pa.types.is_floating(t):
        if not all(type(v) is float or type(v) is int for v in vals):
            return False
        ints = [v for v in vals if type(v) is int]
        return not ints or (-FLOAT_EXACT_LIMIT <= min(ints) and max(ints) <= FLOAT_EXACT_LIMIT)
    return False


def _plain(t: pa.DataType) -> bool:
    """Types orjson writes exactly as polars' NDJSON writer does (finite floats, ints, strings, bools)."""
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t) or pa.types.is_boolean(t) \
        or pa.types.is_large_string(t) or pa.types.is_null(t)


def _learned_type(value: Any) -> pa.DataType | str:
    """The type a new column learns from its first non-null value: what pyarrow's JSON reader infers for
    that value alone (an ISO 8601 string is a timestamp, as on the bulk path), or why it cannot teach one."""
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        if int_in_range(value, pa.int64()):
            return pa.int64()
        return (f"integer {value} is beyond int64 and cannot set the column's type; send it as a string, "
                "or declare the column in input.schema")
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str):
        try:
            t = pajson.read_json(io.BytesIO(orjson.dumps({"v": value}))).schema.field("v").type
        except _ARROW_ERRORS:
            return pa.string()
        return t if pa.types.is_timestamp(t) else pa.string()
    return f"{type(value).__name__} values are not supported"


def _learn_from(row: dict[str, Any], schema: RowSchema, raw: bytes = b"") -> str | None:
    """Learn the undeclared columns ``row`` brings (a good row: the caller checked its known columns), each
    typed by its value (:func:`_learned_type`); or say why the row cannot be taken, learning nothing.
    ``raw``: the message, re-read where orjson turned an integer literal past 64 bits into a float."""
    new = {k: v for k, v in row.items() if k not in schema.fields and v is not None}
    if not new:
        return None
    if raw and any(type(v) is float and v.is_integer() and abs(v) >= 2.0**63 for v in new.values()):
        import json

        exact = json.loads(raw)  # Python's parser keeps the literal's type: an int stays an int
        new = {k: exact.get(k, v) for k, v in new.items()}
    why = schema.room_for(len(new))
    if why is not None:
        return why
    fields = []
    for k, v in new.items():
        t = _learned_type(v)
        if isinstance(t, str):
            return f"column {k!r}: {t}"
        if k in schema.numeric:
            t = pa.float64()
        misfit = value_fits(v, t)
        if misfit is not None:
            return f"column {k!r}: {misfit} (the chain uses it as a number)"
        fields.append(pa.field(k, t))
    schema.learn(pa.schema(fields))
    return None


def _nested_column(obj: dict[str, Any]) -> str | None:
    """Why a parsed row is not flat (its first column holding an object or array), or None."""
    for k, v in obj.items():
        if isinstance(v, (dict, list)):
            return f"column {k!r}: nested {type(v).__name__} values are not supported (send flat rows)"
    return None


def _duplicate_key(raw: bytes) -> str | None:
    """First top-level key that appears twice (orjson keeps the last one silently), or None.

    Only called on rows already known to be flat: ``json.loads`` recurses in C with Python's
    recursion limit, so a deeply nested value (which orjson accepts up to 1024 levels) would raise
    ``RecursionError`` here instead of becoming a dead letter.
    """
    import json

    found: list[str] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys) and not found:
            found.append(next(k for k in keys if keys.count(k) > 1))
        return dict(pairs)

    try:
        json.loads(raw, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return None
    return found[0] if found else None


def _is_flat(schema: pa.Schema) -> bool:
    return not any(pa.types.is_nested(f.type) for f in schema)


class JsonRowsCodec(Codec):
    """One flat JSON object per message, e.g. ``{"carrier": "UA", "dep_delay": 12.0}``.

    Args:
        max_message_bytes: messages larger than this are rejected (default 1 MiB) so one huge
            payload cannot stall a worker.
    """

    name = "json"
    content_type = "application/json"

    def __init__(self, max_message_bytes: int = 1 << 20) -> None:
        self.max_message_bytes = max_message_bytes

    # -- decode -----------------------------------------------------------------------------
    def decode(self, messages: list[Message], schema: RowSchema) -> Decoded:
        rejected: list[Rejected] = []
        values: list[bytes] = [m.value for m in messages]  # type: ignore[misc]
        if values and all(values) and max(map(len, values)) <= self.max_message_bytes:
            idx = list(range(len(values)))  # the common case, checked by C builtins
        else:
            idx = []
            for i, v in enumerate(values):
                if not v:
                    rejected.append(Rejected(messages[i], "empty message: expected one JSON object"))
                elif len(v) > self.max_message_bytes:
                    rejected.append(Rejected(
                        messages[i], f"message of {len(v)} bytes exceeds max_message_bytes={self.max_message_bytes}"
                    ))
                else:
                    idx.append(i)
        if not idx:
            return Decoded(None, rejected=rejected)
        if len(idx) < KNOWN_DECODE and schema.fields:
            known = self._known_columns(values, idx, schema)
            if known is not None:
                rejected.sort(key=lambda r: r.message.offset)
                return Decoded(known, idx, [1] * len(idx), rejected)
        if len(idx) < SMALL_DECODE:
            small = self._rows(messages, idx, schema, rejected, known_only=True)
            if small is not None:
                return small
        fast = self._bulk(messages, values, idx, schema)
        if fast is not None:
            table, bad = fast
            if bad:
                bad_set = {i for i, _ in bad}
                rejected.extend(Rejected(messages[i], why) for i, why in bad)
                keep_mask = pa.array([i not in bad_set for i in idx])
                table = table.filter(keep_mask)
                idx = [i for i in idx if i not in bad_set]
            rejected.sort(key=lambda r: r.message.offset)
            return Decoded(table if table.num_rows else None, idx, [1] * len(idx), rejected)
        slow = self._rows(messages, idx, schema, rejected, known_only=False)
        assert slow is not None  # only known_only declines
        return slow

    @staticmethod
    def _known_columns(all_values: list[bytes], idx: list[int], schema: RowSchema) -> pa.Table | None:
        """The common case of a stream whose columns are known, decided a column at a time: each message
        parsed by orjson, then one check and one ``pa.array`` per column. ``None`` (nothing decided,
        nothing learned) as soon as a row is unusual - not JSON, not a flat object, possibly a repeated key,
        a column the schema lacks, a required column missing, a value its column's type does not take at
        once - so that the row path names it or the reader learns from it. What it accepts, the row path
        accepts with the same table (``tests/unit/test_codecs.py``)."""
        values = all_values if len(idx) == len(all_values) else [all_values[i] for i in idx]
        try:
            objs = [orjson.loads(v) for v in values]
        except orjson.JSONDecodeError:
            return None
        if not all(type(o) is dict for o in objs):
            return None
        fields = schema.fields
        # Every key needs a colon in the text: no more colons than keys, no key twice (as in the row path).
        if sum(v.count(b":") for v in values) != sum(map(len, objs)):
            return None
        if not all(fields.keys() >= o.keys() for o in objs):
            return None
        if any(not all(c in o for o in objs) for c in schema.required):
            return None
        arrays = []
        for name, t in fields.items():
            col = [o.get(name) for o in objs]
            if not _fits_column(col, t):
                return None
            try:
                arrays.append(pa.array(col, type=t))
            except _ARROW_ERRORS:  # not foreseen above: the row path decides
                return None
        return pa.Table.from_arrays(arrays, names=list(fields))

    def _bulk(
        self, messages: list[Message], all_values: list[bytes], idx: list[int], schema: RowSchema
    ) -> tuple[pa.Table, list[tuple[int, str]]] | None:
        """Parse all messages as NDJSON in one call; ``None`` means 'fall back to one by one'."""
        values = all_values if len(idx) == len(all_values) else [all_values[i] for i in idx]
        buf = b"\n".join(values)
        if buf.count(b"\n") != len(values) - 1 or b"\r" in buf:
            return None  # a message spanning lines (pretty-printed) would shift the row count
        known = schema.arrow_schema()
        try:
            table = pajson.read_json(
                io.BytesIO(buf),
                read_options=pajson.ReadOptions(use_threads=False, block_size=max(1 << 20, len(buf) + 1)),
                parse_options=pajson.ParseOptions(
                    explicit_schema=known if len(known) else None, unexpected_field_behavior="infer"
                ),
            )
        except _ARROW_ERRORS:
            return None
        if table.num_rows != len(values) or not _is_flat(table.schema):
            return None
        if any(f.name not in schema.fields and not pa.types.is_null(f.type) for f in table.schema):
            # A new column: the row path learns its type from the first good row that carries it, as it
            # would for any batch cut (the reader would infer from the whole batch, rejected rows included).
            return None
        try:
            table.validate(full=True)  # pyarrow's JSON reader does not check UTF-8 inside strings
        except _ARROW_ERRORS:
            return None
        for f in table.schema:
            # NaN / Infinity are not JSON; pyarrow accepts them, so let the strict path name the rows.
            # (min_count=0: a column of nulls only is all finite, not unknown)
            if pa.types.is_floating(f.type) and not pc.all(
                pc.is_finite(table.column(f.name)), skip_nulls=True, min_count=0
            ).as_py():
                return None
            # The parser rounds an integer literal beyond 2**53 into a float column: the strict path
            # checks such rows one by one.
            if pa.types.is_floating(f.type) and beyond_exact_float(table.column(f.name)):
                return None
        if schema.missing_required(table.column_names):
            return None
        bad: list[tuple[int, str]] = []
        for col in schema.required:
            column = table.column(col)
            if column.null_count:
                for pos in column.is_null().to_numpy(zero_copy_only=False).nonzero()[0]:
                    i = idx[int(pos)]
                    try:
                        obj = orjson.loads(all_values[i])
                    except orjson.JSONDecodeError:
                        return None
                    if isinstance(obj, dict) and col not in obj:
                        bad.append((i, f"missing required column(s) [{col!r}]"))
        try:
            table = schema.conform(table)
        except _ARROW_ERRORS:
            return None
        # De-duplicate in case several required columns are missing from the same row.
        seen: dict[int, str] = {}
        for i, why in bad:
            seen.setdefault(i, why)
        return table, sorted(seen.items())

    def _rows(
        self, messages: list[Message], idx: list[int], schema: RowSchema, rejected: list[Rejected],
        known_only: bool,
    ) -> Decoded | None:
        """Parse, check and build row by row: every bad row is rejected with its reason. ``known_only``:
        return None (nothing rejected, nothing learned) when a parsed row has a column the schema lacks."""
        if known_only:
            rejected = list(rejected)  # the caller's list stays as it was if this path declines
        parsed: list[tuple[int, dict[str, Any]]] = []
        for i in idx:
            m = messages[i]
            try:
                obj = orjson.loads(m.value)  # type: ignore[arg-type]
            except orjson.JSONDecodeError as e:
                rejected.append(Rejected(m, f"invalid JSON: {e}"))
                continue
            if not isinstance(obj, dict):
                rejected.append(
                    Rejected(m, f"JSON {type(obj).__name__} is not an object: send one object per row")
                )
                continue
            nested = _nested_column(obj)
            if nested is not None:
                rejected.append(Rejected(m, nested))
                continue
            # Every key of the text needs a colon: with no more colons than distinct keys there is no
            # repeated one, and the slower check (a second, hooked parse) is skipped.
            raw = m.value or b""  # (parsed above: not empty)
            dup = _duplicate_key(raw) if raw.count(b":") > len(obj) else None
            if dup is not None:
                rejected.append(Rejected(m, f"duplicate field name {dup!r}: each column may appear once"))
                continue
            if known_only and not schema.fields.keys() >= obj.keys():
                return None
            parsed.append((i, obj))
        good: list[tuple[int, dict[str, Any]]] = []
        for i, obj in parsed:  # in offset order: the first good row that carries a column types it
            why = schema.check_row(obj) or _learn_from(obj, schema, messages[i].value or b"")
            if why is None:
                good.append((i, obj))
            else:
                rejected.append(Rejected(messages[i], why))
        rejected.sort(key=lambda r: r.message.offset)
        if not good:
            return Decoded(None, rejected=rejected)
        table = self._build(good, schema)
        kept = [i for i, _ in good]
        return Decoded(table, kept, [1] * len(kept), rejected)

    @staticmethod
    def _build(good: list[tuple[int, dict[str, Any]]], schema: RowSchema) -> pa.Table:
        arrays = []
        for name, t in schema.fields.items():
            values = [obj.get(name) for _, obj in good]
            try:
                arrays.append(pa.array(values, type=t))
            except _ARROW_ERRORS:
                arrays.append(cast_json_values(pa.array(values), t))
        return pa.Table.from_arrays(arrays, names=list(schema.fields))

    # -- encode -----------------------------------------------------------------------------
    def encode(self, batch: pa.RecordBatch, key_field: str | None = None) -> Encoded:
        if batch.num_rows == 0:
            return Encoded([])
        if batch.num_rows <= SMALL_BATCH and all(_plain(f.type) for f in batch.schema):
            # A few rows of plain values (serving replies): orjson per row, without polars' fixed cost.
            lines = [orjson.dumps(row) for row in batch.to_pylist()]
            return Encoded(lines, keys_of(batch, key_field), [(CONTENT_TYPE_HEADER, self.content_type.encode())])
        text = pl.from_arrow(pa.Table.from_batches([batch])).write_ndjson()  # type: ignore[union-attr]
        lines = text.encode().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return Encoded(lines, keys_of(batch, key_field), [(CONTENT_TYPE_HEADER, self.content_type.encode())])

