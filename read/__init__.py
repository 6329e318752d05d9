"""The read side: what the terminal (`tracehouse query`, `trace`, `session`) and the web explorer's JSON API
read from ClickHouse, in one place, so the two cannot disagree.

- `sql/*.sql`: every named query (one SQL set, one loader: `queries.py`);
- `times.py`: durations such as "15m" and ISO-8601 times, parsed and printed one way;
- `models.py`: the read model, msgspec Structs (`TraceView`, `SpanView`, `SessionView`, ...) that the CLI's
  `--json` prints and the API answers (and whose JSON Schema is the OpenAPI document's);
- `tree.py`: a trace's spans in display order (depth, orphans, parent loops);
- `shape.py`: query rows -> the read model (pure functions);
- `traces.py`, `sessions.py`: one trace, one session, from their queries to their view.

Nothing here writes: the sinks (tracehouse.sinks) are the write side.
"""
