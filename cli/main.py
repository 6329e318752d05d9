"""The `tracehouse` command: one entry point, one subcommand per job.

Each subcommand imports what it needs only when it runs, so the base install (what an instrumented app
needs) can show help and run the light commands without the pipeline or sink extras. Flags mirror the
`TRACEHOUSE_*` environment variables.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tracehouse.core import settings as env
from tracehouse.core.config import DEFAULT_SINK_HEALTH_PORT, DEFAULT_WORKER_HEALTH_PORT, Settings


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        kafka_bootstrap=getattr(args, "kafka", None),
        clickhouse_url=getattr(args, "clickhouse", None),
        data_dir=getattr(args, "data_dir", None),
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kafka", metavar="HOST:PORT", help="Kafka bootstrap [TRACEHOUSE_KAFKA_BOOTSTRAP]")
    parser.add_argument("--clickhouse", metavar="URL", help="ClickHouse HTTP URL [TRACEHOUSE_CLICKHOUSE_URL]")
    parser.add_argument("--data-dir", type=Path, help="local data directory [TRACEHOUSE_DATA_DIR]")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _need(extra: str, module: str) -> None:
    """Fail with the install command when an optional part is missing, not with a traceback."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise SystemExit(f"this command needs the '{extra}' extra: pip install 'tracehouse[{extra}]'")


# ---- commands ---------------------------------------------------------------------------------


def cmd_clickhouse(args: argparse.Namespace) -> int:
    _need("embedded", "chdb")
    from tracehouse.infra.clickhouse.server import serve

    settings = _settings(args)
    target = settings.clickhouse
    serve(args.path or settings.clickhouse_data_dir, args.host or target.host, args.port or target.port)
    return 0


def cmd_kafka(args: argparse.Namespace) -> int:
    from tracehouse.infra.kafka_broker import fetch_kafka_jars, run_foreground

    if args.fetch_only:
        fetch_kafka_jars()
        return 0
    settings = _settings(args)
    return run_foreground(settings.data_dir / "kafka", args.port)


