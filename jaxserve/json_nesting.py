"""How deep a JSON text nests, found by a scan of its bytes (host side, no jax).

JSON decoders recurse once per level, so a few kilobytes of ``[`` exhaust the stack; checking the
depth first turns that into a refusal. Brackets inside strings do not count.
"""

from __future__ import annotations

import re

import numpy as np

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_OPEN = np.zeros(256, np.int8)
_OPEN[list(b"[{")] = 1
_OPEN[list(b"]}")] = -1


def nesting_depth(text: bytes | str, limit: int) -> int:
    """The deepest nesting of ``text``, exact once it passes ``limit``; a text that cannot pass
    it may report any depth up to the limit (the common case costs two ``count`` calls)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    if text.count(b"[") + text.count(b"{") <= limit:
        return 0
    brackets = _STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return 0
    steps = _OPEN[np.frombuffer(brackets, np.uint8)].astype(np.int64)
    return int(np.cumsum(steps).max())
