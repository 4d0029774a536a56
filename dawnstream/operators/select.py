"""``select``: keep (and optionally rename) a list of columns, in the given order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

from dawnstream.errors import ConfigError
from dawnstream.operators.base import Operator


class Select(Operator):
    """Project to ``columns``; ``rename`` maps old names to new ones afterwards.

    >>> import pyarrow as pa
    >>> s = Select(columns=["b", "a"], rename={"a": "alpha"})
    >>> s.process(pa.record_batch({"a": [1], "b": [2], "c": [3]}))[0].schema.names
    ['b', 'alpha']
    """

    kind = "select"

    def __init__(
        self,
        columns: Sequence[str],
        rename: Mapping[str, str] | None = None,
        name: str | None = None,
        _path: str = "columns",
    ) -> None:
        super().__init__(name)
        if not columns or isinstance(columns, str):
            raise ConfigError(_path, "select needs a non-empty list of column names")
        self.columns = list(columns)
        self.rename = dict(rename or {})
        unknown = set(self.rename) - set(self.columns)
        if unknown:
            raise ConfigError("rename", f"renames columns that are not selected: {sorted(unknown)}")

    def required_columns(self) -> set[str]:
        return set(self.columns)

    def passes_through(self) -> bool:
        return False

    def produced_columns(self) -> set[str]:
        return {self.rename.get(c, c) for c in self.columns}

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        out = batch.select(self.columns)
        if self.rename:
            out = out.rename_columns([self.rename.get(c, c) for c in self.columns])
        return [out]
