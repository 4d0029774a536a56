"""Row schemas: the columns a topic's rows must have, declared in the config or learned from data.

A :class:`RowSchema` decides, per message, whether rows are usable: required columns present and
each value convertible to the column's Arrow type. Rows that fail are rejected with a reason
(they go to the dead-letter topic); the rest are conformed to one Arrow schema so every batch a
chain sees has the same columns and types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from dawnstream.errors import ConfigError

_TYPE_NAMES: dict[str, pa.DataType] = {
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "float": pa.float64(),
    "int": pa.int64(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "str": pa.string(),
    "binary": pa.binary(),
    "date": pa.date32(),
    "timestamp[s]": pa.timestamp("s"),
    "timestamp[ms]": pa.timestamp("ms"),
    "timestamp[us]": pa.timestamp("us"),
    "timestamp[ns]": pa.timestamp("ns"),
    "timestamp": pa.timestamp("ms"),
}


def parse_type(name: str, path: str = "type") -> pa.DataType:
    """Map a config type name (``int64``, ``float64``, ``string``, ``bool``, ``timestamp[ms]``...)
    to a ``pyarrow.DataType``.

    Raises:
        ConfigError: unknown name, listing the accepted ones.
    """
    t = _TYPE_NAMES.get(str(name).strip().lower())
    if t is None:
        raise ConfigError(path, f"unknown type {name!r}; expected one of {sorted(_TYPE_NAMES)}")
    return t


def value_fits(value: Any, t: pa.DataType) -> str | None:
    """Return ``None`` when Python ``value`` (from JSON) converts to Arrow type ``t``, else why not."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return f"nested {type(value).__name__} where {t} was expected"
    if pa.types.is_boolean(t):
        return None if isinstance(value, bool) else f"{type(value).__name__} {value!r:.40} is not a bool"
    if pa.types.is_integer(t):
        if isinstance(value, float) and value.is_integer():
            # What Arrow's safe cast accepts (6.0 -> 6), so both decode paths agree. JSON parsers
            # hand integers beyond 64 bits over as floats: those are out of range, not fractional.
            return None if int_in_range(int(value), t) else f"number {value!r} out of range for {t}"
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{type(value).__name__} {value!r:.40} is not an integer"
        return None if int_in_range(value, t) else f"integer {value} out of range for {t}"
    if pa.types.is_floating(t):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{type(value).__name__} {value!r:.40} is not a number"
        if isinstance(value, int) and abs(value) > FLOAT_EXACT_LIMIT:  # pyarrow refuses these, even the exact ones
            return f"integer {value} has no exact {t} value (beyond 2**53); send it as a string"
        return None
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return None if isinstance(value, str) else f"{type(value).__name__} {value!r:.40} is not a string"
    try:
        cast_json_values(pa.array([value]), t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        return f"{value!r:.40} does not convert to {t}: {e}"
    return None


def cast_json_values(arr: pa.Array, t: pa.DataType) -> pa.Array:
    """Cast ``arr`` (values parsed from JSON) to ``t`` the way pyarrow's JSON reader converts them, so
    the row-by-row decode path accepts exactly what the bulk path accepts: an ISO 8601 string with a
    zone offset (``2013-01-03T13:00:00+00:00``) becomes a zone-less timestamp in UTC, which Arrow's
    plain string cast refuses.

    Raises:
        pyarrow.ArrowInvalid / ArrowTypeError / ArrowNotImplementedError: a value does not convert.
    """
    try:
        return arr.cast(t)
    except pa.ArrowInvalid:
        if not (pa.types.is_timestamp(t) and t.tz is None and pa.types.is_string(arr.type)):
            raise
    utc = pa.timestamp(t.unit, "UTC")
    out = []
    for v in arr.to_pylist():  # a mix of zone-less and offset strings: each one by its own form
        one = pa.array([v], pa.string())
        try:
            out.append(one.cast(t))
        except pa.ArrowInvalid:
            out.append(one.cast(utc).cast(t))
    return pa.concat_arrays(out)


FLOAT_EXACT_LIMIT = float(1 << 53)
"""Integers up to this magnitude convert to float64 exactly."""


def int_in_range(v: int, t: pa.DataType) -> bool:
    """Whether integer ``v`` fits integer type ``t`` (signed or unsigned, by its bit width)."""
    bits = t.bit_width
    if pa.types.is_signed_integer(t):
        return bool(-(1 << (bits - 1)) <= v < (1 << (bits - 1)))
    return bool(0 <= v < (1 << bits))


def beyond_exact_float(col: pa.ChunkedArray | pa.Array) -> bool:
    """True when a numeric column holds a value of magnitude >= 2**53 (not exact as float64)."""
    import pyarrow.compute as pc

    bounds = pc.min_max(col).as_py()
    lo, hi = bounds["min"], bounds["max"]
    return lo is not None and (hi >= FLOAT_EXACT_LIMIT or lo <= -FLOAT_EXACT_LIMIT)


MAX_LEARNED_COLUMNS = 256
"""Undeclared columns a topic's schema learns at most (``input.max_columns``). Every learned column is
carried by every later row (as nulls where absent): one row of 10,000 keys once made its partition
~15,000x slower for good. A row that would pass the limit is dead-lettered; declare wider rows' columns
in ``input.schema`` or raise the limit."""


class RowSchema:
    """Columns and types that rows of one input topic must conform to.

    Args:
        declared: ``{column: type name}`` from the topology (fixed; wins over anything learned).
        required: columns every row must carry (usually the columns the operator chain reads).
            A row where a required column is *absent* is rejected; an explicit JSON ``null`` is kept.
        numeric: columns the chain uses as numbers: learned as float64 unless the data says int.
        max_columns: undeclared columns learned at most (:data:`MAX_LEARNED_COLUMNS`).

    An undeclared column's type is learned from the first good row (in partition order) that carries
    a non-null value for it, so it does not depend on where batches are cut nor on which decode path
    saw the row; later columns that appear are added. A later value that does not convert to its
    column's type is rejected, and a rejected row teaches nothing.
    """

    def __init__(
        self,
        declared: Mapping[str, str] | None = None,
        required: Iterable[str] = (),
        numeric: Iterable[str] = (),
        max_columns: int = MAX_LEARNED_COLUMNS,
    ) -> None:
        self.declared: dict[str, pa.DataType] = {
            k: parse_type(v, f"schema.{k}") for k, v in (declared or {}).items()
        }
        self.required: set[str] = set(required)
        self.numeric: set[str] = set(numeric) - set(self.declared)
        self.fields: dict[str, pa.DataType] = dict(self.declared)
        self.max_columns = int(max_columns)

    def learned(self) -> int:
        """How many undeclared columns are known."""
        return len(self.fields) - len(self.declared)

    def room_for(self, new: int) -> str | None:
        """Why ``new`` more undeclared columns cannot be learned (the limit), or ``None``."""
        if self.learned() + new <= self.max_columns:
            return None
        return (f"the row brings {new} undeclared column(s) and {self.learned()} are already learned; at most "
                f"{self.max_columns} are (input.max_columns): declare the columns in input.schema or raise the limit")

    def learn(self, schema: pa.Schema) -> None:
        """Add columns of ``schema`` not yet known (null-typed columns wait for a real type).

        A column the chain uses as a number is learned as float64 whatever the first rows say (a
        producer may write ``20`` for 20.0); any other column takes the given type.
        A known column's type never changes: a later value that does not fit it is dead-lettered.

        Raises:
            pyarrow.ArrowInvalid: the new columns would pass ``max_columns`` (nothing is learned).
        """
        new = [f for f in schema if f.name not in self.fields and not pa.types.is_null(f.type)]
        why = self.room_for(len(new))
        if why is not None:
            raise pa.ArrowInvalid(why)
        for f in new:
            self.fields[f.name] = pa.float64() if f.name in self.numeric else f.type

    def _hint(self, name: str, t: pa.DataType) -> str:
        if name in self.declared:
            return f" (declared {t} in input.schema)"
        return (f" (the column was learned as {t} from earlier rows; declare its type in the topology's "
                f"input.schema to accept other values)")

    def arrow_schema(self) -> pa.Schema:
        """The current target schema (declared first, then learned, in first-seen order)."""
        return pa.schema([pa.field(k, v) for k, v in self.fields.items()])

    def missing_required(self, present: Iterable[str]) -> list[str]:
        """Required columns absent from ``present``, sorted."""
        p = set(present)
        return sorted(c for c in self.required if c not in p)

    def check_row(self, row: Mapping[str, Any]) -> str | None:
        """Why a decoded JSON object is unusable, or ``None`` when it is fine."""
        missing = self.missing_required(row.keys())
        if missing:
            return f"missing required column(s) {missing}"
        for k, v in row.items():
            t = self.fields.get(k)
            if t is not None:
                why = value_fits(v, t)
                if why is not None:
                    return f"column {k!r}: {why}{self._hint(k, t)}"
            elif isinstance(v, (dict, list)):
                return f"column {k!r}: nested {type(v).__name__} values are not supported"
        return None

    def concat(self, tables: list[pa.Table]) -> pa.Table:
        """Concatenate conformed tables, re-conforming earlier ones to columns learned later."""
        target = self.arrow_schema()
        return pa.concat_tables([t if t.schema.equals(target) else self.conform(t) for t in tables])

    def conform(self, table: pa.Table) -> pa.Table:
        """Cast ``table`` to the target schema: add missing known columns as nulls, keep new ones.

        Raises:
            pyarrow.ArrowInvalid / ArrowTypeError / ArrowNotImplementedError: a column does not cast.
        """
        self.learn(table.schema)
        cols = []
        names = []
        for name, t in self.fields.items():
            if name in table.column_names:
                col = table.column(name)
                if col.type != t:
                    if pa.types.is_integer(col.type) and pa.types.is_floating(t) and beyond_exact_float(col):
                        raise pa.ArrowInvalid(f"column {name!r} has integers beyond 2**53: no exact {t} value")
                    # safe=True: a float in an integer column is an error, never a silent truncation.
                    col = col.cast(t, safe=True)
                cols.append(col)
            else:
                cols.append(pa.nulls(table.num_rows, type=t))
            names.append(name)
        return pa.Table.from_arrays(cols, names=names)
