"""One span's attributes sorted, in one pass, into the keys the mapping reads, the indexed lists, and the
rest; and the bounded cache that decides once per distinct key where it goes.

The rule the readers keep through `SpanAttributes`: an attribute is either taken into a typed field or
ends in `Span.attributes` (`finish`), so nothing is lost because the mapping looked at it and chose
another.
"""

from __future__ import annotations

from typing import Any

from ..payload import attr_text
from .vocabulary import ARRAY_BIT, ARRAY_FORMS, INDEXED, KNOWN, Keys, indexed_key

_UNSEEN: Any = object()
# Where each attribute key goes, decided once per distinct key (instrumentations send the same few
# hundred keys again and again) instead of once per span: an int is a known key's bits, a
# (prefix, index, suffix) tuple a member of an indexed list, None an attribute no field reads.
# Bounded so that senders of ever-new or huge keys cannot grow it: at most `ROUTES_MAX` keys of at
# most `ROUTED_KEY_CHARS` characters (a few MB at worst); past the count it starts over, and a longer
# key is routed every time, as every key was before.
ROUTES: dict[str, int | tuple[str, int, str] | None] = {}
ROUTES_MAX = 16_384
ROUTED_KEY_CHARS = 200


def _route(key: str) -> int | tuple[str, int, str] | None:
    """Decide (and remember) where `key` goes; see `ROUTES`."""
    route: int | tuple[str, int, str] | None = KNOWN.get(key)
    if route is None and key.startswith(INDEXED) and (match := indexed_key(key)) is not None:
        prefix, index, suffix = match.groups()
        route = (prefix, int(index), suffix)
    if len(key) <= ROUTED_KEY_CHARS:
        if len(ROUTES) >= ROUTES_MAX:
            ROUTES.clear()
        ROUTES[key] = route
    return route


class SpanAttributes:
    """One span's attributes, sorted into known keys, indexed groups and the rest, in one pass.

    `take` consumes a known key; whatever is not taken by the end goes back into `rest`, so an
    attribute is never lost because the mapping looked at it and chose another.
    """

    __slots__ = ("flags", "groups", "known", "limit", "rest")

    def __init__(self, attributes: dict[str, Any], limit: int) -> None:
        self.limit = limit
        known: dict[str, Any] = {}
        rest: dict[str, str] = {}
        groups: dict[str, dict[int, dict[str, Any]]] = {}
        flags = 0
        routes = ROUTES
        for key, value in attributes.items():
            route = routes.get(key, _UNSEEN)
            if route is _UNSEEN:
                route = _route(key)
            if route is None:  # an attribute no field reads: kept as text (inline: most are short ASCII)
                if type(value) is str and len(value) <= limit and value.isascii():
                    rest[key] = value
                else:
                    rest[key] = attr_text(value, limit)
            elif type(route) is int:
                known[key] = value
                flags |= route
            else:
                prefix, index, suffix = route
                group = groups.get(prefix)
                if group is None:
                    groups[prefix] = {index: {suffix: value}}
                else:
                    item = group.get(index)
                    if item is None:
                        group[index] = {suffix: value}
                    else:
                        item[suffix] = value
        self.known = known
        self.rest = rest
        self.groups = groups
        self.flags = flags
        if flags & ARRAY_BIT:
            for prefix, key in ARRAY_FORMS:  # the array-of-maps form joins the flat form's groups
                items = known.get(key)
                if isinstance(items, list) and items and all(isinstance(i, dict) for i in items):
                    del known[key]
                    group = groups.setdefault(prefix, {})
                    for index, entry in enumerate(items):
                        group.setdefault(index, {}).update(entry)

    def take(self, keys: Keys) -> Any:
        """The value of the first of `keys` present with a non-empty value, consumed; else None."""
        if not self.flags & keys.bit:
            return None
        known = self.known
        for key in keys:
            value = known.get(key)
            if value is not None and value != "":
                del known[key]
                return value
        return None

    def peek(self, keys: Keys) -> Any:
        if not self.flags & keys.bit:
            return None
        known = self.known
        for key in keys:
            value = known.get(key)
            if value is not None and value != "":
                return value
        return None

    def give_back(self, key: str, value: Any) -> None:
        """Keep an attribute that was taken but could not be used (say, a temperature that is text)."""
        self.rest[key] = attr_text(value, self.limit)

    def group(self, prefix: str) -> dict[int, dict[str, Any]] | None:
        return self.groups.pop(prefix, None)

    def give_back_group(self, prefix: str, index: int, leftover: dict[str, Any]) -> None:
        """Keep the parts of one list item that no typed field holds (an image part, a tool schema)."""
        limit = self.limit
        for suffix, value in leftover.items():
            self.rest[f"{prefix}{index}.{suffix}"] = attr_text(value, limit)

    def finish(self) -> dict[str, str]:
        """`rest` plus everything known but not consumed, and every group nobody read."""
        rest, limit = self.rest, self.limit
        for key, value in self.known.items():
            rest[key] = attr_text(value, limit)
        self.known = {}
        for prefix, group in self.groups.items():
            for index, leftover in group.items():
                self.give_back_group(prefix, index, leftover)
        self.groups = {}
        return rest


def subgroups(item: dict[str, Any], prefix: str) -> dict[int, dict[str, Any]]:
    """Pop `prefix.M.suffix` keys of one list item into {M: {suffix: value}} (tool calls in a message)."""
    found: dict[int, dict[str, Any]] = {}
    for key in [k for k in item if k.startswith(prefix)]:
        index, _, suffix = key[len(prefix) :].partition(".")
        if suffix and index.isascii() and index.isdigit() and len(index) <= 9:
            found.setdefault(int(index), {})[suffix] = item.pop(key)
    return found


def typed(attrs: SpanAttributes, keys: Keys, convert: Any) -> Any:
    """Take the first of `keys` and convert it; a value that does not convert stays in `attributes`."""
    if not attrs.flags & keys.bit:
        return None
    known = attrs.known
    for key in keys:
        value = known.get(key)
        if value is None or value == "":
            continue
        del known[key]
        converted = convert(value)
        if converted is None:
            attrs.give_back(key, value)
            continue
        return converted
    return None
