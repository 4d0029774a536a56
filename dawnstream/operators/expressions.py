"""Column expressions for ``filter`` and ``derive``: a restricted grammar, never ``eval``.

Grammar (precedence low to high)::

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | cmp
    cmp     := sum (("=="|"="|"!="|"<>"|"<"|"<="|">"|">=") sum)?
             | sum "is" ["not"] "null"
             | sum ["not"] "in" "(" literal ("," literal)* ")"
    sum     := product (("+"|"-") product)*
    product := unary (("*"|"/") unary)*
    unary   := "-" unary | atom
    atom    := NUMBER | STRING | "true" | "false" | "null" | NAME | `quoted name`
             | FUNC "(" expr ("," expr)* ")" | "(" expr ")"

Functions: abs, sqrt, exp, log (natural), log10, floor, ceil, round, lower, upper, length,
coalesce(a, b, ...), least(a, b), greatest(a, b), if(cond, a, b).

Evaluation maps each node to a ``pyarrow.compute`` kernel over the batch's columns (Arrow C++),
with SQL three-valued logic for and/or/not (Kleene) and ``/`` always true division (float64);
exp/log/log10 are the accel IR's (:mod:`dawnstream.accel.fmath`), so compiled and interpreted
stages agree bit for bit.

>>> import pyarrow as pa
>>> e = parse("dep_delay > 15 and origin in ('JFK', 'LGA')")
>>> sorted(e.columns())
['dep_delay', 'origin']
>>> b = pa.record_batch({"dep_delay": [3, 20, 40], "origin": ["JFK", "JFK", "EWR"]})
>>> evaluate(e, b).to_pylist()
[False, True, False]
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dawnstream.errors import ConfigError, DataError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
      | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<qname>`[^`]+`)
      | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<op>==|!=|<>|<=|>=|[-+*/(),<>=])
    )""",
    re.VERBOSE,
)
KEYWORDS = {"and", "or", "not", "is", "null", "true", "false", "in"}
MAX_LENGTH = 4000
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Node:
    """AST node: ``op`` is ``col``, ``lit``, a binary/unary operator, ``in``, ``isnull`` or ``call``."""

    op: str
    args: tuple[Any, ...] = ()

    def columns(self) -> set[str]:
        """Column names the expression reads."""
        if self.op == "col":
            return {self.args[0]}
        out: set[str] = set()
        for a in self.args:
            if isinstance(a, Node):
                out |= a.columns()
        return out

    def numeric_columns(self) -> set[str]:
        """Columns used in arithmetic or compared with a number: they must hold numbers."""
        out: set[str] = set()
        if self.op in {"+", "-", "*", "/", "neg"} or (
            self.op == "call" and self.args[0] in _NUMERIC_FUNCS
        ):
            for a in self.args:
                if isinstance(a, Node) and a.op == "col":
                    out.add(a.args[0])
        if self.op in _COMPARE and any(
            isinstance(a, Node) and a.op == "lit" and isinstance(a.args[0], (int, float))
            and not isinstance(a.args[0], bool)
            for a in self.args
        ):
            out |= {a.args[0] for a in self.args if isinstance(a, Node) and a.op == "col"}
        for a in self.args:
            if isinstance(a, Node):
                out |= a.numeric_columns()
        return out


    def kind(self) -> str:
        """Static result kind: ``bool``, ``number``, ``string``, ``null`` or ``any`` (depends on a
        column's type, known only from data). Lets a config be rejected at load, not per row."""
        op, args = self.op, self.args
        if op == "lit":
            v = args[0]
            return ("null" if v is None else "bool" if isinstance(v, bool)
                    else "string" if isinstance(v, str) else "number")
        if op == "col":
            return "any"
        if op in _COMPARE or op in {"and", "or", "not", "isnull", "notnull", "in"}:
            return "bool"
        if op in _ARITH or op in {"/", "neg"}:
            return "number"
        fname = args[0]
        if fname in _NUMERIC_FUNCS or fname == "length":
            return "number"
        if fname in {"lower", "upper"}:
            return "string"
        branches = args[2:] if fname == "if" else args[1:]
        kinds = {a.kind() for a in branches} - {"null"}
        return kinds.pop() if len(kinds) == 1 else "any"


