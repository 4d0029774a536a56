"""``filter``: keep rows where a boolean expression is true (null counts as false, like SQL WHERE)."""

from __future__ import annotations

import pyarrow as pa

from dawnstream.errors import ConfigError
from dawnstream.operators.base import Operator
from dawnstream.operators.expressions import as_array, evaluate, parse


class Filter(Operator):
    """Keep the rows where ``expr`` is true.

    Args:
        expr: boolean expression (see :mod:`dawnstream.operators.expressions`), e.g.
            ``"dep_delay > 60 and origin == 'JFK'"``.

    Raises:
        ConfigError: the expression does not parse, or gives a number or a string (not true/false).
        TypeError: the expression is not boolean for the given batch.

    >>> import pyarrow as pa
    >>> f = Filter(expr="x > 1")
    >>> f.process(pa.record_batch({"x": [0, 2, None, 5]}))[0].column("x").to_pylist()
    [2, 5]
    """

    kind = "filter"

    def __init__(self, expr: str, name: str | None = None, _path: str = "expr") -> None:
        super().__init__(name)
        self.expr_text = expr
        self.expr = parse(expr, _path)
        kind = self.expr.kind()
        if kind in ("number", "string"):
            raise ConfigError(_path, f"a filter keeps rows where the expression is true, but {expr!r} gives a "
                                     f"{kind}; compare it with something, e.g. '({expr}) > 0'")

    def required_columns(self) -> set[str]:
        return self.expr.columns()

    def numeric_columns(self) -> set[str]:
        return self.expr.numeric_columns()

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        mask = as_array(evaluate(self.expr, batch), batch.num_rows)
        if not pa.types.is_boolean(mask.type):
            raise TypeError(f"filter expression {self.expr_text!r} gives {mask.type}, not a boolean")
        return [batch.filter(mask, null_selection_behavior="drop")]