def cmd_migrate(args: argparse.Namespace) -> int:
    _need("sinks", "clickhouse_connect")
    import asyncio

    from tracehouse.core.kafka_security import kafka_client_options
    from tracehouse.core.topic_admin import TopicAdminError, ensure_topics
    from tracehouse.sinks.cluster import migrate_cluster
    from tracehouse.sinks.migrate import migrate

    settings = _settings(args)
    if not args.skip_topics:
        try:
            specs = settings.topic_specs()
            topics = asyncio.run(ensure_topics(settings.kafka_bootstrap, specs, security=kafka_client_options()))
        except (TopicAdminError, ValueError) as exc:
            raise SystemExit(f"tracehouse migrate: {exc}") from None
        created = ", ".join(topics.created) or "none (all exist)"
        print(
            f"kafka {settings.kafka_bootstrap}: topics {', '.join(s.name for s in specs)} "
            f"({settings.spans_partitions} partitions for spans and traces); created: {created}"
        )
    try:
        if args.cluster:
            run = migrate_cluster(
                settings.clickhouse, args.cluster, ttl_days=args.ttl_days, target_version=args.target_version
            )
        else:
            run = migrate(settings.clickhouse, ttl_days=args.ttl_days, target_version=args.target_version)
        report = asyncio.run(run)
    except ValueError as exc:
        raise SystemExit(f"tracehouse migrate: {exc}") from None
    applied = ", ".join(map(str, report.applied)) or "none (already current)"
    print(f"database {report.database}: schema version {report.current_version}; applied: {applied}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    _need("pipeline", "faust")
    from tracehouse.pipeline.worker import run_worker

    settings = _settings(args)
    health = {"worker_health_host": args.health_host, "worker_health_port": args.health_port}
    settings = replace(settings, **{k: v for k, v in health.items() if v is not None})
    return run_worker(settings, verbose=args.verbose)


def cmd_sink(args: argparse.Namespace) -> int:
    _need("sinks", "clickhouse_connect")
    from tracehouse.sinks.runner import run_sink

    metrics_port = args.metrics_port
    if metrics_port is None:
        metrics_port = env.get(env.SINK_METRICS_PORT)
    settings = _settings(args)
    health = {"sink_health_host": args.health_host, "sink_health_port": args.health_port}
    settings = replace(settings, **{k: v for k, v in health.items() if v is not None})
    return run_sink(
        settings,
        batch_rows=args.batch_rows,
        flush_interval_s=args.flush_interval,
        insert_lanes=args.insert_lanes if args.insert_lanes is not None else env.get(env.SINK_INSERT_LANES),
        metrics_port=metrics_port,
        metrics_host=env.get(env.SINK_METRICS_HOST),
    )


def cmd_receiver(args: argparse.Namespace) -> int:
    _need("receiver", "opentelemetry.proto")
    from tracehouse.producers.otlp.processes import run_receivers

    tokens = [t for t in (args.token or []) if t]
    host = args.host or env.get(env.RECEIVER_HOST)
    port = args.port or env.get(env.RECEIVER_PORT)
    return run_receivers(_settings(args), host, port, tokens, args.processes)


def cmd_up(args: argparse.Namespace) -> int:
    _need("embedded", "chdb")
    from tracehouse.infra.stack import run_up

    return run_up(_settings(args), partitions=args.partitions)


def cmd_demo(args: argparse.Namespace) -> int:
    _need("embedded", "chdb")
    from tracehouse.cli.demo import run_demo

    return run_demo(_settings(args), spans=args.spans, partitions=args.partitions, keep=args.keep)


def cmd_loadgen(args: argparse.Namespace) -> int:
    from tracehouse.cli.loadgen import run_loadgen

    return run_loadgen(
        _settings(args),
        rate=args.rate,
        duration=args.duration,
        error_ratio=args.error_ratio,
        prompt_bytes=args.prompt_bytes,
        seed=args.seed,
    )


def cmd_sql(args: argparse.Namespace) -> int:
    _need("sinks", "clickhouse_connect")
    from tracehouse.cli.reading import run_sql

    return run_sql(_settings(args), args.sql)


def cmd_query(args: argparse.Namespace) -> int:
    _need("cli", "rich")
    if not (args.list or args.sql or not args.name):
        _need("sinks", "clickhouse_connect")
    from tracehouse.cli.query import main_query

    return main_query(_settings(args), args)


def cmd_trace(args: argparse.Namespace) -> int:
    _need("cli", "rich")
    _need("sinks", "clickhouse_connect")
    from tracehouse.cli.trace_view import main_trace

    return main_trace(_settings(args), args)


def cmd_session(args: argparse.Namespace) -> int:
    _need("cli", "rich")
    _need("sinks", "clickhouse_connect")
    from tracehouse.cli.session_view import main_session

    return main_session(_settings(args), args)


def cmd_alerts(args: argparse.Namespace) -> int:
    _need("cli", "rich")
    _need("sinks", "clickhouse_connect")
    from tracehouse.cli.alerts import main_alerts

    return main_alerts(_settings(args), args)


def cmd_top(args: argparse.Namespace) -> int:
    _need("cli", "rich")
    _need("sinks", "clickhouse_connect")
    from tracehouse.cli.top import main_top

    return main_top(_settings(args), args)


def cmd_web(args: argparse.Namespace) -> int:
    _need("web", "clickhouse_connect")
    from tracehouse.web.app import run_web

    host = args.host or env.get(env.WEB_HOST)
    port = args.port if args.port is not None else env.get(env.WEB_PORT)
    return run_web(_settings(args), host, port)


def cmd_reprice(args: argparse.Namespace) -> int:
    _need("sinks", "clickhouse_connect")
    import time

    from tracehouse.cli.reprice import main_reprice
    from tracehouse.core.pricing import PriceFileError, configured_prices, load_price_file
    from tracehouse.read.times import TIME_FORMS, time_ns

    since_ns = time_ns(args.since, time.time_ns())
    if since_ns is None:
        raise SystemExit(f"tracehouse reprice: --since {args.since!r} is not {TIME_FORMS}")
    try:
        prices = load_price_file(args.prices) if args.prices else configured_prices()
    except PriceFileError as exc:
        raise SystemExit(f"tracehouse reprice: {exc}") from None
    return main_reprice(_settings(args).clickhouse, prices, since_ns, args)


def cmd_replay(args: argparse.Namespace) -> int:
    _need("pipeline", "faust")
    from tracehouse.cli.replay_view import run_replay

    return run_replay(args, _settings(args))


def cmd_config(args: argparse.Namespace) -> int:
    from tracehouse.cli.config_view import print_config

    flags = {
        env.KAFKA_BOOTSTRAP.name: args.kafka,
        env.CLICKHOUSE_URL.name: args.clickhouse,
        env.DATA_DIR.name: str(args.data_dir) if args.data_dir else None,
    }
    return print_config(as_json=args.json, flags=flags)


COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
    "up": ("run the whole local stack in the foreground until Ctrl-C", cmd_up),
    "demo": ("start what is missing, send realistic traffic, answer the six questions, exit", cmd_demo),
    "worker": ("run a stream-processing worker (Faust)", cmd_worker),
    "sink": ("run the ClickHouse sink", cmd_sink),
    "receiver": ("run the OTLP/HTTP receiver (POST /v1/traces, protobuf and JSON)", cmd_receiver),
    "clickhouse": ("serve the embedded ClickHouse engine over ClickHouse's HTTP interface", cmd_clickhouse),
    "kafka": ("run a real Apache Kafka broker (KRaft) locally; needs Java 17", cmd_kafka),
    "migrate": ("create the Kafka topics and create or upgrade the ClickHouse schema (idempotent)", cmd_migrate),
    "loadgen": ("send realistic LLM traces at a chosen rate (RAG, agents, chat sessions)", cmd_loadgen),
    "sql": ("run one SQL statement against ClickHouse and print the result", cmd_sql),
    "query": ("run a named query (the six questions); --list shows them, --sql prints one", cmd_query),
    "trace": ("show one trace: span tree as a waterfall, LLM parameters, prompts, documents, errors", cmd_trace),
    "session": ("show one conversation: each turn's time, input, output, tokens, cost and scores", cmd_session),
    "alerts": ("alerts firing now and recent alert state changes", cmd_alerts),
    "top": ("live rollups: spans/s, p95 latency, error rate, tokens and cost per service and model", cmd_top),
    "web": ("the trace explorer in a browser: traces, sessions, waterfall, span details, charts, alerts", cmd_web),
    "config": ("every TRACEHOUSE_* setting with its value and where it came from (secrets masked)", cmd_config),
    "reprice": ("recompute stored costs (spans, traces, rollups) with the current price table", cmd_reprice),
    "replay": ("re-derive traces and rollups of a time range from the Kafka span log; --dlq: re-admit", cmd_replay),
}


