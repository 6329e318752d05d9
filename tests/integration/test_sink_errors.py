"""Every ClickHouse failure is classified (sinks/errors.py), and the sink acts on each family.

Against the real engine where it produces the error: an insert into a missing table or database, a
missing column, a value of the wrong type, a closed port, too many partitions for one block. For codes
the embedded engine cannot be made to produce (a server out of memory, Keeper away, a wrong password),
the classifier is checked on the exceptions clickhouse-connect raises for them. Then the sink end to end:
a poison row that fails with an unclassified error is retried a bounded number of times and then
dead-lettered alone, while the rest of its batch lands.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError
from dead_letters import read_dead_letters
from test_sink_dead_letters import SinkThread, start_group_at_end
from waiting import wait_until

from tracehouse.core.config import Settings
from tracehouse.core.schema import Span
from tracehouse.producers.transport import SpanTransport
from tracehouse.sinks.clickhouse import async_client, sync_client
from tracehouse.sinks.errors import ErrorKind, classify, fix_for
from tracehouse.sinks.migrate import migrate
from tracehouse.sinks.sink import Sink, SinkOptions


async def _lines(*lines: bytes) -> AsyncIterator[bytes]:
    for line in lines:
        yield line


async def _insert_error(
    settings: Settings, table: str, body: bytes, columns: list[str] | None = None, **settings_: object
) -> BaseException | None:
    """What the real server answers to one raw insert (None: it stored it)."""
    client = await async_client(settings.clickhouse, database=None)
    try:
        await client.raw_insert(
            table, column_names=columns, insert_block=_lines(body), fmt="JSONEachRow", settings=settings_ or None
        )
    except Exception as exc:
        return exc
    finally:
        await client.close()
    return None


def test_real_clickhouse_answers_are_classified(settings: Settings) -> None:
    asyncio.run(migrate(settings.clickhouse))
    db = settings.clickhouse.database
    admin = sync_client(settings.clickhouse)
    admin.command("CREATE TABLE days (d Date, n UInt8) ENGINE = MergeTree PARTITION BY d ORDER BY n")

    missing_table = asyncio.run(_insert_error(settings, f"`{db}`.no_such_table", b'{"a": 1}\n'))
    assert missing_table is not None and classify(missing_table) is ErrorKind.CONFIGURATION, missing_table
    assert "tracehouse migrate" in fix_for(missing_table)

    missing_db = asyncio.run(_insert_error(settings, "`no_such_database_x`.spans", b'{"a": 1}\n'))
    assert missing_db is not None and classify(missing_db) is ErrorKind.CONFIGURATION, missing_db

    # The sink names its columns: a table older than the sink lacks one
    missing_column = asyncio.run(
        _insert_error(settings, f"`{db}`.days", b'{"d": "2026-01-01", "n": 1, "gone": 2}\n', columns=["d", "n", "gone"])
    )
    assert missing_column is not None and classify(missing_column) is ErrorKind.CONFIGURATION, missing_column

    bad_value = asyncio.run(_insert_error(settings, f"`{db}`.days", b'{"d": "2026-01-01", "n": "not a number"}\n'))
    assert bad_value is not None and classify(bad_value) is ErrorKind.CONTENT, bad_value

    too_many = asyncio.run(
        _insert_error(
            settings,
            f"`{db}`.days",
            b"".join(b'{"d": "2026-01-%02d", "n": 1}\n' % day for day in range(1, 6)),
            max_partitions_per_insert_block=2,
        )
    )
    stored = admin.command("SELECT count() FROM days")
    admin.close()
    if too_many is None:
        # The embedded engine's streaming insert answers success for a refused block (issue 11, item 3);
        # the sink never sends one (tests/integration/test_sink_timestamps.py), and the server is being fixed to say so.
        assert stored in (0, 5)
        pytest.skip("the embedded server did not report the refused block (252); classified below on its text")
    assert classify(too_many) is ErrorKind.PARTITIONS, too_many

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = Settings.from_env(clickhouse_url=f"http://127.0.0.1:{port}", clickhouse_database=db)

    async def refused() -> BaseException | None:
        try:
            await async_client(closed.clickhouse, connect_timeout=2)
        except Exception as exc:
            return exc
        return None

    exc = asyncio.run(refused())
    assert exc is not None and classify(exc) is ErrorKind.TRANSIENT, exc


def _server_error(code: int, message: str = "something") -> DatabaseError:
    """The exception clickhouse-connect raises for an HTTP error answer with X-ClickHouse-Exception-Code."""
    return DatabaseError(
        f"Received ClickHouse exception, code: {code}, server response: Code: {code}. DB::Exception: {message}",
        code=code,
    )


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        (
            252,
            "Too many parts (300 with average size of 1.00 MiB) in table. Merges are processing significantly "
            "slower than inserts. (TOO_MANY_PARTS)",
            ErrorKind.TRANSIENT,
        ),
        (
            252,
            "Too many partitions for single INSERT block (more than 100). The limit is controlled by "
            "'max_partitions_per_insert_block' setting. (TOO_MANY_PARTS)",
            ErrorKind.PARTITIONS,
        ),
        (202, "Too many simultaneous queries. Maximum: 100. (TOO_MANY_SIMULTANEOUS_QUERIES)", ErrorKind.TRANSIENT),
        (241, "Memory limit (total) exceeded (MEMORY_LIMIT_EXCEEDED)", ErrorKind.TRANSIENT),
        (159, "Timeout exceeded: elapsed 30 seconds (TIMEOUT_EXCEEDED)", ErrorKind.TRANSIENT),
        (209, "Timeout exceeded while reading from socket (SOCKET_TIMEOUT)", ErrorKind.TRANSIENT),
        (210, "Connection reset by peer (NETWORK_ERROR)", ErrorKind.TRANSIENT),
        (242, "Table is in readonly mode (TABLE_IS_READ_ONLY)", ErrorKind.TRANSIENT),
        (999, "Coordination::Exception: Connection loss (KEEPER_EXCEPTION)", ErrorKind.TRANSIENT),
        (394, "Query was cancelled: server is shutting down (QUERY_WAS_CANCELLED)", ErrorKind.TRANSIENT),
        (243, "Cannot reserve 1.00 MiB, not enough space (NOT_ENOUGH_SPACE)", ErrorKind.TRANSIENT),
        (60, "Table tracehouse.spans does not exist (UNKNOWN_TABLE)", ErrorKind.CONFIGURATION),
        (81, "Database tracehouse does not exist (UNKNOWN_DATABASE)", ErrorKind.CONFIGURATION),
        (16, "No such column x in table (NO_SUCH_COLUMN_IN_TABLE)", ErrorKind.CONFIGURATION),
        (47, "Unknown expression identifier (UNKNOWN_IDENTIFIER)", ErrorKind.CONFIGURATION),
        (516, "default: Authentication failed (AUTHENTICATION_FAILED)", ErrorKind.CONFIGURATION),
        (164, "Cannot execute query in readonly mode (READONLY)", ErrorKind.CONFIGURATION),
        (497, "Not enough privileges (ACCESS_DENIED)", ErrorKind.CONFIGURATION),
        (27, "Cannot parse input: expected ',' (CANNOT_PARSE_INPUT_ASSERTION_FAILED)", ErrorKind.CONTENT),
        (53, "Type mismatch (TYPE_MISMATCH)", ErrorKind.CONTENT),
        (469, "Constraint `c` is violated (VIOLATED_CONSTRAINT)", ErrorKind.CONTENT),
        (
            395,
            "Value passed to 'throwIf' function is non-zero (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO)",
            ErrorKind.UNKNOWN,
        ),
        (49, "Logical error (LOGICAL_ERROR)", ErrorKind.UNKNOWN),
    ],
)
def test_server_error_codes_are_classified(code: int, message: str, kind: ErrorKind) -> None:
    assert classify(_server_error(code, message)) is kind
    # The same answer after the driver retried the request arrives as an OperationalError with the code.
    assert classify(OperationalError(str(_server_error(code, message)), code=code)) is kind


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (OperationalError("Network Error: Cannot connect to host 127.0.0.1:8123"), ErrorKind.TRANSIENT),
        (ConnectionResetError(104, "Connection reset by peer"), ErrorKind.TRANSIENT),
        (ConnectionRefusedError(111, "Connection refused"), ErrorKind.TRANSIENT),
        (asyncio.TimeoutError(), ErrorKind.TRANSIENT),
        (
            DatabaseError("HTTP driver received HTTP status 503, server response: no healthy upstream"),
            ErrorKind.TRANSIENT,
        ),
        (DatabaseError("HTTP driver received HTTP status 429"), ErrorKind.TRANSIENT),
        (DatabaseError("HTTP driver received HTTP status 401"), ErrorKind.CONFIGURATION),
        (DatabaseError("HTTP driver received HTTP status 400, server response: ???"), ErrorKind.UNKNOWN),
        (ProgrammingError("The client has been closed"), ErrorKind.UNKNOWN),
        (ValueError("anything else"), ErrorKind.UNKNOWN),
    ],
)
def test_failures_without_a_server_code_are_classified(exc: BaseException, kind: ErrorKind) -> None:
    assert classify(exc) is kind


def test_an_unclassified_error_is_retried_a_bounded_number_of_times_then_its_row_is_dead_lettered(
    settings: Settings,
) -> None:
    """A column default an operator changed on `spans` throws for one span (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO,
    395: no family of its own), so ClickHouse refuses every block that holds it. The sink retries the batch
    a bounded number of times, then splits it like bad content: the poison row goes to the DLQ with
    ClickHouse's reason, every other span lands once."""
    asyncio.run(migrate(settings.clickhouse))
    admin = sync_client(settings.clickhouse)
    admin.command(
        "ALTER TABLE spans MODIFY COLUMN ingested_at DateTime64(3)"
        " DEFAULT now64(3) + toIntervalSecond(throwIf(name = 'poison', 'a poison span'))"
    )
    asyncio.run(start_group_at_end(settings))
    run = settings.sink_group
    now = time.time_ns()
    trace = os.urandom(16).hex()

    def span(name: str, i: int) -> Span:
        return Span(
            trace_id=trace,
            span_id=os.urandom(8).hex(),
            name=name,
            start_time_ns=now + i,
            end_time_ns=now + i + 1000,
            resource={"test.run": run},
        )

    spans = [span("poison" if i == 17 else "fine", i) for i in range(50)]
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    assert transport.submit_many(spans) == len(spans)
    assert transport.flush(30)
    transport.shutdown()

    def stored() -> int:
        return int(
            admin.command(
                "SELECT count() FROM spans WHERE resource_attributes['test.run'] = {r:String}", parameters={"r": run}
            )
        )

    options = SinkOptions(group_id=settings.sink_group, gc_freeze=False, retry_initial_s=0.05, retry_max_s=0.2)
    with SinkThread(Sink(settings, options)) as sink:
        landed = wait_until(lambda: stored() >= 49 and sink.stats.dead_letters >= 1, timeout=90)
        assert landed, (stored(), sink.stats)
        time.sleep(1.0)
    assert stored() == 49
    assert sink.stats.retries >= 6  # retried, bounded, before splitting
    poison = spans[17].span_id.encode()
    letters = asyncio.run(read_dead_letters(settings, lambda d: d.stage == "sink" and poison in d.payload, 1))
    assert len(letters) == 1 and "Code: 395" in letters[0].reason, letters
    admin.close()


