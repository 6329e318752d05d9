"""Sorting ClickHouse failures by what the sink must do about them.

Every failure of an insert falls in one family, and the family decides the sink's move (sinks/writer.py):
- CONTENT: ClickHouse rejected the rows themselves. Split the batch until the bad rows are alone; they go
  to the dead-letter topic with ClickHouse's reason, the rest lands.
- TRANSIENT: the server is away, busy, short of memory, behind on merges, or shutting down. Retry the same
  rows with backoff for as long as it takes: Kafka holds them, and nothing is read past them.
- CONFIGURATION: no retry can fix it, an operator must (no table or database: run `tracehouse migrate`;
  wrong password, missing grant, read-only user). The sink keeps its data in Kafka and backs off, logging a
  loud error that names the fix at most once a minute, rather than exiting: a sink started before
  `migrate` (any start order works) then needs no restart, and a supervisor's restart loop would not fix
  a password either.
- PARTITIONS: "Too many partitions for single INSERT block" (252 with that message). Split the insert by
  partition into smaller blocks.
- UNKNOWN: anything else. Retried a bounded number of times, then treated as CONTENT, so that one poison
  batch cannot hold its Kafka partitions forever: what still fails row by row goes to the dead-letter topic.

Codes are ClickHouse's (src/Common/ErrorCodes.cpp; `SELECT errorCodeToName(n)` names them).
"""

from __future__ import annotations

import asyncio
import enum
import re

from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from tracehouse.core.retry import Outcome


class ErrorKind(enum.Enum):
    CONTENT = "content"
    TRANSIENT = "transient"
    CONFIGURATION = "configuration"
    PARTITIONS = "partitions"
    UNKNOWN = "unknown"

    @property
    def outcome(self) -> Outcome:
        """The family as one of core.retry's classes. CONFIGURATION is retriable for the sink (it waits for
        the operator's fix with Kafka holding the data, see above), and so is UNKNOWN, a bounded number of
        times; PARTITIONS is the content's shape (cut the insert, do not wait)."""
        return _OUTCOMES[self]


_OUTCOMES = {
    ErrorKind.CONTENT: Outcome.BAD_CONTENT,
    ErrorKind.PARTITIONS: Outcome.BAD_CONTENT,
    ErrorKind.TRANSIENT: Outcome.RETRIABLE,
    ErrorKind.CONFIGURATION: Outcome.RETRIABLE,
    ErrorKind.UNKNOWN: Outcome.RETRIABLE,
}


# The data itself cannot be parsed, converted or accepted.
CONTENT_ERROR_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        25,  # CANNOT_PARSE_ESCAPE_SEQUENCE
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        32,  # ATTEMPT_TO_READ_AFTER_EOF
        33,  # CANNOT_READ_ALL_DATA
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        128,  # TOO_LARGE_ARRAY_SIZE
        130,  # CANNOT_READ_ARRAY_FROM_TEXT
        131,  # TOO_LARGE_STRING_SIZE
        190,  # SIZES_OF_ARRAYS_DONT_MATCH
        248,  # INVALID_PARTITION_VALUE
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        376,  # CANNOT_PARSE_UUID
        407,  # DECIMAL_OVERFLOW
        441,  # CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING
        467,  # CANNOT_PARSE_BOOL
        469,  # VIOLATED_CONSTRAINT (a CHECK constraint an operator added to a table)
        563,  # CANNOT_READ_MAP_FROM_TEXT
        691,  # UNKNOWN_ELEMENT_OF_ENUM
        1001,  # STD_EXCEPTION (e.g. bad UTF-8 in some parsers)
    }
)

# Worth waiting for: the server or the way to it is away, busy, or catching up.
TRANSIENT_ERROR_CODES = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE (connection cut mid-body)
        23,  # CANNOT_READ_FROM_ISTREAM
        24,  # CANNOT_WRITE_TO_OSTREAM
        95,  # CANNOT_READ_FROM_SOCKET
        96,  # CANNOT_WRITE_TO_SOCKET
        159,  # TIMEOUT_EXCEEDED
        160,  # TOO_SLOW
        173,  # CANNOT_ALLOCATE_MEMORY
        198,  # DNS_ERROR
        201,  # QUOTA_EXCEEDED (the quota's interval ends)
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        218,  # TABLE_IS_DROPPED (being dropped or re-created by a migration)
        225,  # NO_ZOOKEEPER
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY (a replica lost Keeper, or the disk is being replaced)
        243,  # NOT_ENOUGH_SPACE
        244,  # UNEXPECTED_ZOOKEEPER_ERROR
        252,  # TOO_MANY_PARTS (merges behind inserts; the partition limit is told apart by its message)
        254,  # NO_ACTIVE_REPLICAS
        279,  # ALL_CONNECTION_TRIES_FAILED
        285,  # TOO_FEW_LIVE_REPLICAS
        286,  # UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
        289,  # REPLICA_IS_NOT_IN_QUORUM
        319,  # UNKNOWN_STATUS_OF_INSERT
        364,  # RECEIVED_ERROR_TOO_MANY_REQUESTS
        369,  # ALL_REPLICAS_ARE_STALE
        384,  # PART_IS_TEMPORARILY_LOCKED
        394,  # QUERY_WAS_CANCELLED (server shutting down)
        410,  # EXTERNAL_SERVER_IS_NOT_RESPONDING
        415,  # ALL_REPLICAS_LOST
        416,  # REPLICA_STATUS_CHANGED
        425,  # SYSTEM_ERROR
        439,  # CANNOT_SCHEDULE_TASK (thread pool full)
        473,  # DEADLOCK_AVOIDED
        499,  # S3_ERROR
        500,  # AZURE_BLOB_STORAGE_ERROR
        529,  # NOT_A_LEADER
        568,  # RAFT_ERROR
        571,  # DATABASE_REPLICATION_FAILED
        574,  # DISTRIBUTED_TOO_MANY_PENDING_BYTES
        677,  # THREAD_WAS_CANCELED
        700,  # USER_SESSION_LIMIT_EXCEEDED
        733,  # TABLE_IS_BEING_RESTARTED
        738,  # PART_IS_LOCKED
        745,  # SERVER_OVERLOADED
        749,  # TCP_CONNECTION_LIMIT_REACHED
        762,  # HTTP_CONNECTION_LIMIT_REACHED
        776,  # RESOURCE_LIMIT_EXCEEDED
        777,  # MEMORY_RESERVATION_KILLED
        778,  # MEMORY_RESERVATION_FAILED
        999,  # KEEPER_EXCEPTION
        1000,  # POCO_EXCEPTION (mostly network)
        1017,  # ASYNC_INSERT_FLUSH_TIMEOUT
        1019,  # QUERY_SLOT_ACQUISITION_TIMEOUT
        1020,  # MEMORY_RESERVATION_ACQUISITION_TIMEOUT
    }
)

