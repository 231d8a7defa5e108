"""Trigger conditions: a small expression language, parsed by hand into closures (never eval).

Grammar (lowest precedence first)::

    cond  := and ("or" and)*
    and   := not ("and" not)*
    not   := "not" not | cmp
    cmp   := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?     comparisons do not chain
    sum   := prod (("+" | "-") prod)*
    prod  := unary (("*" | "/") unary)*
    unary := ("-" | "+") unary | atom
    atom  := number | name | `any name` | ("abs" | "min" | "max") "(" sum ("," sum)* ")"
             | "(" cond ")"

Names are signal wire names (``Message.Signal``); a name that is not a plain identifier (a
bus prefix with ``/``, a reserved word) is written in backquotes. Values are physical values.
Types are checked when parsing: ``and``/``or``/``not`` take conditions, arithmetic and
comparisons take numbers, and the whole must be a condition. Evaluation is three-valued: a
signal not seen yet is unknown, as is a division by zero, and unknown propagates (``False and
unknown`` is False), so a condition fires only when it is known to be true.

Hostile text cannot hurt: the length is bounded before anything is read, nesting is bounded
while parsing (so recursion stays shallow), there is no power operator, and every error names
its column. This module reads no signals and knows no clock (agent.policy.trigger does).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

MAX_LENGTH = 1000
# Depth of the expression tree (nesting and chains of operators): keeps parsing, compiling and
# evaluating far from Python's recursion limit.
MAX_DEPTH = 64

Value = float | int | bool | None
Slots = Sequence[float | int | None]
Compiled = Callable[[Slots], Value]

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<quoted>`[^`\n]*`)
  | (?P<op><=|>=|==|!=|[-+*/<>(),])
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not"}
_FUNCS = {"abs": (1, 1), "min": (2, 16), "max": (2, 16)}
_FUNC_IMPL: dict[str, Callable[..., float]] = {"abs": abs, "min": min, "max": max}
_CMP: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


class ExprError(ValueError):
    """A condition that cannot be parsed; ``column`` is 1-based."""

    def __init__(self, pos: int, message: str) -> None:
        self.column = pos + 1
        super().__init__(f"column {pos + 1}: {message}")


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # num, name, op, end
    text: str
    pos: int


@dataclass(frozen=True, slots=True)
class _Node:
    op: str  # num, var, neg, + - * /, comparison, and, or, not, call
    pos: int
    boolean: bool
    depth: int
    args: tuple[_Node, ...] = ()
    value: float = 0.0
    name: str = ""


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ExprError(pos, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind == "quoted":
            name = m.group()[1:-1].strip()
            if not name:
                raise ExprError(pos, "empty name in backquotes")
            out.append(_Tok("name", name, pos))
        elif kind == "name" and m.group() in _KEYWORDS:
            out.append(_Tok("op", m.group(), pos))
        elif kind != "ws":
            out.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


def _describe(tok: _Tok) -> str:
    return "the end" if tok.kind == "end" else repr(tok.text)


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        # Open parentheses, 'not's and signs being parsed: each costs several Python frames
        # without deepening the tree, so they are bounded on their own.
        self.nesting = 0

    def enter(self, tok: _Tok) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise ExprError(tok.pos, f"expression nested too deeply (more than {MAX_DEPTH} levels)")

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def node(self, op: str, pos: int, boolean: bool, *args: _Node, **kw: object) -> _Node:
        depth = 1 + max((a.depth for a in args), default=0)
        if depth > MAX_DEPTH:
            raise ExprError(pos, f"expression nested too deeply (more than {MAX_DEPTH} levels)")
        return _Node(op, pos, boolean, depth, args, **kw)  # type: ignore[arg-type]

    def need(self, node: _Node, boolean: bool, what: str) -> _Node:
        if node.boolean != boolean:
            kind = "a condition (a comparison)" if boolean else "a number"
            found = "a condition" if node.boolean else "a number"
            raise ExprError(node.pos, f"{what} needs {kind} here, found {found}")
        return node

    def parse(self) -> _Node:
        node = self.cond()
        if self.tok.kind != "end":
            raise ExprError(
                self.tok.pos, f"expected an operator or the end, found {_describe(self.tok)}"
            )
        return node

    def cond(self) -> _Node:
        left = self.and_()
        while self.tok.text == "or" and self.tok.kind == "op":
            pos = self.take().pos
            left = self.node(
                "or", pos, True, self.need(left, True, "'or'"), self.need(self.and_(), True, "'or'")
            )
        return left

    def and_(self) -> _Node:
        left = self.not_()
        while self.tok.text == "and" and self.tok.kind == "op":
            pos = self.take().pos
            left = self.node(
                "and",
                pos,
                True,
                self.need(left, True, "'and'"),
                self.need(self.not_(), True, "'and'"),
            )
        return left

    def not_(self) -> _Node:
        if self.tok.text == "not" and self.tok.kind == "op":
            tok = self.take()
            self.enter(tok)
            operand = self.need(self.not_(), True, "'not'")
            self.nesting -= 1
            return self.node("not", tok.pos, True, operand)
        return self.cmp()

    def cmp(self) -> _Node:
        left = self.sum()
        if self.tok.kind == "op" and self.tok.text in _CMP:
            tok = self.take()
            right = self.sum()
            what = f"{tok.text!r}"
            left = self.node(
                tok.text, tok.pos, True, self.need(left, False, what), self.need(right, False, what)
            )
            if self.tok.kind == "op" and self.tok.text in _CMP:
                raise ExprError(self.tok.pos, "comparisons do not chain: write 'a < b and b < c'")
        return left

    def sum(self) -> _Node:
        return self.arithmetic("+-", self.prod)

    def prod(self) -> _Node:
        return self.arithmetic("*/", self.unary)

    def arithmetic(self, ops: str, operand: Callable[[], _Node]) -> _Node:
        """Left-associative ``operand (op operand)*`` for one precedence level of ``ops``."""
        left = operand()
        while self.tok.kind == "op" and self.tok.text in ops:
            tok = self.take()
            what = f"{tok.text!r}"
            left = self.node(
                tok.text,
                tok.pos,
                False,
                self.need(left, False, what),
                self.need(operand(), False, what),
            )
        return left

    def unary(self) -> _Node:
        if self.tok.kind == "op" and self.tok.text in "+-":
            tok = self.take()
            self.enter(tok)
            operand = self.need(self.unary(), False, f"{tok.text!r}")
            self.nesting -= 1
            return operand if tok.text == "+" else self.node("neg", tok.pos, False, operand)
        return self.atom()

    def atom(self) -> _Node:
        tok = self.take()
        if tok.kind == "num":
            try:
                value = float(tok.text)
            except (ValueError, OverflowError):
                raise ExprError(tok.pos, f"not a number: {tok.text!r}") from None
            return self.node("num", tok.pos, False, value=value)
        if tok.kind == "name" and tok.text in _FUNCS and self.tok.text == "(":
            return self.call(tok)
        if tok.kind == "name":
            if tok.text in _FUNCS:
                raise ExprError(tok.pos, f"{tok.text} is a function: write {tok.text}(...)")
            return self.node("var", tok.pos, False, name=tok.text)
        if tok.text == "(":
            self.enter(tok)
            inner = self.cond()
            self.nesting -= 1
            if self.tok.text != ")":
                raise ExprError(self.tok.pos, f"expected ')', found {_describe(self.tok)}")
            self.take()
            return inner
        raise ExprError(tok.pos, f"expected a number, a signal name or '(', found {_describe(tok)}")

    def call(self, fn: _Tok) -> _Node:
        self.take()  # (
        args = [self.need(self.sum(), False, f"{fn.text}()")]
        while self.tok.text == ",":
            self.take()
            args.append(self.need(self.sum(), False, f"{fn.text}()"))
        if self.tok.text != ")":
            raise ExprError(self.tok.pos, f"expected ',' or ')', found {_describe(self.tok)}")
        self.take()
        low, high = _FUNCS[fn.text]
        if not low <= len(args) <= high:
            want = "1 argument" if high == 1 else f"{low} to {high} arguments"
            raise ExprError(fn.pos, f"{fn.text}() takes {want}, got {len(args)}")
        return self.node("call", fn.pos, False, *args, name=fn.text)


def _compile(node: _Node, slots: Mapping[str, int]) -> Compiled:
    op, args = node.op, node.args
    if op == "num":
        value = node.value
        return lambda v: value
    if op == "var":
        return operator.itemgetter(slots[node.name])  # type: ignore[return-value]
    fs = [_compile(a, slots) for a in args]
    if op == "neg":
        (f,) = fs

        def neg(v: Slots) -> Value:
            x = f(v)
            return None if x is None else -x

        return neg
    if op == "not":
        (f,) = fs

        def not_(v: Slots) -> Value:
            x = f(v)
            return None if x is None else not x

        return not_
    if op == "and":
        fa, fb = fs

        def and_(v: Slots) -> Value:
            x = fa(v)
            if x is False:
                return False
            y = fb(v)
            if y is False:
                return False
            return None if x is None or y is None else True

        return and_
    if op == "or":
        fa, fb = fs

        def or_(v: Slots) -> Value:
            x = fa(v)
            if x is True:
                return True
            y = fb(v)
            if y is True:
                return True
            return None if x is None or y is None else False

        return or_
    if op == "call":
        fn: Callable[..., float] = _FUNC_IMPL[node.name]
        if len(fs) == 1:
            (f,) = fs

            def call1(v: Slots) -> Value:
                x = f(v)
                return None if x is None else fn(x)

            return call1

        def call(v: Slots) -> Value:
            xs = [f(v) for f in fs]
            return None if None in xs else fn(xs)

        return call
    fa, fb = fs
    if op == "/":

        def div(v: Slots) -> Value:
            x, y = fa(v), fb(v)
            if x is None or not y:  # y is None or 0: unknown rather than an error
                return None
            return x / y

        return div
    binary = _CMP.get(op) or {"+": operator.add, "-": operator.sub, "*": operator.mul}[op]

    def bin_(v: Slots) -> Value:
        x = fa(v)
        if x is None:
            return None
        y = fb(v)
        return None if y is None else binary(x, y)

    return bin_


def _names(node: _Node, out: dict[str, None]) -> None:
    if node.op == "var":
        out[node.name] = None
    for a in node.args:
        _names(a, out)


@dataclass(frozen=True)
class Condition:
    """A parsed condition: the signal names it reads, and a compiler to a fast closure."""

    text: str
    names: tuple[str, ...]
    _root: _Node

    def compile(self, slots: Mapping[str, int]) -> Callable[[Slots], bool | None]:
        """A function of the slot values (``slots`` maps each name to its index) that returns
        True, False or None (unknown)."""
        return _compile(self._root, slots)  # type: ignore[return-value]

    def evaluate(self, values: Mapping[str, float | int | None]) -> bool | None:
        """Convenience for tests and one-off checks: evaluate against a name -> value map."""
        slots = {n: i for i, n in enumerate(self.names)}
        return self.compile(slots)([values.get(n) for n in self.names])


def parse(text: str) -> Condition:
    """Parse a condition; raise ExprError naming the column of the first problem."""
    if not isinstance(text, str):
        raise ExprError(0, "a condition is text")
    if len(text) > MAX_LENGTH:
        raise ExprError(MAX_LENGTH, f"condition longer than {MAX_LENGTH} characters")
    if not text.strip():
        raise ExprError(0, "empty condition")
    root = _Parser(text).parse()
    if not root.boolean:
        raise ExprError(root.pos, "the whole must be a condition (a comparison), not a number")
    names: dict[str, None] = {}
    _names(root, names)
    return Condition(text, tuple(names), root)
