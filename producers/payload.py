"""Turning application values into the strings a span carries, cheaply and without ever raising.

Inputs, outputs and attribute values can be anything an app passes around: strings, dicts, pydantic
models, numpy arrays, clients. The SDK stores them as text (JSON for structured values, via msgspec, the
fastest encoder available), truncates text above a byte budget with a visible marker instead of dropping
it (Langfuse's 413s lost whole payloads), and replaces what cannot be encoded with its `repr`. Nothing here
may raise into the application: every failure degrades to a smaller, still-readable string.

Cost model: a short ASCII `str` (the common prompt) costs two O(1) checks (`str.isascii` reads a flag
CPython keeps on every string), so a 1 KB prompt passes in well under a microsecond.

It is the one place that coerces values for both producers: the SDK's application values, and the OTLP
receiver's attribute values (`finite`, `uint32`, `json_value`, `str_list` and `string_map` read typed
fields out of attributes whose senders typed them loosely).
"""

from __future__ import annotations

import base64
import math
from typing import Any

import msgspec

DEFAULT_MAX_PAYLOAD_BYTES = 32 * 1024
SHORT_TEXT_CHARS = 1024  # the schema's ShortText/Name limit; longer values would be rejected downstream
MAX_UINT32 = 4_294_967_295  # token and max_tokens columns are UInt32


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


def attr_text(value: Any, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    """An attribute value (or a payload text field) as a string: str as is, bools as true/false, numbers
    via str, None as "", bytes as base64, arrays and maps as JSON; cut at `limit` bytes."""
    kind = type(value)
    if kind is str:
        if len(value) <= limit and value.isascii():
            return value
        return fit(value, limit)[0]
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value)
    if value is None:
        return ""
    if kind is bytes:
        return fit(base64.b64encode(value).decode("ascii"), limit)[0]
    return fit(to_json_text(value), limit)[0]


def short(value: Any) -> str:
    """A ShortText field (model, role, session id, ...) cut to the schema's 1024 characters; a value that
    is not text is first written as `attr_text` writes it."""
    if type(value) is str:
        if len(value) <= SHORT_TEXT_CHARS and value.isascii():
            return value
    else:
        value = attr_text(value, 4 * SHORT_TEXT_CHARS)
    if len(value) > SHORT_TEXT_CHARS:
        value = value[:SHORT_TEXT_CHARS]
    return value if value.isascii() else fit(value, 4 * SHORT_TEXT_CHARS)[0]


def finite(value: Any) -> float | None:
    """A float field (temperature, score, cost) from a number or numeric text; NaN and inf are None."""
    if value is None or type(value) is bool:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def uint32(value: Any) -> int | None:
    """A count for a UInt32 column: ints, integral floats and numeric text; anything else is None."""
    if type(value) is int:
        number = value
    elif value is None or type(value) is bool:
        return None
    else:
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(as_float) or as_float != int(as_float):
            return None
        number = int(as_float)
    return number if 0 <= number <= MAX_UINT32 else None


_json_decode = msgspec.json.decode


def json_value(value: Any) -> Any:
    """A JSON-carrying attribute as Python data: structured values as they are, text parsed as JSON;
    None when the text is not JSON."""
    if type(value) is str:
        try:
            return _json_decode(value)
        except (msgspec.DecodeError, RecursionError):
            return None
    return value


def str_list(value: Any) -> list[str] | None:
    """A list of short strings from an array attribute, a JSON array text or a single string."""
    if isinstance(value, list):
        return [short(v) for v in value if v is not None]
    if type(value) is str:
        if value.startswith("["):
            parsed = json_value(value)
            if isinstance(parsed, list):
                return [short(v) for v in parsed if v is not None]
        return [short(value)] if value else []
    return None


def string_map(value: Any, limit: int) -> dict[str, str] | None:
    """A JSON object (text or kvlist) as a dict of texts; None when it is not an object."""
    parsed = json_value(value)
    if not isinstance(parsed, dict):
        return None
    return {str(k): attr_text(v, limit) for k, v in parsed.items()}


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
