"""Just enough of ClickHouse's SQL lexer to route an HTTP request without parsing the query.

The HTTP server needs three facts the engine will not tell it before running a query: where the data of
an `INSERT ... FORMAT X <data>` begins (it is streamed to chdb's insert API, not sent as SQL text), the
output format of a SELECT (to stream it or not, and to set Content-Type), and whether the statement
produces a result at all. Everything else, including validating the SQL, is left to the engine.

Works on bytes because an INSERT's data can be binary (Native, RowBinary) right after the format name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# One token per match, tried in order. Strings, quoted identifiers and comments may be unterminated at
# the end of a partial buffer; the `open` group catches that so the caller can ask for more bytes.
_TOKEN = re.compile(
    rb"""
      (?P<ws>[ \t\n\r\f\v]+)
    | (?P<comment>--[^\n]*(?:\n|$)|\#[ !][^\n]*(?:\n|$)|/\*.*?\*/)
    | (?P<str>'(?:[^'\\]|\\.|'')*')
    | (?P<qid>"(?:[^"\\]|\\.|"")*"|`(?:[^`\\]|\\.|``)*`)
    | (?P<word>[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)
    | (?P<num>[0-9][A-Za-z0-9_.]*)
    | (?P<open>/\*|'|"|`)
    | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)

# Statements whose answer is a result set in the output format (ClickHouse sets X-ClickHouse-Format).
RESULT_KEYWORDS = frozenset({b"SELECT", b"WITH", b"SHOW", b"DESCRIBE", b"DESC", b"EXPLAIN", b"EXISTS", b"("})

_INSERT_END_KEYWORDS = frozenset({b"FORMAT", b"VALUES", b"SELECT", b"WITH", b"FROM", b"WATCH"})


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    start: int
    end: int
    upper: bytes  # the token's text upper-cased, for keyword tests (empty for strings)


def tokens(buf: bytes, start: int = 0) -> Iterator[Token]:
    """Significant tokens (no whitespace or comments) from `start`; kind 'open' marks an unterminated one."""
    pos, end = start, len(buf)
    match = _TOKEN.match
    while pos < end:
        m = match(buf, pos)
        assert m is not None  # `punct` matches any byte
        kind = m.lastgroup or "punct"
        if kind not in ("ws", "comment"):
            text = m.group()
            yield Token(kind, pos, m.end(), text.upper() if kind in ("word", "punct") else b"")
        pos = m.end()


def output_format(sql: bytes) -> str | None:
    """The `FORMAT name` of a query when it is the last clause (an optional SETTINGS clause and ';' aside).

    Only a trailing FORMAT counts, so a column called `format` or the `format()` function is not mistaken
    for it.
    """
    toks = list(tokens(sql))
    depth = 0
    candidate: tuple[int, str] | None = None
    for i, tok in enumerate(toks):
        if tok.upper == b"(":
            depth += 1
        elif tok.upper == b")":
            depth -= 1
        elif (
            depth == 0
            and tok.upper == b"FORMAT"
            and i + 1 < len(toks)
            and toks[i + 1].kind in ("word", "qid")
        ):
            name = sql[toks[i + 1].start : toks[i + 1].end].strip(b'`"')
            candidate = (i + 2, name.decode("ascii", "replace"))
    if candidate is None:
        return None
    rest = toks[candidate[0] :]
    if not rest or rest[0].upper in (b"SETTINGS", b";", b"INTO"):
        return candidate[1]
    return None


@dataclass(frozen=True, slots=True)
class InsertHead:
    """An INSERT carrying data: `statement` goes to chdb's send_insert; bytes from `data_start` are data."""

    statement: str
    format: str
    data_start: int


NEED_MORE = "need-more"  # the buffer ends before the INSERT's data start could be found
NOT_DATA_INSERT = "not-data-insert"  # a SELECT, an INSERT ... SELECT, DDL...: run the text as one query


def split_insert(buf: bytes, complete: bool) -> InsertHead | str:
    """Find where the data of `INSERT INTO t [(cols)] [SETTINGS ...] FORMAT fmt|VALUES <data>` begins.

    `complete` says no more bytes will come (the request body is exhausted). Returns an InsertHead,
    NEED_MORE, or NOT_DATA_INSERT.
    """
    it = tokens(buf)
    first = next(it, None)
    if first is None:
        return NOT_DATA_INSERT if complete else NEED_MORE
    if first.kind == "open" and not complete:
        return NEED_MORE
    if first.upper != b"INSERT":
        # A lone word at the very end may be a cut-off "INSERT"
        if (
            not complete
            and first.kind == "word"
            and first.end == len(buf)
            and b"INSERT".startswith(first.upper)
        ):
            return NEED_MORE
        return NOT_DATA_INSERT
    depth = 0
    seen_target = False
    prev: Token | None = None
    for tok in it:
        if tok.kind == "open":
            return NOT_DATA_INSERT if complete else NEED_MORE
        if tok.upper == b"(":
            depth += 1
        elif tok.upper == b")":
            depth -= 1
        elif depth == 0 and tok.kind == "word":
            # The table name right after INTO/TABLE/'.' may itself be called `format` or `values`
            after_into = prev is not None and prev.upper in (b"INTO", b"TABLE", b"FUNCTION", b".")
            if tok.upper in (b"INTO", b"TABLE", b"FUNCTION") and not seen_target:
                prev = tok
                continue
            if not after_into and seen_target and tok.upper in _INSERT_END_KEYWORDS:
                if not complete and tok.end == len(buf):
                    return NEED_MORE
                if tok.upper == b"VALUES":
                    return InsertHead(_text(buf[: tok.start]), "Values", tok.end)
                if tok.upper != b"FORMAT":
                    return NOT_DATA_INSERT
                return _after_format(buf, tok, it, complete)
            seen_target = True
        elif tok.kind == "qid":
            seen_target = True
        prev = tok
    return NOT_DATA_INSERT if complete else NEED_MORE


def _after_format(buf: bytes, fmt_kw: Token, it, complete: bool) -> InsertHead | str:
    name = next(it, None)
    if name is None or (not complete and name.end == len(buf)):  # the name may be cut short
        return NOT_DATA_INSERT if complete else NEED_MORE
    if name.kind not in ("word", "qid"):
        return NOT_DATA_INSERT
    fmt = buf[name.start : name.end].strip(b'`"').decode("ascii", "replace")
    # ClickHouse's rule: data starts after the first newline, or after the spaces if there is none
    pos, end = name.end, len(buf)
    while pos < end and buf[pos] in b" \t\f":
        pos += 1
    if not complete and pos >= end - 1:  # a "\r\n" may be on its way
        return NEED_MORE
    if pos < end and buf[pos] == 0x0D:
        pos += 1
    if pos < end and buf[pos] == 0x0A:
        pos += 1
    return InsertHead(_text(buf[: fmt_kw.start]), fmt, pos)


def _text(sql: bytes) -> str:
    return sql.decode("utf-8", "replace").strip().rstrip(";")


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