_COMPARE = {"==": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal", ">": "greater", ">=": "greater_equal"}
_ARITH = {"+": "add", "-": "subtract", "*": "multiply"}
_NUMERIC_FUNCS = {"abs", "sqrt", "exp", "log", "log10", "floor", "ceil", "round"}


def _as_float(x: Any) -> Any:
    t = x.type
    return x if pa.types.is_floating(t) else pc.cast(x, pa.float64())


def _ir_math(fn: str, x: Any) -> Any:
    """exp/log/log10 as the accel IR defines them (:mod:`dawnstream.accel.fmath`, not the platform's
    libm), so a stage gives the same bits interpreted or compiled. Nulls stay null."""
    from dawnstream.accel import fmath

    x = _as_float(x)
    if isinstance(x, pa.Scalar):
        if not x.is_valid:
            return x
        v = np.array([x.as_py()], dtype=x.type.to_pandas_dtype())
        return pa.scalar(fmath.math_array(fn, v, v.dtype.name)[0], type=x.type)
    if isinstance(x, pa.ChunkedArray):
        x = x.combine_chunks()
    v = x.to_numpy(zero_copy_only=False)
    out = fmath.math_array(fn, v, v.dtype.name)
    return pa.array(out, type=x.type, mask=x.is_null().to_numpy(zero_copy_only=False) if x.null_count else None)


_FUNCS: dict[str, tuple[int, int, Callable[..., Any]]] = {
    "abs": (1, 1, pc.abs),
    "sqrt": (1, 1, lambda x: pc.sqrt(_as_float(x))),
    "exp": (1, 1, lambda x: _ir_math("exp", x)),
    "log": (1, 1, lambda x: _ir_math("log", x)),
    "log10": (1, 1, lambda x: _ir_math("log10", x)),
    "floor": (1, 1, pc.floor),
    "ceil": (1, 1, pc.ceil),
    "round": (1, 1, pc.round),
    "lower": (1, 1, pc.utf8_lower),
    "upper": (1, 1, pc.utf8_upper),
    "length": (1, 1, pc.utf8_length),
    "coalesce": (1, 64, pc.coalesce),
    "least": (2, 64, pc.min_element_wise),
    "greatest": (2, 64, pc.max_element_wise),
    "if": (3, 3, pc.if_else),
}


class _Parser:
    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.tokens = self._tokenize(text)
        self.i = 0
        self.depth = 0

    def _error(self, msg: str) -> ConfigError:
        return ConfigError(self.path, f"{msg} in expression {self.text!r}")

    def _tokenize(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise self._error(f"unexpected character {text[pos:].lstrip()[:1]!r} at position {pos}")
            kind = m.lastgroup or ""
            val = m.group(kind)
            if kind == "name" and val.lower() in KEYWORDS:
                kind, val = "kw", val.lower()
            out.append((kind, val))
            pos = m.end()
        return out

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def accept(self, kind: str, val: str | None = None) -> str | None:
        t = self.peek()
        if t and t[0] == kind and (val is None or t[1] == val):
            self.i += 1
            return t[1]
        return None

    def expect(self, kind: str, val: str) -> None:
        if self.accept(kind, val) is None:
            got = self.peek()
            raise self._error(f"expected {val!r} but found {got[1] if got else 'the end'!r}")

    def parse(self) -> Node:
        if not self.tokens:
            raise self._error("empty expression")
        node = self.or_()
        if self.peek() is not None:
            raise self._error(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return node

    def _nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self._error(f"nesting deeper than {MAX_DEPTH}")

    def or_(self) -> Node:
        node = self.and_()
        while self.accept("kw", "or"):
            node = Node("or", (node, self.and_()))
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.accept("kw", "and"):
            node = Node("and", (node, self.not_()))
        return node

    def not_(self) -> Node:
        if self.accept("kw", "not"):
            self._nest()
            return Node("not", (self.not_(),))
        return self.cmp()

    def cmp(self) -> Node:
        left = self.sum()
        for sym in ("==", "=", "!=", "<>", "<=", ">=", "<", ">"):
            if self.accept("op", sym):
                op = {"=": "==", "<>": "!="}.get(sym, sym)
                return Node(op, (left, self.sum()))
        if self.accept("kw", "is"):
            negate = self.accept("kw", "not") is not None
            self.expect("kw", "null")
            return Node("notnull" if negate else "isnull", (left,))
        negate = False
        if self.peek() == ("kw", "not") and self.i + 1 < len(self.tokens) and self.tokens[self.i + 1] == ("kw", "in"):
            self.i += 1
            negate = True
        if self.accept("kw", "in"):
            self.expect("op", "(")
            values = [self.literal()]
            while self.accept("op", ","):
                values.append(self.literal())
            self.expect("op", ")")
            node = Node("in", (left, tuple(values)))
            return Node("not", (node,)) if negate else node
        return left

    def literal(self) -> Any:
        node = self.unary()
        if node.op != "lit":
            raise self._error("'in (...)' takes literal values only")
        return node.args[0]

    def sum(self) -> Node:
        node = self.product()
        while True:
            op = self.accept("op", "+") or self.accept("op", "-")
            if not op:
                return node
            node = Node(op, (node, self.product()))

    def product(self) -> Node:
        node = self.unary()
        while True:
            op = self.accept("op", "*") or self.accept("op", "/")
            if not op:
                return node
            node = Node(op, (node, self.unary()))

    def unary(self) -> Node:
        if self.accept("op", "-"):
            self._nest()
            inner = self.unary()
            if inner.op == "lit" and isinstance(inner.args[0], (int, float)) and not isinstance(inner.args[0], bool):
                return Node("lit", (-inner.args[0],))
            return Node("neg", (inner,))
        return self.atom()

    def atom(self) -> Node:
        t = self.peek()
        if t is None:
            raise self._error("expression ends too early")
        kind, val = t
        self.i += 1
        if kind == "num":
            if any(c in val for c in ".eE"):
                number: float | int = float(val)
                if number in (float("inf"), float("-inf")):
                    raise self._error(f"number {val} is beyond the float64 range")
            else:
                number = int(val)
                if number >= 1 << 63:  # (so -2**63 itself must be written as a float too)
                    raise self._error(f"integer {val} does not fit int64 (write it as {val}.0 for a float)")
            return Node("lit", (number,))
        if kind == "str":
            body = val[1:-1]
            return Node("lit", (re.sub(r"\\(.)", r"\1", body),))
        if kind == "kw" and val in ("true", "false"):
            return Node("lit", (val == "true",))
        if kind == "kw" and val == "null":
            return Node("lit", (None,))
        if kind == "qname":
            return Node("col", (val[1:-1],))
        if kind == "name":
            if self.accept("op", "("):
                fname = val.lower()
                if fname not in _FUNCS:
                    raise self._error(f"unknown function {val!r}; known: {sorted(_FUNCS)}")
                self._nest()
                args = [self.or_()]
                while self.accept("op", ","):
                    args.append(self.or_())
                self.expect("op", ")")
                lo, hi, _ = _FUNCS[fname]
                if not lo <= len(args) <= hi:
                    raise self._error(f"{fname}() takes {lo}..{hi} arguments, got {len(args)}")
                return Node("call", (fname, *args))
            return Node("col", (val,))
        if kind == "op" and val == "(":
            self._nest()
            node = self.or_()
            self.expect("op", ")")
            return node
        raise self._error(f"unexpected {val!r}")


def parse(text: str, path: str = "expr") -> Node:
    """Parse ``text`` into an AST.

    Raises:
        ConfigError: syntax error, unknown function, too long (> 4000 chars) or too deep (> 64),
            with ``path`` and the offending token.
    """
    if not isinstance(text, str):
        raise ConfigError(path, f"expected an expression string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ConfigError(path, f"expression longer than {MAX_LENGTH} characters")
    return _Parser(text, path).parse()


def evaluate(node: Node, batch: pa.RecordBatch) -> Any:
    """Evaluate ``node`` over ``batch``; returns a ``pyarrow.Array`` of ``batch.num_rows`` values
    (or a ``pyarrow.Scalar`` for constant expressions).

    Raises:
        DataError: a column is missing. pyarrow.ArrowNotImplementedError/ArrowInvalid: type mismatch.
    """
    op, args = node.op, node.args
    if op == "col":
        name = args[0]
        idx = batch.schema.get_field_index(name)
        if idx < 0:
            raise DataError(f"column {name!r} not in batch (has {batch.schema.names})")
        return batch.column(idx)
    if op == "lit":
        return pa.scalar(args[0])
    if op in _COMPARE:
        return getattr(pc, _COMPARE[op])(evaluate(args[0], batch), evaluate(args[1], batch))
    if op in _ARITH:
        return getattr(pc, _ARITH[op])(evaluate(args[0], batch), evaluate(args[1], batch))
    if op == "/":
        return pc.divide(_as_float(evaluate(args[0], batch)), _as_float(evaluate(args[1], batch)))
    if op == "neg":
        return pc.negate(evaluate(args[0], batch))
    if op == "and":
        return pc.and_kleene(evaluate(args[0], batch), evaluate(args[1], batch))
    if op == "or":
        return pc.or_kleene(evaluate(args[0], batch), evaluate(args[1], batch))
    if op == "not":
        return pc.invert(evaluate(args[0], batch))
    if op == "isnull":
        return pc.is_null(evaluate(args[0], batch), nan_is_null=False)
    if op == "notnull":
        return pc.is_valid(evaluate(args[0], batch))
    if op == "in":
        value = evaluate(args[0], batch)
        values = pa.array(list(args[1]))
        if values.type != value.type:
            values = values.cast(value.type)
        found = pc.is_in(value, value_set=values)
        # SQL: NULL IN (...) is NULL, so that NOT IN stays consistent.
        return pc.if_else(pc.is_valid(value), found, pa.scalar(None, pa.bool_()))
    if op == "call":
        fn = _FUNCS[args[0]][2]
        return fn(*(evaluate(a, batch) for a in args[1:]))
    raise AssertionError(f"unknown node {op}")


def as_array(value: Any, length: int) -> pa.Array:
    """Broadcast a scalar result to ``length`` rows; arrays pass through (chunked arrays combined)."""
    if isinstance(value, pa.Scalar):
        return pa.repeat(value, length) if value.is_valid else pa.nulls(length, value.type)
    if isinstance(value, pa.ChunkedArray):
        return value.combine_chunks()
    return value
