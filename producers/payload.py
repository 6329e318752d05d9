"""Turning application values into the strings a span carries, cheaply and without ever raising.

Inputs, outputs and attribute values can be anything an app passes around: strings, dicts, pydantic
models, numpy arrays, clients. The SDK stores them as text (JSON for structured values, via msgspec, the
fastest encoder available), truncates text above a byte budget with a visible marker instead of dropping
it (Langfuse's 413s lost whole payloads), and replaces what cannot be encoded with its `repr`. Nothing here
may raise into the application: every failure degrades to a smaller, still-readable string.

Cost model: a short ASCII `str` (the common prompt) costs two O(1) checks (`str.isascii` reads a flag
CPython keeps on every string), so a 1 KB prompt passes in well under a microsecond.
"""

from __future__ import annotations

from typing import Any

import msgspec

DEFAULT_MAX_PAYLOAD_BYTES = 32 * 1024
SHORT_TEXT_CHARS = 1024  # the schema's ShortText/Name limit; longer values would be rejected downstream


def truncation_marker(dropped_bytes: int) -> str:
    """The text appended where a payload was cut, so a reader sees that (and how much) is missing."""
    return f"…[truncated {dropped_bytes} bytes]"


def _fallback(obj: Any) -> Any:
    """msgspec's hook for types it does not know: pydantic models as their dict, anything else as repr."""
    dump = getattr(obj, "model_dump", None)  # pydantic v2 (openai, anthropic response objects)
    if callable(dump):
        try:
            return dump(mode="json")
        except Exception:
            pass
    as_dict = getattr(obj, "_asdict", None)  # namedtuple-likes that msgspec did not catch
    if callable(as_dict):
        try:
            return as_dict()
        except Exception:
            pass
    return safe_repr(obj)


_json = msgspec.json.Encoder(enc_hook=_fallback)


def safe_repr(obj: object) -> str:
    """`repr` that cannot raise (some reprs do) and never holds a lone surrogate."""
    try:
        text = repr(obj)
    except Exception:
        return f"<{type(obj).__qualname__} object>"
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def fit(text: str, limit: int) -> tuple[str, int]:
    """Return `text` cut to at most `limit` UTF-8 bytes plus a marker, and its original size in bytes.

    The second value is 0 when nothing was cut (the usual case, answered without encoding for ASCII).
    Strings holding lone surrogates (which msgpack cannot encode and would take a whole batch down)
    come back with those replaced.
    """
    if text.isascii():
        size = len(text)
        if size <= limit:
            return text, 0
        return text[:limit] + truncation_marker(size - limit), size
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "replace")
        text = data.decode("utf-8")
    size = len(data)
    if size <= limit:
        return text, 0
    kept = data[:limit].decode("utf-8", "ignore")  # never split a character
    return kept + truncation_marker(size - len(kept.encode("utf-8"))), size


def to_json_text(value: Any) -> str:
    """JSON text of any value; unknown types go through `_fallback`, and on failure the value's repr."""
    try:
        return _json.encode(value).decode("utf-8")
    except Exception:
        return safe_repr(value)


def to_text(value: Any, limit: int) -> tuple[str, int]:
    """A payload as span text: `str` kept as is, `None` as "", anything else as JSON; then `fit`."""
    if type(value) is str:
        return fit(value, limit)
    if value is None:
        return "", 0
    return fit(to_json_text(value), limit)


def attr_text(value: Any, limit: int) -> str:
    """An attribute value as a string: str as is, bools as true/false, numbers via str, others JSON."""
    kind = type(value)
    if kind is str:
        if value.isascii() and len(value) <= limit:
            return value
        return fit(value, limit)[0]
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value)
    if value is None:
        return ""
    return fit(to_json_text(value), limit)[0]


def short(value: Any) -> str:
    """A ShortText field (model, role, session id, ...) cut to the schema's 1024 characters."""
    text = value if type(value) is str else ("" if value is None else str(value))
    if len(text) > SHORT_TEXT_CHARS:
        text = text[:SHORT_TEXT_CHARS]
    return text if text.isascii() else fit(text, 4 * SHORT_TEXT_CHARS)[0]


def count(value: Any) -> int:
    """A token count as the schema wants it: a non-negative int (floats and numeric strings accepted)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return number if number > 0 else 0


def opt_float(value: Any) -> float | None:
    """An optional float parameter (temperature, score); unparsable values become None, not errors."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def opt_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
