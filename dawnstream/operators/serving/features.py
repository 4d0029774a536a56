"""The declared request schema of a ``predict`` stage: which feature columns a request carries, and their types.

A topology declares ``features: {name: type}``; every request is checked against it row by row, and a
request that does not conform gets an error reply naming the field and what was expected (a caller is
never left waiting, and no model sees a value it was not built for). Types:

- ``float64``: a finite number (JSON integers are numbers too; ``true``/``false`` are not);
- ``int64``: an integer (``3.0`` is refused: an id is not a measurement);
- ``string``: any text; ``category``: text, one of ``categories`` when those are given;
- ``vector[N]``: a list of exactly ``N`` finite numbers (an embedding, a pixel row), float32 to the model.

>>> s = FeatureSchema({"amount": "float64", "country": "category", "emb": "vector[2]"})
>>> s.problem({"amount": 12.5, "country": "NL", "emb": [0.1, 0.2]}) is None
True
>>> s.problem({"amount": "12", "country": "NL", "emb": [0.1, 0.2]})
"field 'amount' must be a finite number (float64), got '12'"
>>> s.problem({"amount": 1.0, "country": "NL", "emb": [0.1]})
"field 'emb' must be a list of 2 finite numbers (vector[2]), got 1 values"
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from dawnstream.errors import ConfigError

_VECTOR = re.compile(r"^vector\[(\d{1,6})\]$")
SCALAR_TYPES = ("float64", "int64", "string", "category")


class FeatureType:
    """One declared column type (see the module docstring); ``width``: the vector length (1 for scalars)."""

    def __init__(self, spec: str, path: str = "features", categories: list[str] | None = None) -> None:
        self.spec = str(spec)
        m = _VECTOR.match(self.spec)
        if m:
            self.kind, self.width = "vector", int(m.group(1))
            if self.width < 1:
                raise ConfigError(path, "a vector needs at least one element, e.g. vector[16]")
        elif self.spec in SCALAR_TYPES:
            self.kind, self.width = self.spec, 1
        else:
            raise ConfigError(path, f"expected one of {', '.join(SCALAR_TYPES)} or vector[N], got {spec!r}")
        self.categories = set(categories) if categories else None

    @property
    def numeric(self) -> bool:
        """True for types a model reads as numbers (packable into a float tensor)."""
        return self.kind in ("float64", "int64", "vector")

    def problem(self, name: str, v: Any) -> str | None:
        """Why ``v`` is not a value of this type, or None."""
        if v is None:
            return f"missing field {name!r} ({self.spec})"
        if self.kind == "float64":
            if not _number(v):
                return f"field {name!r} must be a finite number (float64), got {_show(v)}"
        elif self.kind == "int64":
            if not isinstance(v, int) or isinstance(v, bool) or not -(2**63) <= v < 2**63:
                return f"field {name!r} must be an integer (int64), got {_show(v)}"
        elif self.kind in ("string", "category"):
            if not isinstance(v, str):
                return f"field {name!r} must be text ({self.kind}), got {_show(v)}"
            if self.categories is not None and v not in self.categories:
                return f"field {name!r}: {_show(v)} is not one of the declared categories"
        else:
            if not isinstance(v, list) or len(v) != self.width or not all(_number(x) for x in v):
                got = f"{len(v)} values" if isinstance(v, list) and len(v) != self.width else _show(v)
                return f"field {name!r} must be a list of {self.width} finite numbers ({self.spec}), got {got}"
        return None


class FeatureSchema:
    """The feature columns of a request, in declared order.

    Args:
        features: ``{column: type}`` (types as in the module docstring).
        categories: ``{column: [allowed values]}`` for ``category`` columns (optional: any text otherwise).
        path: the config key path, for errors.

    Raises:
        ConfigError: no features, an unknown type, categories for a column that is not a category.
    """

    def __init__(self, features: Mapping[str, str], categories: Mapping[str, list[str]] | None = None,
                 path: str = "features") -> None:
        if not isinstance(features, Mapping) or not features:
            raise ConfigError(path, "expected a mapping of feature columns to types, e.g. {amount: float64, "
                                    "country: category, text: string}")
        cats = dict(categories or {})
        self.types: dict[str, FeatureType] = {}
        for name, spec in features.items():
            self.types[str(name)] = FeatureType(spec, f"{path}.{name}", cats.get(str(name)))
        for name in cats:
            if name not in self.types or self.types[name].kind != "category":
                raise ConfigError(f"{path.rsplit('.', 1)[0]}.categories.{name}",
                                  "categories are for columns declared as category")
        self.names = list(self.types)

    def problem(self, row: Mapping[str, Any]) -> str | None:
        """The first reason ``row`` (column -> value) does not conform, or None."""
        for name, t in self.types.items():
            why = t.problem(name, row.get(name))
            if why is not None:
                return why
        return None

    def signature(self) -> str:
        """``amount: float64, text: string`` (for error messages)."""
        return ", ".join(f"{n}: {t.spec}" for n, t in self.types.items())


def column_array(t: FeatureType, values: list[Any]) -> np.ndarray:
    """``values`` (already validated against ``t``) as the array a model takes: float64 ``(n,)``, int64
    ``(n,)``, object ``(n,)`` of str, or float32 ``(n, N)`` for ``vector[N]``."""
    if t.kind == "float64":
        return np.asarray(values, dtype=np.float64)
    if t.kind == "int64":
        return np.asarray(values, dtype=np.int64)
    if t.kind == "vector":
        return np.asarray(values, dtype=np.float32).reshape(len(values), t.width)
    return np.asarray(values, dtype=object)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
