"""Just enough of ClickHouse's SQL lexer to route an HTTP request without parsing the query.

The HTTP server needs three facts the engine will not tell it before running a query: where the data of
an `INSERT ... FORMAT X <data>` begins (the data is spooled to a file and inserted with `FROM INFILE`,
never sent as SQL text), the output format of a SELECT (to stream it or not, and to set Content-Type),
and whether the statement produces a result at all. Everything else, including validating the SQL, is
left to the engine.

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
_FORMAT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


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
        elif depth == 0 and tok.upper == b"FORMAT" and i + 1 < len(toks) and toks[i + 1].kind in ("word", "qid"):
            name = sql[toks[i + 1].start : toks[i + 1].end].strip(b'`"')
            candidate = (i + 2, name.decode("ascii", "replace"))
    if candidate is None:
        return None
    rest = toks[candidate[0] :]
    if not rest or rest[0].upper in (b"SETTINGS", b";", b"INTO"):
        return candidate[1]
    return None


def second_statement_at(sql: bytes) -> int | None:
    """Where a second statement starts, if `sql` holds more than one (a trailing ';' is not one).

    ClickHouse's HTTP interface runs one statement per request; chdb would run them all, and a statement
    after the first could change a pooled connection's state (SET, USE) behind the server's back.
    """
    after_semicolon = False
    for tok in tokens(sql):
        if tok.upper == b";":
            after_semicolon = True
        elif after_semicolon:
            return tok.start
    return None


@dataclass(frozen=True, slots=True)
class InsertHead:
    """An INSERT carrying data: `INSERT INTO t [(cols)]` as `statement`, its `SETTINGS ...` clause (or ""),
    the data's format, and where the data starts in the buffer.

    The settings clause is kept apart because ClickHouse wants it after `FROM INFILE 'file'`.
    """

    statement: str
    format: str
    data_start: int
    settings: str = ""

    def infile_sql(self, path: str, defaults: dict[str, str] | None = None, compression: str = "none") -> str:
        """This INSERT reading its data from `path` (in `format`, compressed with ClickHouse's method
        `compression`), with `defaults` added to its SETTINGS clause unless the clause names them."""
        clauses = [self.settings[len("SETTINGS") :].strip()] if self.settings else []
        named = self.settings.lower()
        clauses += [f"{k} = {quote_string(v)}" for k, v in (defaults or {}).items() if k.lower() not in named]
        settings = f" SETTINGS {', '.join(clauses)}" if clauses else ""
        source = f"FROM INFILE {quote_string(path)} COMPRESSION {quote_string(compression)}"
        return f"{self.statement} {source}{settings} FORMAT {self.format}"


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
        if not complete and first.kind == "word" and first.end == len(buf) and b"INSERT".startswith(first.upper):
            return NEED_MORE
        return NOT_DATA_INSERT
    depth = 0
    seen_target = False
    settings_at: int | None = None  # where a top-level SETTINGS clause starts
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
            if not after_into and seen_target and tok.upper == b"SETTINGS" and settings_at is None:
                settings_at = tok.start
            elif not after_into and seen_target and tok.upper in _INSERT_END_KEYWORDS:
                if not complete and tok.end == len(buf):
                    return NEED_MORE
                head_end = tok.start if settings_at is None else settings_at
                settings = _text(buf[settings_at : tok.start]) if settings_at is not None else ""
                if tok.upper == b"VALUES":
                    return InsertHead(_text(buf[:head_end]), "Values", tok.end, settings)
                if tok.upper != b"FORMAT":
                    return NOT_DATA_INSERT
                return _after_format(buf, it, complete, _text(buf[:head_end]), settings)
            seen_target = True
        elif tok.kind == "qid":
            seen_target = True
        prev = tok
    return NOT_DATA_INSERT if complete else NEED_MORE


def _after_format(buf: bytes, it: Iterator[Token], complete: bool, statement: str, settings: str) -> InsertHead | str:
    name = next(it, None)
    if name is None or (not complete and name.end == len(buf)):  # the name may be cut short
        return NOT_DATA_INSERT if complete else NEED_MORE
    if name.kind not in ("word", "qid"):
        return NOT_DATA_INSERT
    fmt = buf[name.start : name.end].strip(b'`"').decode("ascii", "replace")
    if not _FORMAT_NAME.fullmatch(fmt):
        return NOT_DATA_INSERT  # the engine will say what is wrong with it
    # ClickHouse's rule: data starts after the first newline, or after the spaces if there is none
    pos, end = name.end, len(buf)
    while pos < end and buf[pos] in b" \t\f":
        pos += 1
    if not complete and (pos >= end or (pos == end - 1 and buf[pos] == 0x0D)):  # a "\r\n" may be on its way
        return NEED_MORE
    if pos < end and buf[pos] == 0x0D:
        pos += 1
    if pos < end and buf[pos] == 0x0A:
        pos += 1
    return InsertHead(statement, fmt, pos, settings)


def _text(sql: bytes) -> str:
    return sql.decode("utf-8", "replace").strip().rstrip(";")


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
