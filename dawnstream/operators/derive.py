"""``derive``: add (or replace) columns computed from expressions over the row."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pyarrow as pa

from dawnstream.errors import ConfigError
from dawnstream.operators.base import Operator
from dawnstream.operators.expressions import Node, as_array, evaluate, parse


class Derive(Operator):
    """Compute new columns, in order (a later column may use an earlier one).

    Args:
        columns: ``{new column: expression}``, e.g. ``{"total_delay": "dep_delay + arr_delay"}``.

    >>> import pyarrow as pa
    >>> d = Derive(columns={"y": "x * 2", "big": "y > 5"})
    >>> out = d.process(pa.record_batch({"x": [1, 3]}))[0]
    >>> out.column("y").to_pylist(), out.column("big").to_pylist()
    ([2, 6], [False, True])
    """

    kind = "derive"

    def __init__(self, columns: Mapping[str, str], name: str | None = None, _path: str = "columns") -> None:
        super().__init__(name)
        if not columns:
            raise ConfigError(_path, "derive needs at least one {column: expression}")
        self.columns: list[tuple[str, Node]] = [(k, parse(v, f"{_path}.{k}")) for k, v in columns.items()]

    def _reads(self, wanted: Callable[[Node], set[str]]) -> set[str]:
        need: set[str] = set()
        made: set[str] = set()
        for name, node in self.columns:
            need |= wanted(node) - made  # a later column may use an earlier derived one
            made.add(name)
        return need

    def required_columns(self) -> set[str]:
        return self._reads(Node.columns)

    def numeric_columns(self) -> set[str]:
        return self._reads(Node.numeric_columns)

    def produced_columns(self) -> set[str]:
        return {name for name, _ in self.columns}

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        for name, node in self.columns:
            values = as_array(evaluate(node, batch), batch.num_rows)
            idx = batch.schema.get_field_index(name)
            if idx >= 0:
                batch = batch.set_column(idx, name, values)
            else:
                batch = batch.append_column(name, values)
        return [batch]
