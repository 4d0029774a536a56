"""The expression grammar against a plain-Python reference evaluator (hypothesis)."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.errors import ConfigError
from dawnstream.operators.expressions import as_array, evaluate, parse

COLS = ["a", "b"]


def ref_eval(node: object, row: dict) -> object:
    """SQL-ish reference semantics on one row (None = null)."""
    from dawnstream.operators.expressions import Node

    assert isinstance(node, Node)
    op, args = node.op, node.args
    if op == "col":
        return row[args[0]]
    if op == "lit":
        return args[0]
    if op in ("and", "or"):
        x, y = ref_eval(args[0], row), ref_eval(args[1], row)
        if op == "and":
            if x is False or y is False:
                return False
            return None if x is None or y is None else True
        if x is True or y is True:
            return True
        return None if x is None or y is None else False
    if op == "not":
        x = ref_eval(args[0], row)
        return None if x is None else not x
    if op == "isnull":
        return ref_eval(args[0], row) is None
    if op == "notnull":
        return ref_eval(args[0], row) is not None
    x, y = ref_eval(args[0], row), ref_eval(args[1], row) if len(args) > 1 else None
    if op == "neg":
        return None if x is None else -x
    if x is None or y is None:
        return None
    return {
        "+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y,
        "/": lambda: (x / y) if y != 0 else (math.copysign(math.inf, x) * math.copysign(1, y) if x != 0 else math.nan),
        "==": lambda: x == y, "!=": lambda: x != y, "<": lambda: x < y, "<=": lambda: x <= y,
        ">": lambda: x > y, ">=": lambda: x >= y,
    }[op]()


def exprs() -> st.SearchStrategy[str]:
    leaf = st.one_of(st.sampled_from(COLS), st.integers(-5, 5).map(str))
    arith = st.recursive(
        leaf,
        lambda inner: st.tuples(inner, st.sampled_from(["+", "-", "*"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        max_leaves=4,
    )
    cmp = st.tuples(arith, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), arith).map(lambda t: " ".join(t))
    null = st.sampled_from(COLS).map(lambda c: f"{c} is null")
    atom = st.one_of(cmp, null)
    return st.recursive(
        atom,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda e: f"not ({e})"),
        ),
        max_leaves=4,
    )


rows = st.lists(
    st.fixed_dictionaries({c: st.one_of(st.none(), st.integers(-20, 20)) for c in COLS}), min_size=0, max_size=30
)


@settings(max_examples=examples(300), deadline=None)
@given(exprs(), rows)
def test_boolean_expressions_match_reference(text: str, data: list[dict]) -> None:
    node = parse(text)
    batch = pa.RecordBatch.from_pylist(data, schema=pa.schema([(c, pa.int64()) for c in COLS]))
    got = as_array(evaluate(node, batch), batch.num_rows).to_pylist()
    assert got == [ref_eval(node, r) for r in data]


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), max_size=30),
       st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), max_size=30))
def test_true_division_and_arithmetic(xs: list, ys: list) -> None:
    n = min(len(xs), len(ys))
    batch = pa.record_batch({"a": pa.array(xs[:n], pa.float64()), "b": pa.array(ys[:n], pa.float64())})
    got = as_array(evaluate(parse("(a + b) * 2 - a / 4"), batch), n).to_pylist()
    for g, x, y in zip(got, xs[:n], ys[:n], strict=True):
        if x is None or y is None:
            assert g is None
        else:
            assert g == pytest.approx((x + y) * 2 - x / 4, rel=1e-12, abs=1e-9)


def test_integer_division_is_true_division() -> None:
    b = pa.record_batch({"a": [7, 1], "b": [2, 4]})
    assert evaluate(parse("a / b"), b).to_pylist() == [3.5, 0.25]


def test_strings_in_functions_and_columns() -> None:
    b = pa.record_batch({"origin": ["JFK", "EWR", None], "d": [1.0, -4.0, None]})
    assert evaluate(parse("origin in ('JFK', 'LGA')"), b).to_pylist() == [True, False, None]
    assert evaluate(parse("origin not in ('JFK')"), b).to_pylist() == [False, True, None]
    assert evaluate(parse("lower(origin) == 'ewr'"), b).to_pylist() == [False, True, None]
    assert evaluate(parse("abs(d) > 2"), b).to_pylist() == [False, True, None]
    assert evaluate(parse("coalesce(d, 0) + 1"), b).to_pylist() == [2.0, -3.0, 1.0]
    assert evaluate(parse("if(d > 0, 'up', 'down')"), b).to_pylist() == ["up", "down", None]
    assert evaluate(parse("`origin` is not null"), b).to_pylist() == [True, True, False]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty expression"),
        ("a >", "ends too early"),
        ("a > 1 )", "unexpected ')'"),
        ("__import__('os')", "unknown function"),
        ("__import__('os').system('x')", "unexpected character '.'"),
        ("a ; b", "unexpected character ';'"),
        ("a in (b)", "literal values only"),
        ("not " * 100 + "a", "nesting deeper"),
        ("x" * 5000, "longer than"),
    ],
)
def test_bad_expressions_fail_with_a_clear_message(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(text, "stages.0.expr")
    assert fragment in str(e.value)
    assert str(e.value).startswith("stages.0.expr")


def test_columns_and_numeric_columns() -> None:
    n = parse("dep_delay / 60 > 1 and carrier == 'UA' and x is null")
    assert n.columns() == {"dep_delay", "carrier", "x"}
    assert n.numeric_columns() == {"dep_delay"}
