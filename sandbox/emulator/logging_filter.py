"""The subset of the Logging query language the pipeline uses: tokenizer, parser, matcher.

Grammar (Logging's, reduced; keywords AND/OR/NOT are upper case, juxtaposition means AND):

    query      := or_expr
    or_expr    := and_expr ("OR" and_expr)*
    and_expr   := unary (["AND"] unary)*
    unary      := ("NOT" | "-") unary | primary
    primary    := "(" query ")" | field OP value | value          # a bare value = text search
    value      := STRING | WORD | "(" value (("OR" | "AND") value)* ")"
    OP         := = != < <= > >= : =~ !~

Fields: resource.type, resource.labels.*, labels.*, logName, severity, timestamp,
receiveTimestamp, insertId, textPayload, jsonPayload.*, trace, spanId (snake_case aliases too).
String comparisons are case-insensitive (as in Logging), regexes (=~ !~) case-sensitive;
severity compares by rank; timestamps as instants. `field:*` tests presence. Anything else is
refused with FilterError naming the part and what is supported.
"""

from __future__ import annotations

import datetime as dt
import functools
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

SEVERITIES = {
    "DEFAULT": 0,
    "DEBUG": 100,
    "INFO": 200,
    "NOTICE": 300,
    "WARNING": 400,
    "ERROR": 500,
    "CRITICAL": 600,
    "ALERT": 700,
    "EMERGENCY": 800,
}
SEVERITY_BY_NUMBER = {v: k for k, v in SEVERITIES.items()}

OPERATORS = ("=~", "!~", "!=", "<=", ">=", "=", "<", ">", ":")
_ALIASES = {
    "log_name": "logName",
    "insert_id": "insertId",
    "text_payload": "textPayload",
    "json_payload": "jsonPayload",
    "receive_timestamp": "receiveTimestamp",
    "span_id": "spanId",
}
# Root field -> whether it takes sub-fields (a map).
_ROOTS = {
    "resource": True,
    "labels": True,
    "jsonPayload": True,
    "logName": False,
    "severity": False,
    "timestamp": False,
    "receiveTimestamp": False,
    "insertId": False,
    "textPayload": False,
    "trace": False,
    "spanId": False,
}
SUPPORTED = (
    "fields resource.type, resource.labels.KEY, labels.KEY, logName, severity, timestamp, "
    "receiveTimestamp, insertId, textPayload, jsonPayload.PATH, trace, spanId; operators "
    '= != < <= > >= : =~ !~ (and FIELD:*); AND, OR, NOT, -, parentheses; bare "text"'
)

Entry = dict[str, Any]
Predicate = Callable[[Entry], bool]


class FilterError(ValueError):
    """An unsupported or malformed filter; the message names the part and the position."""


@dataclass(frozen=True)
class Token:
    kind: str  # STRING WORD OP LPAREN RPAREN AND OR NOT NEG
    text: str
    pos: int


_WORD_STOP = set(' \t\r\n()"') | set("=!<>:")


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "()":
            tokens.append(Token("LPAREN" if c == "(" else "RPAREN", c, i))
            i += 1
        elif c == '"':
            j, out = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                out.append(text[j])
                j += 1
            if j >= n:
                raise FilterError(f"unterminated string starting at position {i}: {text[i:]!r}")
            tokens.append(Token("STRING", "".join(out), i))
            i = j + 1
        elif c == "-" and (not tokens or tokens[-1].kind != "OP") and i + 1 < n:
            if text[i + 1].isspace():
                raise FilterError(f"dangling '-' at position {i}")
            tokens.append(Token("NEG", "-", i))
            i += 1
        elif c in "=!<>:":
            op = next((o for o in OPERATORS if text.startswith(o, i)), None)
            if op is None:
                raise FilterError(f"unknown operator at position {i}: {text[i : i + 2]!r}")
            tokens.append(Token("OP", op, i))
            i += len(op)
        else:
            j = i
            while j < n and text[j] not in _WORD_STOP:
                j += 1
            word = text[i:j]
            kind = word if word in ("AND", "OR", "NOT") else "WORD"
            if kind == "WORD" and j < n and text[j] == "(":
                raise FilterError(
                    f"function {word}() at position {i} is not supported; supported: {SUPPORTED}"
                )
            tokens.append(Token(kind, word, i))
            i = j
    return tokens


