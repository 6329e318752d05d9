"""Sorting ClickHouse failures into 'try again later' and 'this row is bad'.

The difference decides whether a batch waits (Kafka keeps the data, nothing is lost) or is split to find
the rows ClickHouse rejects for their content, which go to the dead-letter topic so the rest land.
"""

from __future__ import annotations

import re

from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

# Codes ClickHouse answers when the data itself cannot be parsed or converted.
CONTENT_ERROR_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        32,  # ATTEMPT_TO_READ_AFTER_EOF
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        131,  # TOO_LARGE_STRING_SIZE
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        407,  # DECIMAL_OVERFLOW
        469,  # VIOLATED_CONSTRAINT (a CHECK constraint an operator added to a table)
        1001,  # STD_EXCEPTION (e.g. bad UTF-8 in some parsers)
    }
)

_CODE = re.compile(r"Code: (\d+)")


def error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = _CODE.search(str(exc))
    return int(match.group(1)) if match else None


def is_content_error(exc: BaseException) -> bool:
    """True when ClickHouse rejected the rows themselves (split the batch, dead-letter the bad rows)."""
    if isinstance(exc, OperationalError):
        return False
    if isinstance(exc, (DatabaseError, ClickHouseError)):
        return error_code(exc) in CONTENT_ERROR_CODES
    return False
