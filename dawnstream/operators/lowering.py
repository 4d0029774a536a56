"""Translate topology expressions (:mod:`dawnstream.operators.expressions`) into typed IR.

The interpreter evaluates with ``pyarrow.compute``; a compiled kernel must give the same values.
So the type of every node is taken from Arrow itself (the node evaluated on an empty batch of the
same schema) and the IR casts each operand to it: ``int8 + int8`` wraps as an int8 like Arrow does,
``/`` divides in the float type Arrow picks, ``greatest`` ignores NaN like Arrow's
``max_element_wise``. Only numeric and boolean columns without nulls compile; strings, temporal
types, ``lower``/``upper``/``length`` and null literals stay with the interpreter
(:class:`NotCompilable` says why, for ``accel plan``).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from dawnstream.accel.ir import Expr, binary, cast, col, const, unary, where
from dawnstream.errors import DataError
from dawnstream.operators.expressions import Node, evaluate

_NUMPY = {pa.bool_(): "bool", pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64",
          pa.uint8(): "uint8", pa.uint16(): "uint16", pa.uint32(): "uint32", pa.uint64(): "uint64",
          pa.float32(): "float32", pa.float64(): "float64"}


class NotCompilable(Exception):
    """This expression or schema runs in the interpreter; the message says why."""


def numpy_dtype(t: pa.DataType) -> str:
    """numpy dtype name of an Arrow type the kernels handle.

    Raises:
        NotCompilable: any other type (strings, timestamps, decimals...)."""
    try:
        return _NUMPY[t]
    except KeyError:
        raise NotCompilable(f"type {t} is not compiled (numbers and booleans are)") from None


class Bridge:
    """Translates nodes against one schema; ``env`` maps column names to IR already derived."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.env: dict[str, Expr] = {}
        for f in schema:
            try:
                self.env[f.name] = col(f.name, numpy_dtype(f.type))
            except NotCompilable:
                continue
        self.types: dict[str, pa.DataType] = {f.name: f.type for f in schema}

    def _empty_batch(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_pydict({n: pa.array([], t) for n, t in self.types.items()})

    def arrow_type(self, node: Node) -> pa.DataType:
        """The Arrow type the interpreter would give ``node`` (derived columns included)."""
        try:
            out = evaluate(node, self._empty_batch())
        except (pa.ArrowException, DataError, KeyError, TypeError) as e:
            raise NotCompilable(f"the interpreter rejects it on this schema ({e})") from None
        return out.type

    def define(self, name: str, node: Node) -> Expr:
        """Translate ``node`` and make it visible to later expressions as column ``name``."""
        e = self.translate(node)
        self.env[name] = e
        self.types[name] = self.arrow_type(node)
        return e

    def translate(self, node: Node) -> Expr:
        """IR for ``node`` (cast to the Arrow result type).

        Raises:
            NotCompilable: unsupported type, function, or literal."""
        t = numpy_dtype(self.arrow_type(node))
        return cast(self._tr(node, t), t)

    def _sub(self, node: Node) -> Expr:
        return self.translate(node)

    def _tr(self, node: Node, t: str) -> Expr:
        op, args = node.op, node.args
        if op == "col":
            name = args[0]
            if name not in self.env:
                raise NotCompilable(f"column {name!r} is not numeric")
            return self.env[name]
        if op == "lit":
            v = args[0]
            if v is None or isinstance(v, str):
                raise NotCompilable("null and string literals are not compiled")
            return const(v, t)
        if op in ("==", "!=", "<", "<=", ">", ">="):
            name = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}[op]
            return binary(name, self._sub(args[0]), self._sub(args[1]))
        if op in ("+", "-", "*", "/"):
            name = {"+": "add", "-": "sub", "*": "mul", "/": "div"}[op]
            return binary(name, cast(self._sub(args[0]), t), cast(self._sub(args[1]), t))
        if op == "neg":
            return unary("neg", cast(self._sub(args[0]), t))
        if op in ("and", "or"):
            return binary(op, self._sub(args[0]), self._sub(args[1]))
        if op == "not":
            return unary("not", self._sub(args[0]))
        if op in ("isnull", "notnull"):
            self._sub(args[0])  # must compile; batches with nulls never reach the kernel
            return const(op == "notnull")
        if op == "in":
            value = self._sub(args[0])
            values = args[1]
            if any(v is None or isinstance(v, str) for v in values):
                raise NotCompilable("'in' with strings or nulls is not compiled")
            out: Expr | None = None
            for v in values:
                term = binary("eq", value, const(v))
                out = term if out is None else binary("or", out, term)
            assert out is not None
            return out
        if op == "call":
            return self._call(args[0], list(args[1:]), t)
        raise NotCompilable(f"operator {op!r} is not compiled")

    def _call(self, fname: str, args: list[Any], t: str) -> Expr:
        if fname in ("abs", "sqrt", "exp", "log", "log10", "floor", "ceil", "round"):
            return unary(fname, cast(self._sub(args[0]), t))
        if fname == "coalesce":
            return cast(self._sub(args[0]), t)  # no nulls on this path: the first argument
        if fname in ("least", "greatest"):
            out = cast(self._sub(args[0]), t)
            for a in args[1:]:
                out = binary("fmin" if fname == "least" else "fmax", out, cast(self._sub(a), t))
            return out
        if fname == "if":
            return where(self._sub(args[0]), cast(self._sub(args[1]), t), cast(self._sub(args[2]), t))
        raise NotCompilable(f"function {fname}() is not compiled")


def compile_expr(node: Node, schema: pa.Schema) -> Expr:
    """IR of one expression over ``schema``.

    Raises:
        NotCompilable: see :class:`Bridge`."""
    return Bridge(schema).translate(node)