# ---- values of an entry ---------------------------------------------------------------------


def _field_path(name: str, pos: int) -> list[str]:
    parts = name.split(".")
    parts[0] = _ALIASES.get(parts[0], parts[0])
    root = parts[0]
    if root not in _ROOTS or any(not p for p in parts):
        raise FilterError(
            f"field {name!r} at position {pos} is not supported; supported: {SUPPORTED}"
        )
    if not _ROOTS[root] and len(parts) > 1:
        raise FilterError(f"field {name!r} at position {pos}: {root} has no sub-fields")
    if root == "resource" and len(parts) > 1 and parts[1] not in ("type", "labels"):
        raise FilterError(
            f"field {name!r} at position {pos}: use resource.type or resource.labels.KEY"
        )
    return parts


def _lookup(entry: Entry, path: list[str]) -> Any:
    value: Any = entry
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _getter(path: list[str]) -> Callable[[Entry], Any]:
    """`_lookup` of one path, unrolled for the usual depths (resource.labels.KEY is 3): a
    filter runs it for every entry of the store."""
    if len(path) == 1:
        (key,) = path
        return lambda e: e.get(key)
    if len(path) == 2:
        first, second = path

        def two(e: Entry) -> Any:
            value = e.get(first)
            return value.get(second) if isinstance(value, dict) else None

        return two
    if len(path) == 3:
        first, second, third = path

        def three(e: Entry) -> Any:
            value = e.get(first)
            value = value.get(second) if isinstance(value, dict) else None
            return value.get(third) if isinstance(value, dict) else None

        return three
    return lambda e: _lookup(e, path)


