"""Trigger conditions: a table of texts and results, errors with columns, hostile input, and a
property check against Python's own arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.policy.expr import MAX_DEPTH, MAX_LENGTH, ExprError, parse

VALUES = {"Speed": 120.0, "Brake.Pressure": 30, "can1/ESP.Yaw": -4.5, "Zero": 0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Speed > 100", True),
        ("Speed >= 120 and Speed <= 120", True),
        ("Speed == 120 and not Brake.Pressure != 30", True),
        ("Speed < 100 or Brake.Pressure > 20", True),
        ("abs(`can1/ESP.Yaw`) > 4", True),
        ("min(Speed, Brake.Pressure, 50) == 30", True),
        ("max(Speed, 200) - 80 == 120", True),
        ("-Speed + 2 * 60 == 0", True),
        ("Speed / 4 == 30", True),
        ("(Speed - 20) * 2 == 200", True),
        ("1.5e2 > Speed", True),
        ("not (Speed > 100)", False),
        # Unknown: an unseen signal, a division by zero; False wins over unknown in 'and'.
        ("Missing > 1", None),
        ("Speed / Zero > 1", None),
        ("Missing > 1 and Speed < 0", False),
        ("Missing > 1 or Speed > 0", True),
        ("not Missing > 1", None),
        ("abs(Missing) > 1", None),
        ("max(Missing, 1) > 0", None),
    ],
)
def test_evaluates(text: str, expected: bool | None) -> None:
    assert parse(text).evaluate(VALUES) is expected


def test_names_are_listed_once_in_order() -> None:
    assert parse("b > 1 and a < b or `x/y` == a").names == ("b", "a", "x/y")


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ("Speed >", 8, "found the end"),
        ("Speed > 1 < 2", 11, "do not chain"),
        ("Speed + 1", 7, "must be a condition"),
        ("Speed and Speed > 1", 1, "'and' needs a condition"),
        ("Speed > 1 or 2", 14, "'or' needs a condition"),
        ("not Speed", 5, "'not' needs a condition"),
        ("(Speed > 1) + 1 > 0", 8, "'+' needs a number"),
        ("(Speed > 1", 11, "expected ')'"),
        ("abs(Speed, 1) > 0", 1, "abs() takes 1 argument"),
        ("min(Speed) > 0", 1, "min() takes 2 to 16 arguments"),
        ("Speed ** 2 > 0", 8, "expected a number"),
        ("Speed ^ 2 > 0", 7, "unexpected character"),
        ("max > 1", 1, "is a function"),
        ("Speed > 1 Speed", 11, "expected an operator or the end"),
        ("`` > 1", 1, "empty name"),
        ("", 1, "empty condition"),
        ("__import__('os') > 0", 12, "unexpected character"),
    ],
)
def test_errors_name_the_column(text: str, column: int, words: str) -> None:
    with pytest.raises(ExprError) as info:
        parse(text)
    assert info.value.column == column
    assert words in str(info.value)
    assert str(info.value).startswith(f"column {column}: ")


@pytest.mark.parametrize(
    "text",
    [
        "(" * 2000 + "a > 1" + ")" * 2000,
        "-" * 900 + "1 > 0",
        "not " * 240 + "a > 1",
        "+1" * 400 + " > 0",
        "a" + " + a" * 300 + " > 0",
        "x" * (MAX_LENGTH + 1),
    ],
)
def test_hostile_text_is_refused_with_a_column_not_a_crash(text: str) -> None:
    with pytest.raises(ExprError) as info:
        parse(text)
    assert "nested too deeply" in str(info.value) or "longer than" in str(info.value)


def test_the_deepest_allowed_nesting_still_parses() -> None:
    depth = MAX_DEPTH - 2
    assert parse("(" * depth + "a > 1" + ")" * depth).evaluate({"a": 2}) is True


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_parses_or_raises_expr_error(text: str) -> None:
    try:
        cond = parse(text)
    except ExprError as err:
        assert 1 <= err.column <= len(text) + 1
        return
    assert cond.evaluate({}) in (True, False, None)


_num = st.integers(min_value=-50, max_value=50)


@st.composite
def _arith(draw: st.DrawFn, depth: int = 0) -> tuple[str, int]:
    """An integer-valued expression (no division: exact integers compare exactly) and its
    value as Python computes it."""
    if depth > 3 or draw(st.booleans()):
        n = draw(_num)
        if draw(st.booleans()):
            return "a", 7
        return (f"({n})" if n < 0 else str(n)), n
    op = draw(st.sampled_from(["+", "-", "*", "abs", "min", "max", "neg"]))
    left, lv = draw(_arith(depth + 1))
    if op == "abs":
        return f"abs({left})", abs(lv)
    if op == "neg":
        return f"-({left})", -lv
    right, rv = draw(_arith(depth + 1))
    if op in ("min", "max"):
        return f"{op}({left}, {right})", (min if op == "min" else max)(lv, rv)
    value = {"+": lv + rv, "-": lv - rv, "*": lv * rv}[op]
    return f"({left} {op} {right})", value


@settings(max_examples=300, deadline=None)
@given(_arith(), _arith(), st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))
def test_comparisons_agree_with_python(
    left: tuple[str, int], right: tuple[str, int], op: str
) -> None:
    (lt, lv), (rt, rv) = left, right
    expected = {
        "<": lv < rv,
        "<=": lv <= rv,
        ">": lv > rv,
        ">=": lv >= rv,
        "==": lv == rv,
        "!=": lv != rv,
    }[op]
    assert parse(f"{lt} {op} {rt}").evaluate({"a": 7}) is expected
