"""The tiny condition language writers use in ``when:`` and ``reveal_when:``.

Parsed by a small recursive-descent parser into a tree of dataclasses and
evaluated against a lookup: no ``eval``, no attribute access, no arithmetic.

Grammar (lowest precedence first)::

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := operand [("==" | "!=" | "<" | "<=" | ">" | ">=") operand]
    operand    := NUMBER | STRING | "true" | "false" | NAME
                | FUNCTION "(" STRING ")" | "(" or ")"

Names are flags and variables of the story state (plus ``beat``, the current
beat of the character the condition is about). A name never set is "unset":
it is false, and equals ``false``, ``0`` and ``""``. Ordering comparisons
between a number and a text (or unset) are false rather than errors, so a
condition can never crash a running game.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from npc_engine.yamlsrc import suggest

Value = bool | int | float | str | None

FUNCTIONS: dict[str, str] = {
    "visited": "true once the beat has been entered",
    "visits": "how many times the beat has been entered",
    "said": "true once the line has been spoken",
}
KEYWORDS = frozenset({"and", "or", "not", "true", "false"})
RESERVED_NAMES = frozenset({"beat"}) | KEYWORDS | frozenset(FUNCTIONS)
COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")


class ConditionError(ValueError):
    """A condition that does not parse; ``column`` is 1-based within the condition text."""

    def __init__(self, text: str, problem: str, column: int) -> None:
        self.text = text
        self.problem = problem
        self.column = column
        super().__init__(f'bad condition "{text}": {problem} (column {column})')


class Env(Protocol):
    """What a condition can see of the story state."""

    def lookup(self, name: str) -> Value: ...

    def visits(self, beat_id: str) -> int: ...

    def said(self, line_id: str) -> bool: ...


# --------------------------------------------------------------------------- tree


@dataclass(frozen=True, slots=True)
class Lit:
    value: Value


@dataclass(frozen=True, slots=True)
class Name:
    name: str


@dataclass(frozen=True, slots=True)
class Call:
    function: str
    arg: str


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # "and" | "or"
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Node
    right: Node


Node = Lit | Name | Call | Not | BoolOp | Compare


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed condition; evaluate it with :meth:`evaluate`."""

    text: str
    tree: Node

    def evaluate(self, env: Env) -> bool:
        return _truthy(_eval(self.tree, env))

    def names(self) -> set[str]:
        """Flag/variable names the condition reads (``beat`` included)."""
        return {n.name for n in _walk(self.tree) if isinstance(n, Name)}

    def calls(self) -> list[tuple[str, str]]:
        """``(function, argument)`` pairs, e.g. ``("visited", "forge")``."""
        return [(n.function, n.arg) for n in _walk(self.tree) if isinstance(n, Call)]


def _walk(node: Node) -> Iterator[Node]:
    yield node
    if isinstance(node, Not):
        yield from _walk(node.operand)
    elif isinstance(node, (BoolOp, Compare)):
        yield from _walk(node.left)
        yield from _walk(node.right)


# --------------------------------------------------------------------------- tokens

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>-?\d+(?:\.\d+)?(?![A-Za-z_]))
  | (?P<string>"[^"]*"|'[^']*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)

# Things writers coming from C#, GDScript or Ink type, and what we say instead.
_MISTAKES = {
    "&&": "use 'and' instead of '&&'",
    "||": "use 'or' instead of '||'",
    "!": "use 'not' instead of '!'",
    "=": "use '==' to compare (a single '=' is not allowed in a condition)",
}


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # number | string | name | op | punct | end
    text: str
    col: int


def _tokenise(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            col = pos + 1
            if text[pos] == "=" and out and out[-1].kind == "op":
                raise ConditionError(text, f"write '{out[-1].text}=' without a space", out[-1].col)
            for bad, advice in _MISTAKES.items():
                if text.startswith(bad, pos):
                    raise ConditionError(text, advice, col)
            if text[pos] in "\"'":
                raise ConditionError(text, "a quote is opened and never closed", col)
            raise ConditionError(text, f"unexpected character {text[pos]!r}", col)
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, m.group(), pos + 1))
        pos = m.end()
    out.append(_Tok("end", "", len(text) + 1))
    return out


