"""
The conditions of ``.if`` / ``.elif`` lines, parsed and evaluated as HAProxy does.

HAProxy's grammar (src/cfgcond.c, 2.6 to 3.x):

    expr := and [ "||" expr ]
    and  := term [ "&&" and ]
    term := { "!" } ( number | "(" expr ")" | predicate "(" args ")" )

A number is read like C ``strtol(s, 0)`` (non-zero is true). Predicate
arguments are split on ``,`` up to ``)``, with quotes and backslash escapes
(src/arg.c ``make_arg_list``). The whole condition parses first, so a syntax
error anywhere stops HAProxy; then ``&&`` and ``||`` evaluate left to right
and stop as soon as the answer is known.

Pure: predicates that depend on the binary (``feature``, ``version_*``,
``openssl_*``...) are answered by a callback, which may say it does not know.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hastaple.errors import ConfigError

#: Predicates and how many string arguments each takes.
PREDICATES: dict[str, int] = {
    "defined": 1,
    "feature": 1,
    "streq": 2,
    "strneq": 2,
    "strstr": 2,
    "version_atleast": 1,
    "version_before": 1,
    "openssl_version_atleast": 1,
    "openssl_version_before": 1,
    "ssllib_name_startswith": 1,
    "enabled": 1,
}
#: Predicates whose answer only the HAProxy binary knows.
BINARY_PREDICATES = frozenset(PREDICATES) - {"defined", "streq", "strneq", "strstr"}

_NUMBER = re.compile(r"[ \t\n\v\f\r]*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_BLANK = " \t"

#: Answers a binary predicate: True, False, or None when it cannot be known.
Ask = Callable[[str, tuple[str, ...]], bool | None]


@dataclass(frozen=True, slots=True)
class Predicate:
    """``name(args...)``, possibly negated."""

    name: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.name}({','.join(self.args)})"


@dataclass(frozen=True, slots=True)
class Term:
    """A constant, a predicate or a parenthesised expression, negated ``negate`` times (mod 2)."""

    value: bool | Predicate | Expr
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Expr:
    """``or_`` holds the ``||`` alternatives, each a list of ``&&``-joined terms."""

    or_: tuple[tuple[Term, ...], ...]


@dataclass(slots=True)
class Outcome:
    """The value of a condition and the binary predicates that could not be decided."""

    value: bool
    unknown: list[Predicate]


def parse(text: str, where: str) -> Expr | None:
    """
    Parse a condition (the words after ``.if``, joined by single spaces).

    Returns None for an empty condition, which HAProxy takes as false.

    Raises:
        ConfigError: text HAProxy would refuse.
    """
    if not text:
        return None
    cursor = _Cursor(text, where)
    expr = cursor.expr(depth=64)
    cursor.skip_blank()
    if cursor.pos < len(text):
        cursor.fail(f"unexpected character '{text[cursor.pos]}' at the end of the condition")
    return expr


def evaluate(expr: Expr | None, env: Mapping[str, str], ask: Ask) -> Outcome:
    """Evaluate a parsed condition; an undecided binary predicate counts as false."""
    outcome = Outcome(value=False, unknown=[])
    if expr is not None:
        outcome.value = _expr(expr, env, ask, outcome)
    return outcome


def _expr(expr: Expr, env: Mapping[str, str], ask: Ask, outcome: Outcome) -> bool:
    return any(all(_term(t, env, ask, outcome) for t in terms) for terms in expr.or_)


def _term(term: Term, env: Mapping[str, str], ask: Ask, outcome: Outcome) -> bool:
    value = term.value
    if isinstance(value, Expr):
        result = _expr(value, env, ask, outcome)
    elif isinstance(value, Predicate):
        result = _predicate(value, env, ask, outcome)
    else:
        result = value
    return result != term.negate


def _predicate(pred: Predicate, env: Mapping[str, str], ask: Ask, outcome: Outcome) -> bool:
    args = pred.args
    if pred.name == "defined":
        return args[0] in env
    if pred.name == "streq":
        return args[0] == args[1]
    if pred.name == "strneq":
        return args[0] != args[1]
    if pred.name == "strstr":
        return args[1] in args[0]
    answer = ask(pred.name, args)
    if answer is None:
        outcome.unknown.append(pred)
        return False
    return answer


def _nonzero(digits: str) -> bool:
    """Whether a C integer literal (decimal, 0octal, 0xhex) is not zero."""
    return digits.lstrip("0xX") != ""


class _Cursor:
    """A position in the condition text and the recursive-descent parser over it."""

    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.where = where
        self.pos = 0

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def skip_blank(self) -> None:
        while self.peek() and self.peek() in _BLANK:
            self.pos += 1

    def fail(self, message: str) -> None:
        raise ConfigError(f"{self.where}: {message} in '{self.text}'")

    def expr(self, depth: int) -> Expr:
        alternatives = [self.conjunction(depth)]
        while self._operator("||"):
            alternatives.append(self.conjunction(depth))
        return Expr(tuple(alternatives))

    def conjunction(self, depth: int) -> tuple[Term, ...]:
        terms = [self.term(depth)]
        while self._operator("&&"):
            terms.append(self.term(depth))
        return tuple(terms)

    def _operator(self, op: str) -> bool:
        self.skip_blank()
        if self.text.startswith(op, self.pos):
            self.pos += len(op)
            self.skip_blank()
            return True
        return False

    def term(self, depth: int) -> Term:
        self.skip_blank()
        if depth <= 0 or not self.peek():
            self.fail("unparsable conditional expression")
        negate = False
        while self.peek() == "!":
            negate = not negate
            self.pos += 1
            self.skip_blank()
        number = _NUMBER.match(self.text, self.pos)
        if number:
            self.pos = number.end()
            return Term(_nonzero(number.group(1)), negate)
        if self.peek() == "(":
            self.pos += 1
            self.skip_blank()
            inner = self.expr(depth - 1)
            self.skip_blank()
            if self.peek() != ")":
                self.fail("expected ')' after a conditional expression")
            self.pos += 1
            self.skip_blank()
            return Term(inner, negate)
        return Term(self.predicate(), negate)

    def predicate(self) -> Predicate:
        rest = self.text[self.pos :]
        name = re.split(r"[ (]", rest, maxsplit=1)[0]
        if name not in PREDICATES:
            self.fail("unparsable conditional expression")
        self.pos += len(name)
        args = self.arguments(name, PREDICATES[name])
        return Predicate(name, args)

    def arguments(self, name: str, count: int) -> tuple[str, ...]:
        """Read ``(a,b)`` as make_arg_list() does: quotes, backslashes, ``,`` and ``)``."""
        if self.peek() != "(":
            # No parenthesis: HAProxy reads one empty argument ("defined" is false).
            if count > 1:
                self.fail(f"predicate '{name}' needs {count} argument(s)")
            return ("",)
        self.pos += 1
        args: list[str] = []
        while len(args) < count:
            args.append(self._argument())
            if not self.peek() or self.peek() == ")":
                break
            if len(args) < count:
                self.pos += 1  # the comma
        if len(args) < count:
            self.fail(f"predicate '{name}' needs {count} argument(s)")
        if self.peek() != ")":
            self.fail(f"expected ')' after the arguments of '{name}'")
        self.pos += 1
        return tuple(args)

    def _argument(self) -> str:
        out: list[str] = []
        squote = dquote = False
        escapes = {"\\": "\\", " ": " ", '"': '"', "'": "'", "r": "\r", "n": "\n", "t": "\t"}
        while self.peek():
            char = self.peek()
            if char == '"' and not squote:
                dquote = not dquote
            elif char == "'" and not dquote:
                squote = not squote
            elif char == "\\" and not squote:
                following = self.peek(1)
                if not following:
                    self.fail("a backslash ends the condition")
                if following in escapes:
                    out.append(escapes[following])
                    self.pos += 1
                else:
                    out.append("\\")
            elif not squote and not dquote and char in ",)":
                break
            else:
                out.append(char)
            self.pos += 1
        return "".join(out)