def _strings(value: Any) -> Iterator[str]:
    """Every string (and number, as text) inside a JSON value."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, bool):
        yield str(value).lower()
    elif isinstance(value, str | int | float):
        yield str(value)


def parse_time(text: str, where: str = "timestamp") -> dt.datetime:
    try:
        return _instant(text)
    except ValueError:
        raise FilterError(
            f'{where}: {text!r} is not an RFC 3339 time, e.g. "2025-01-31T12:00:00Z"'
        ) from None


@functools.lru_cache(maxsize=1 << 17)
def _instant(text: str) -> dt.datetime:
    """An RFC 3339 time as an aware datetime (UTC when it names no zone). Cached: a list of a
    step's window compares the same entries' timestamps on every page (logging_api.py)."""
    value = dt.datetime.fromisoformat(text.strip())
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def severity_rank(value: Any, pos: int | None = None) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip().upper()
    if text.isdigit():
        return int(text)
    if text not in SEVERITIES:
        where = f" at position {pos}" if pos is not None else ""
        raise FilterError(
            f"severity {value!r}{where} is not a severity; use one of {', '.join(SEVERITIES)}"
        )
    return SEVERITIES[text]


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "=":
        return left == right
    if op == "!=":
        return left != right
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    if op == ">":
        return left > right
    return left >= right


def _comparison(path: list[str], op: str, value: str, quoted: bool, pos: int) -> Predicate:
    root = path[0]
    get = _getter(path)
    if op == ":" and value == "*" and not quoted:
        return lambda e: get(e) is not None
    if op in ("=~", "!~"):
        try:
            rx = re.compile(value)
        except re.error as exc:
            raise FilterError(f"regular expression {value!r} at position {pos}: {exc}") from None
        want = op == "=~"
        return lambda e: any(rx.search(s) for s in _strings(get(e))) == want
    if root == "severity":
        if op == ":":
            op = "="
        rank = severity_rank(value, pos)
        return lambda e: _compare(op, severity_rank(e.get("severity", "DEFAULT")), rank)
    if root in ("timestamp", "receiveTimestamp"):
        if op == ":":
            raise FilterError(f"{root}:... at position {pos}: use = < <= > >= with a time")
        when = parse_time(value, root)

        compare = _COMPARE[op]

        def by_time(e: Entry) -> bool:
            raw = e.get(root)
            return raw is not None and compare(parse_time(raw, root), when)

        return by_time
    needle = value.lower()
    if op == ":":
        return lambda e: any(needle in s.lower() for s in _strings(get(e)))
    if op in ("=", "!="):
        # `!=` matches entries without the field too (Logging: NOT field = value).
        def by_equal(e: Entry) -> bool:
            raw = get(e)
            if isinstance(raw, str):  # the common case (labels, logName, resource.type): fast
                return (raw.lower() == needle) == (op == "=")
            found = [s.lower() for s in _strings(raw)]
            hit = needle in found
            return hit if op == "=" else not hit

        return by_equal

    def by_order(e: Entry) -> bool:
        raw = get(e)
        if raw is None or isinstance(raw, dict | list):
            return False
        try:
            return _compare(op, float(raw), float(value))
        except ValueError:
            return _compare(op, str(raw).lower(), needle)

    return by_order


def _text_search(value: str) -> Predicate:
    """A bare value: matches text anywhere in the payload (textPayload, any jsonPayload string)."""
    needle = value.lower()

    def search(e: Entry) -> bool:
        texts = [e.get("textPayload") or ""]
        texts.extend(_strings(e.get("jsonPayload")))
        return any(needle in t.lower() for t in texts)

    return search


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, message: str, token: Token | None = None) -> FilterError:
        token = token or self.peek()
        where = f"position {token.pos} ({token.text!r})" if token else "the end"
        return FilterError(f"{message} at {where}; supported: {SUPPORTED}")

    def parse(self) -> Predicate:
        if not self.tokens:
            return lambda e: True
        pred = self.or_expr()
        if self.peek() is not None:
            raise self.fail("unexpected token")
        return pred

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while (t := self.peek()) is not None and t.kind == "OR":
            self.take()
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]

        def disjunction(e: Entry) -> bool:
            for part in parts:  # noqa: SIM110 - any(genexpr) costs a generator per entry
                if part(e):
                    return True
            return False

        return disjunction

    def and_expr(self) -> Predicate:
        parts = [self.unary()]
        while (t := self.peek()) is not None and t.kind not in ("OR", "RPAREN"):
            if t.kind == "AND":
                self.take()
            parts.append(self.unary())
        if len(parts) == 1:
            return parts[0]

        def conjunction(e: Entry) -> bool:
            for part in parts:  # noqa: SIM110 - all(genexpr) costs a generator per entry
                if not part(e):
                    return False
            return True

        return conjunction

    def unary(self) -> Predicate:
        t = self.peek()
        if t is not None and t.kind in ("NOT", "NEG"):
            self.take()
            inner = self.unary()
            return lambda e: not inner(e)
        return self.primary()

    def primary(self) -> Predicate:
        t = self.peek()
        if t is None:
            raise self.fail("expected a restriction")
        if t.kind == "LPAREN":
            self.take()
            pred = self.or_expr()
            if (close := self.peek()) is None or close.kind != "RPAREN":
                raise self.fail("expected ')'")
            self.take()
            return pred
        if t.kind not in ("STRING", "WORD"):
            raise self.fail("expected a field or a value")
        self.take()
        op = self.peek()
        if op is None or op.kind != "OP":
            return _text_search(t.text)
        if t.kind == "STRING":
            raise self.fail("a field name cannot be a quoted string", t)
        path = _field_path(t.text, t.pos)
        self.take()
        return self.value_of(path, op)

    def value_of(self, path: list[str], op: Token) -> Predicate:
        t = self.peek()
        if t is None:
            raise self.fail(f"expected a value after {op.text!r}")
        if t.kind == "LPAREN":  # field = ("a" OR "b")
            self.take()
            preds, joiner = [self.value_of(path, op)], None
            while (nxt := self.peek()) is not None and nxt.kind in ("OR", "AND"):
                if joiner not in (None, nxt.kind):
                    raise self.fail("mixing AND and OR in a value list", nxt)
                joiner = nxt.kind
                self.take()
                preds.append(self.value_of(path, op))
            if (close := self.peek()) is None or close.kind != "RPAREN":
                raise self.fail("expected ')' closing the value list")
            self.take()
            if joiner == "AND":
                return lambda e: all(p(e) for p in preds)
            return lambda e: any(p(e) for p in preds)
        if t.kind not in ("STRING", "WORD"):
            raise self.fail(f"expected a value after {op.text!r}")
        self.take()
        return _comparison(path, op.text, t.text, t.kind == "STRING", t.pos)


def compile_filter(text: str) -> Predicate:
    """A predicate over LogEntry dicts, or FilterError naming what is not supported."""
    return _Parser(text or "").parse()