# --------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenise(text)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, problem: str, tok: _Tok | None = None) -> ConditionError:
        return ConditionError(self.text, problem, (tok or self.peek()).col)

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "name" and tok.text == word

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.fail("the condition is empty")
        node = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            if tok.kind == "op":
                raise self.fail("comparisons cannot be chained: join them with 'and'")
            raise self.fail(f"expected 'and', 'or' or the end of the condition, found {tok.text!r}")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.is_word("or"):
            self.take()
            node = BoolOp("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.is_word("and"):
            self.take()
            node = BoolOp("and", node, self.not_())
        return node

    def not_(self) -> Node:
        if self.is_word("not"):
            self.take()
            return Not(self.not_())
        return self.comparison()

    def comparison(self) -> Node:
        left = self.operand()
        if self.peek().kind == "op":
            op = self.take().text
            if self.peek().kind == "end":
                raise self.fail(f"expected a value after '{op}'")
            return Compare(op, left, self.operand())
        return left

    def operand(self) -> Node:
        tok = self.take()
        if tok.kind == "number":
            return Lit(float(tok.text) if "." in tok.text else int(tok.text))
        if tok.kind == "string":
            return Lit(tok.text[1:-1])
        if tok.kind == "punct" and tok.text == "(":
            node = self.or_()
            if self.peek().text != ")":
                raise self.fail("a '(' is never closed")
            self.take()
            return node
        if tok.kind == "name":
            if tok.text == "true":
                return Lit(True)
            if tok.text == "false":
                return Lit(False)
            if tok.text in ("and", "or", "not"):
                raise self.fail(f"expected a value before '{tok.text}'", tok)
            if self.peek().text == "(":
                return self.call(tok)
            return Name(tok.text)
        if tok.kind == "end":
            raise self.fail("the condition ends too early: a value is missing", tok)
        raise self.fail(f"expected a value, found {tok.text!r}", tok)

    def call(self, name: _Tok) -> Node:
        if name.text not in FUNCTIONS:
            raise self.fail(
                f"unknown function '{name.text}'{suggest(name.text, FUNCTIONS)}; "
                f"known: {', '.join(FUNCTIONS)}",
                name,
            )
        self.take()  # "("
        arg = self.take()
        if arg.kind != "string":
            raise self.fail(f'{name.text}() takes one quoted id, like {name.text}("forge")', arg)
        if self.peek().text != ")":
            raise self.fail(f"{name.text}() takes exactly one quoted id")
        self.take()
        return Call(name.text, arg.text[1:-1])


@functools.lru_cache(maxsize=1024)
def parse_condition(text: str) -> Condition:
    """Parse ``text``; raises ConditionError with a column on a syntax error."""
    return Condition(text, _Parser(text.strip()).parse())


# --------------------------------------------------------------------------- evaluation


def _truthy(value: Value) -> bool:
    return bool(value)


def _is_number(value: Value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equal(a: Value, b: Value) -> bool:
    if a is None or b is None:
        other = b if a is None else a
        return not other  # unset equals false, 0 and ""
    if isinstance(a, str) != isinstance(b, str):
        return False
    return a == b


def _eval(node: Node, env: Env) -> Value:
    if isinstance(node, Lit):
        return node.value
    if isinstance(node, Name):
        return env.lookup(node.name)
    if isinstance(node, Call):
        if node.function == "visits":
            return env.visits(node.arg)
        if node.function == "visited":
            return env.visits(node.arg) > 0
        return env.said(node.arg)
    if isinstance(node, Not):
        return not _truthy(_eval(node.operand, env))
    if isinstance(node, BoolOp):
        left = _truthy(_eval(node.left, env))
        if node.op == "and":
            return left and _truthy(_eval(node.right, env))
        return left or _truthy(_eval(node.right, env))
    a, b = _eval(node.left, env), _eval(node.right, env)
    if node.op == "==":
        return _equal(a, b)
    if node.op == "!=":
        return not _equal(a, b)
    if (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
        if node.op == "<":
            return a < b  # type: ignore[operator]
        if node.op == "<=":
            return a <= b  # type: ignore[operator]
        if node.op == ">":
            return a > b  # type: ignore[operator]
        return a >= b  # type: ignore[operator]
    return False


def validate_condition_field(value: object) -> object:
    """Pydantic ``before`` validator for a condition field (``when:``, ``reveal_when:``).

    YAML reads ``when: true`` as a bool; it becomes the condition ``"true"``. A string must
    parse, so a syntax error is reported at load time with its line.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        try:
            parse_condition(value)
        except ConditionError as e:
            raise ValueError(str(e)) from None
    return value
