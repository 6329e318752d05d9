"""`tracehouse alerts`: what is firing now, then the recent alert state changes.

Two named queries, both over `alerts FINAL` (the sink may store a redelivered alert twice until merge):
`alerts-firing` (each rule and group whose latest state change is 'firing', however long ago it fired;
an alert stays firing until the worker resolves it, so the time range must not hide it) and `alerts`
(every change since `--since`). `--json` prints both as one object for scripts and cron checks.
"""

from __future__ import annotations

from typing import Any

from tracehouse.cli.query import (
    build_request,
    clickhouse_errors,
    emit_json,
    guarded,
    make_console,
    print_table,
    records,
    run,
)
from tracehouse.core.config import Settings

# The table leaves out the evaluated window (the JSON output and `tracehouse query alerts` have it).
RECENT_COLUMNS = ("fired_at", "state", "severity", "rule", "service", "group", "value", "threshold", "message")


def show_alerts(settings: Settings, *, since: str = "24h", limit: int | None = None, as_json: bool = False) -> int:
    from tracehouse.cli.reading import clickhouse_for_reading

    firing_request = build_request("alerts-firing")
    recent_request = build_request("alerts", since=since, limit=limit)
    with clickhouse_errors(settings), clickhouse_for_reading(settings) as client:
        firing_columns, firing = run(client, firing_request)
        recent_columns, recent = run(client, recent_request)
    if as_json:
        emit_json({"firing": records(firing_columns, firing), "recent": records(recent_columns, recent)})
        return 0
    console = make_console()
    if firing:
        print_table(console, f"Firing now ({len(firing)})", firing_columns, firing)
    else:
        console.print("[bold green]No alert is firing.[/]")
    console.print()
    if recent:
        shown = [recent_columns.index(c) for c in RECENT_COLUMNS if c in recent_columns]
        rows = [[row[i] for i in shown] for row in recent]
        print_table(console, f"Alert state changes in the last {since}", [recent_columns[i] for i in shown], rows)
    else:
        console.print(f"No alert state changes in the last {since}.")
    return 0


def main_alerts(settings: Settings, args: Any) -> int:
    return guarded(show_alerts, settings, since=args.since, limit=args.limit, as_json=args.json)
