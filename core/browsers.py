"""What only a web page sends: the one rule by which tracehouse's local HTTP servers refuse browsers.

A server on 127.0.0.1 is reachable by every web page its user opens: a browser delivers a cross-site
`text/plain` POST (a CORS "simple request") without asking the server first, and a page whose DNS name
is re-pointed at 127.0.0.1 ("DNS rebinding") even counts as same-origin. API clients (curl, SDKs,
clickhouse-connect, Grafana) send no `Origin` header, so refusing what carries browser marks costs them
nothing. The web explorer (`web/app.py`, for requests with a body) and the embedded ClickHouse server
(`infra/clickhouse/access.py`, for every request) both ask `browser_refusal`; each answers in its own
error form.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["SIMPLE_CONTENT_TYPES", "browser_refusal", "host_name", "is_loopback"]

# What a page may send cross-site without a CORS preflight.
SIMPLE_CONTENT_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_loopback(host: str) -> bool:
    """A loopback name or address (`localhost`, 127.0.0.0/8, ::1)."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(netloc: str) -> str:
    """The host of `host[:port]` or `[v6][:port]`, lowercased and without brackets ("" if unparsable)."""
    try:
        return (urlsplit(f"//{netloc}").hostname or "").lower()
    except ValueError:
        return ""


def _same_origin(origin: str, request_host: str) -> bool:
    """Whether a browser's `Origin` (scheme://host[:port], no default port) names the `Host` asked."""
    scheme, _, authority = origin.partition("://")
    return scheme in ("http", "https") and authority.lower() == request_host.lower()


def browser_refusal(method: str, headers: Mapping[str, str], content_type: str, listen_host: str) -> str | None:
    """Why a request is refused as one a web page made a browser send, or None.

    In order: a server listening on a loopback address answers only to loopback `Host` names (DNS
    rebinding); `Sec-Fetch-Site: cross-site|same-site` is another site's page; an `Origin` that is not
    the `Host` asked is another page; and a write carrying an `Origin` with a simple content type is what
    a page sends without asking, even from our own origin (our pages send JSON)."""
    request_host = headers.get("Host")
    if is_loopback(listen_host) and request_host is not None and not is_loopback(host_name(request_host)):
        return (
            f"Host {request_host[:200]!r} is not this server: a server listening on {listen_host} answers only "
            "to loopback names (a web page's name pointing at it is refused)"
        )
    fetch_site = headers.get("Sec-Fetch-Site")
    if fetch_site in ("cross-site", "same-site"):
        return f"a request from another site's page is refused (Sec-Fetch-Site: {fetch_site})"
    origin = headers.get("Origin")
    if origin is None:
        return None  # not a browser: API clients and scripts send no Origin
    if request_host is None or not _same_origin(origin, request_host):
        return (
            f"a request from origin {origin[:200]!r} is refused: Origin is not this server "
            f"({(request_host or '')[:200]}); API clients send no Origin header, web pages do"
        )
    if method in _WRITES and content_type in SIMPLE_CONTENT_TYPES:
        return (
            f"a browser request with a {content_type} body is refused: a web page sends that without asking "
            "(send application/json or application/octet-stream)"
        )
    return None