def _query_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="query name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the queries, their parameters and SQL files")
    parser.add_argument("--sql", action="store_true", help="print the query's SQL instead of running it")
    parser.add_argument("--since", help="time range, e.g. 15m, 1h, 7d (queries with since_seconds)")
    parser.add_argument("--limit", type=int, help="at most this many rows (queries with limit)")
    parser.add_argument("--trace", metavar="ID", help="trace id (queries with trace_id)")
    parser.add_argument("--by", choices=("model", "service", "kind", "name"), help="group by (queries with by)")
    parser.add_argument(
        "-p", "--param", action="append", metavar="NAME=VALUE", help="any other parameter, e.g. -p kind=LLM"
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="rows as one JSON array of objects")
    out.add_argument("--jsonl", action="store_true", help="rows as JSON lines, one object per line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracehouse", description="Tracing pipeline for LLM applications: Kafka -> Faust -> ClickHouse."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parsers: dict[str, argparse.ArgumentParser] = {}
    for name, (help_text, func) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        p.set_defaults(func=func)
        parsers[name] = p

    parsers["clickhouse"].add_argument("--host", help="address to bind (default: from the ClickHouse URL)")
    parsers["clickhouse"].add_argument("--port", type=int, help="port (default: from the ClickHouse URL)")
    parsers["clickhouse"].add_argument("--path", type=Path, help="data directory (default: DATA_DIR/clickhouse)")
    parsers["receiver"].add_argument("--host", help="address to bind [TRACEHOUSE_RECEIVER_HOST, 127.0.0.1]")
    parsers["receiver"].add_argument("--port", type=int, help="port [TRACEHOUSE_RECEIVER_PORT, 4318]")
    parsers["receiver"].add_argument(
        "--token", action="append", help="accepted bearer token (repeatable) [TRACEHOUSE_RECEIVER_TOKENS]"
    )
    parsers["receiver"].add_argument(
        "--processes", type=int, default=1, help="receiver processes sharing the port (SO_REUSEPORT) [1]"
    )
    parsers["web"].add_argument("--host", help="address to bind [TRACEHOUSE_WEB_HOST, 127.0.0.1]")
    parsers["web"].add_argument(
        "--port", type=int, default=None, help="port, 0 for any free one [TRACEHOUSE_WEB_PORT, 8787]"
    )
    parsers["kafka"].add_argument("--port", type=int, default=9092)
    parsers["kafka"].add_argument("--fetch-only", action="store_true", help="only fetch the broker's jars")
    parsers["migrate"].add_argument("--ttl-days", type=int, default=None, help="keep spans this many days")
    parsers["migrate"].add_argument(
        "--skip-topics", action="store_true", help="only the ClickHouse schema (your platform manages the topics)"
    )
    parsers["migrate"].add_argument(
        "--cluster",
        metavar="NAME",
        help="ClickHouse cluster: ON CLUSTER DDL, Replicated *_local tables under Distributed tables",
    )
    for name in ("worker", "sink"):
        upper = name.upper()
        parsers[name].add_argument(
            "--health-host", help=f"address of the health endpoints [TRACEHOUSE_{upper}_HEALTH_HOST, 127.0.0.1]"
        )
        parsers[name].add_argument(
            "--health-port",
            type=int,
            help=f"port of /health/live and /health/ready, 0 for none [TRACEHOUSE_{upper}_HEALTH_PORT, "
            f"{DEFAULT_WORKER_HEALTH_PORT if name == 'worker' else DEFAULT_SINK_HEALTH_PORT}]",
        )
    parsers["sink"].add_argument("--batch-rows", type=int, default=50_000)
    parsers["sink"].add_argument("--flush-interval", type=float, default=1.0, help="seconds")
    parsers["sink"].add_argument(
        "--insert-lanes",
        type=int,
        default=None,
        help="concurrent inserts under a backlog, each for its share of the partitions [TRACEHOUSE_SINK_INSERT_LANES]",
    )
    parsers["sink"].add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics here [TRACEHOUSE_SINK_METRICS_PORT]"
    )
    for name in ("up", "demo"):
        parsers[name].add_argument("--partitions", type=int, default=None, help="partitions of tracehouse.spans")
    parsers["demo"].add_argument("--spans", type=int, default=5000, help="how many spans to send")
    parsers["demo"].add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    parsers["sql"].add_argument("sql", help="the statement")
    parsers["loadgen"].add_argument("--rate", type=float, default=1000.0, help="spans per second")
    parsers["loadgen"].add_argument("--duration", type=float, default=30.0, help="seconds")
    parsers["loadgen"].add_argument("--error-ratio", type=float, default=0.03, help="share of rate-limited LLM calls")
    parsers["loadgen"].add_argument("--prompt-bytes", type=int, default=1024, help="size of each prompt")
    parsers["loadgen"].add_argument("--seed", type=int, default=None, help="repeatable traffic")
    parsers["migrate"].add_argument(
        "--target-version", type=int, default=None, help="stop at this schema version (default: the latest)"
    )
    _query_arguments(parsers["query"])
    parsers["trace"].add_argument("trace_id", metavar="ID", help="trace id (32 hex digits)")
    parsers["trace"].add_argument("--json", action="store_true", help="the tree and its details as JSON")
    parsers["session"].add_argument("session_id", metavar="ID", help="session id (the traces' session_id)")
    parsers["session"].add_argument("--json", action="store_true", help="the turns as JSON (the web API's shape)")
    parsers["session"].add_argument(
        "--max-chars", type=int, default=2000, help="cut each turn's input and output to this many characters"
    )
    parsers["alerts"].add_argument("--since", default="24h", help="recent alerts from this long ago (default 24h)")
    parsers["alerts"].add_argument("--limit", type=int, default=None, help="at most this many recent alerts")
    parsers["alerts"].add_argument("--json", action="store_true", help='{"firing": [...], "recent": [...]} as JSON')
    parsers["top"].add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="seconds between refreshes (default 2)"
    )
    parsers["top"].add_argument(
        "--window", default="1m", help="the range each refresh covers, e.g. 30s, 1m, 15m (default 1m)"
    )
    parsers["top"].add_argument(
        "--by",
        default="service,model",
        choices=("service", "model", "service,model"),
        metavar="service|model|service,model",
        help="group by (default service,model)",
    )
    parsers["top"].add_argument("--once", action="store_true", help="print one table and exit")
    parsers["top"].add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    parsers["config"].add_argument("--json", action="store_true", help="the settings as a JSON array")
    parsers["reprice"].add_argument("--since", default="7d", help="spans that started since: 7d, 24h or a time")
    parsers["reprice"].add_argument("--model", help="only this model (as stored in spans.model)")
    parsers["reprice"].add_argument("--prices", type=Path, help="the price file [TRACEHOUSE_PRICES; unset: built-in]")
    parsers["reprice"].add_argument("--dry-run", action="store_true", help="print the summary, write nothing")
    parsers["replay"].add_argument(
        "--from", dest="from_time", required=True, help="records Kafka received from: 2h, 1d or a time"
    )
    parsers["replay"].add_argument("--to", dest="to_time", help="... until (default: now)")
    parsers["replay"].add_argument(
        "--no-rollups", action="store_true", help="re-derive traces only, not the rollups of the range's inner windows"
    )
    parsers["replay"].add_argument(
        "--dlq", action="store_true", help="re-admit the dead letters of the range whose spans now pass"
    )
    parsers["replay"].add_argument(
        "--to-table",
        metavar="NAME",
        help="write the traces into table NAME and the rollups into NAME_rollups (created AS traces / rollups) "
        "instead of publishing them on Kafka, to compare with what is stored",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("aiokafka", "faust", "mode", "urllib3", "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: one line and what to run, not a traceback
        if args.verbose:
            raise
        print(f"tracehouse {args.command}: {one_line_error(exc)}", file=sys.stderr)
        return 1


def one_line_error(exc: BaseException) -> str:
    """The first line of an error, with the command that most likely fixes it (`-v` shows the traceback)."""
    text = " ".join(str(exc).strip().splitlines()[:1]) or type(exc).__name__
    if len(text) > 300:
        text = text[:299] + "…"
    lowered = str(exc).lower()
    if "unknown_database" in lowered or "unknown_table" in lowered or "doesn't exist" in lowered:
        hint = "the schema is missing: run `tracehouse migrate` (or `tracehouse up`, which runs it)"
    elif isinstance(exc, (ConnectionError, TimeoutError)) or any(
        marker in lowered for marker in ("connection refused", "failed to establish", "unable to bootstrap",
                                         "kafkaconnectionerror", "name or service not known", "while starting on")
    ):  # fmt: skip
        hint = "nothing answers there: start the stack with `tracehouse up` (or check --kafka / --clickhouse)"
    else:
        hint = "run again with -v for the traceback"
    return f"{type(exc).__name__}: {text} ({hint})"


if __name__ == "__main__":
    sys.exit(main())
