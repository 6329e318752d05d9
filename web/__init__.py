"""tracehouse.web: the trace explorer in a browser — a JSON API over the ClickHouse tables and a
single-page UI (static HTML, CSS and JavaScript modules; no build step) served by one aiohttp process.

`tracehouse web` runs it; `create_app(settings)` builds it for embedding and tests.
"""
