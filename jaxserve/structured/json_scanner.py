"""A scanner for one JSON object that may still be arriving (host side, no jax).

``scan_object`` reads the top-level members of a possibly incomplete object and says where each
value starts and, once it has arrived, where it ends; the tool-call parser uses it to tell a
call's name and arguments while they stream. Text that cannot become a JSON object raises
``InvalidJSON``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

WS = " \t\n\r"


class InvalidJSON(Exception):
    pass


@dataclass
class ObjectScan:
    """The top-level members of a possibly incomplete JSON object."""

    values: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # key -> value span
    end: int | None = None  # index just past the closing brace, once it arrived


def skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in WS:
        i += 1
    return i


def string_end(s: str, i: int) -> int | None:
    """s[i] is a quote; the index past the closing quote, or None when it has not arrived."""
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    return None


def value_end(s: str, i: int) -> int | None:
    """The index past the JSON value starting at s[i], or None when it is incomplete."""
    c = s[i]
    if c == '"':
        return string_end(s, i)
    if c in "{[":
        depth = 0
        while i < len(s):
            c = s[i]
            if c == '"':
                end = string_end(s, i)
                if end is None:
                    return None
                i = end
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return None
    start = i  # a number or a literal: ends at the first delimiter
    while i < len(s) and s[i] not in WS + ",}]":
        i += 1
    if i == start:
        raise InvalidJSON
    return i if i < len(s) else None


def scan_object(s: str, i: int) -> ObjectScan:
    """s[i] is '{'; raises InvalidJSON when the text cannot be a JSON object."""
    scan = ObjectScan()
    i = skip_ws(s, i + 1)
    if i < len(s) and s[i] == "}":
        scan.end = i + 1
        return scan
    while True:
        if i >= len(s):
            return scan
        if s[i] != '"':
            raise InvalidJSON
        key_end = string_end(s, i)
        if key_end is None:
            return scan
        key = json.loads(s[i:key_end])
        i = skip_ws(s, key_end)
        if i >= len(s):
            return scan
        if s[i] != ":":
            raise InvalidJSON
        i = skip_ws(s, i + 1)
        if i >= len(s):
            return scan
        end = value_end(s, i)
        scan.values[key] = (i, end)
        if end is None:
            return scan
        i = skip_ws(s, end)
        if i >= len(s):
            return scan
        if s[i] == "}":
            scan.end = i + 1
            return scan
        if s[i] != ",":
            raise InvalidJSON
        i = skip_ws(s, i + 1)