def test_a_configuration_error_holds_the_data_in_kafka_until_it_is_fixed(settings: Settings, caplog) -> None:
    """An operator drops a column the sink writes (NO_SUCH_COLUMN_IN_TABLE, 16): no retry can fix that, so
    the sink logs what to do and waits, keeping everything in Kafka; once the column is back, every span
    lands, once."""
    asyncio.run(migrate(settings.clickhouse))
    admin = sync_client(settings.clickhouse)
    admin.command("ALTER TABLE spans DROP COLUMN finish_reason")
    asyncio.run(start_group_at_end(settings))
    run = settings.sink_group
    now = time.time_ns()
    spans = [
        Span(
            trace_id=os.urandom(16).hex(),
            span_id=os.urandom(8).hex(),
            name="waits",
            start_time_ns=now + i,
            end_time_ns=now + i + 1000,
            resource={"test.run": run},
        )
        for i in range(30)
    ]
    transport = SpanTransport(settings.kafka_bootstrap, linger_s=0.01)
    assert transport.submit_many(spans) == len(spans)
    assert transport.flush(30)
    transport.shutdown()

    def stored() -> int:
        return int(
            admin.command(
                "SELECT count() FROM spans WHERE resource_attributes['test.run'] = {r:String}", parameters={"r": run}
            )
        )

    options = SinkOptions(group_id=settings.sink_group, gc_freeze=False, retry_initial_s=0.05, retry_max_s=0.5)
    with caplog.at_level("ERROR", logger="tracehouse.sink"), SinkThread(Sink(settings, options)) as sink:
        assert wait_until(lambda: sink.stats.retries >= 5, timeout=60), sink.stats
        assert stored() == 0 and sink.stats.dead_letters == 0  # nothing dead-lettered: it is not the data
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.name == "tracehouse.sink"]
        assert len(errors) == 1, errors  # loud, and once a minute at most
        assert "tracehouse migrate" in errors[0] and "spans" in errors[0]
        admin.command("ALTER TABLE spans ADD COLUMN finish_reason LowCardinality(String) AFTER output_messages")
        assert wait_until(lambda: stored() >= len(spans), timeout=60), stored()
        time.sleep(1.0)
    assert stored() == len(spans)
    admin.close()