# Only an operator can fix these; each maps to the fix the sink's log names.
_MIGRATE = "run `tracehouse migrate` against this ClickHouse (the schema is missing or older than the sink)"
_CREDENTIALS = "check TRACEHOUSE_CLICKHOUSE_URL / _USER / _PASSWORD and the user's grants (INSERT on the tables)"
CONFIGURATION_ERROR_CODES: dict[int, str] = {
    8: _MIGRATE,  # THERE_IS_NO_COLUMN
    10: _MIGRATE,  # NOT_FOUND_COLUMN_IN_BLOCK
    16: _MIGRATE,  # NO_SUCH_COLUMN_IN_TABLE
    20: _MIGRATE,  # NUMBER_OF_COLUMNS_DOESNT_MATCH
    47: _MIGRATE,  # UNKNOWN_IDENTIFIER
    60: _MIGRATE,  # UNKNOWN_TABLE
    81: _MIGRATE,  # UNKNOWN_DATABASE
    73: "upgrade ClickHouse: it does not know the insert format",  # UNKNOWN_FORMAT
    115: "upgrade ClickHouse or remove the setting: it does not know an insert setting",  # UNKNOWN_SETTING
    164: _CREDENTIALS + "; the user is read-only",  # READONLY
    192: _CREDENTIALS,  # UNKNOWN_USER
    193: _CREDENTIALS,  # WRONG_PASSWORD
    194: _CREDENTIALS,  # REQUIRED_PASSWORD
    195: _CREDENTIALS + "; the sink's IP address is not allowed",  # IP_ADDRESS_NOT_ALLOWED
    291: _CREDENTIALS,  # DATABASE_ACCESS_DENIED
    452: "an insert setting violates a settings profile constraint; relax it for the sink's user",
    472: "an insert setting is read-only for the sink's user; allow it in the user's profile",
    497: _CREDENTIALS,  # ACCESS_DENIED
    516: _CREDENTIALS,  # AUTHENTICATION_FAILED
    720: _CREDENTIALS + "; the user has expired",  # USER_EXPIRED
    774: "the table is permanently read-only; check the storage policy and disks",  # TABLE_IS_PERMANENTLY_READ_ONLY
}

TOO_MANY_PARTS = 252
_PARTITION_LIMIT = re.compile(r"too many partitions for single insert block", re.IGNORECASE)
_CODE = re.compile(r"Code: (\d+)")
_HTTP_STATUS = re.compile(r"HTTP status (\d{3})")


def error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = _CODE.search(str(exc))
    return int(match.group(1)) if match else None


def classify(exc: BaseException) -> ErrorKind:
    """The family of an insert's failure (see the module docstring)."""
    code = error_code(exc) if isinstance(exc, ClickHouseError) else None
    if code is not None:
        if code == TOO_MANY_PARTS and _PARTITION_LIMIT.search(str(exc)):
            return ErrorKind.PARTITIONS
        if code in CONTENT_ERROR_CODES:
            return ErrorKind.CONTENT
        if code in TRANSIENT_ERROR_CODES:
            return ErrorKind.TRANSIENT
        if code in CONFIGURATION_ERROR_CODES:
            return ErrorKind.CONFIGURATION
        return ErrorKind.UNKNOWN
    if isinstance(exc, OperationalError):  # no server answer: refused, reset, timed out
        return ErrorKind.TRANSIENT
    if isinstance(exc, ClickHouseError):  # an HTTP answer without a ClickHouse code (a proxy, a balancer)
        status = _HTTP_STATUS.search(str(exc))
        if status:
            http = int(status.group(1))
            if http in (401, 403):
                return ErrorKind.CONFIGURATION
            if http in (408, 429) or http >= 500:
                return ErrorKind.TRANSIENT
        return ErrorKind.UNKNOWN
    if isinstance(exc, (OSError, asyncio.TimeoutError)):  # ConnectionError is an OSError
        return ErrorKind.TRANSIENT
    return ErrorKind.UNKNOWN


def outcome(exc: BaseException) -> Outcome:
    """The failure as one of core.retry's classes (for `core.retry.retry`)."""
    return classify(exc).outcome


def fix_for(exc: BaseException) -> str:
    """What an operator must do about a CONFIGURATION failure."""
    code = error_code(exc)
    if code in CONFIGURATION_ERROR_CODES:
        return CONFIGURATION_ERROR_CODES[code]
    return _CREDENTIALS


def is_content_error(exc: BaseException) -> bool:
    """True when ClickHouse rejected the rows themselves (split the batch, dead-letter the bad rows)."""
    return classify(exc) is ErrorKind.CONTENT
