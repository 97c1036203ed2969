"""Tool calls out of model text, whole or as it streams (host side, no jax).

Two shapes are read:

- Hermes blocks, anywhere in the text: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  (text around them is the message content);
- a bare JSON function object as the whole reply: ``{"name": ..., "arguments": {...}}``, taken as
  a call only when its name is one of the request's tools (otherwise it is content).

``"parameters"`` is read as a synonym of ``"arguments"`` (Llama 3.1 writes it). The arguments are
passed on as the exact JSON text the model wrote, so the streamed fragments of a call add up to
the arguments of the same reply unstreamed.

``ToolCallParser.feed`` takes each new piece of text and returns what can be said so far: content
and tool-call deltas in OpenAI's order (a call's index, id and name first, then argument
fragments). Text that might still turn out to be the start of a tool call (a partial
``<tool_call``, a JSON object whose name is not complete) is held back until it is decided.
Content is stripped of leading and trailing whitespace, so the newlines around calls vanish.
A reply that ends inside a call (max_tokens) drops the unfinished call, so no call is reported
with broken arguments; a stream has said its fragments already, and ends with ``length``. With
``cut`` the start of a ``<tool_call>`` tag at the very end is dropped too, not shown as content.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass

from jaxserve.structured.json_scanner import WS, InvalidJSON, ObjectScan, scan_object, skip_ws
from jaxserve.structured.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

_ARGUMENT_KEYS = ("arguments", "parameters")
_CALL_KEYS = frozenset({"name", *_ARGUMENT_KEYS, "id", "type"})
_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass
class ToolCallDelta:
    index: int
    id: str | None = None  # with the name, in the first delta of a call only
    name: str | None = None
    arguments: str = ""


class ToolCallParser:
    def __init__(self, tool_names: frozenset[str] | set[str], parallel: bool = True):
        self.tool_names = frozenset(tool_names)
        self.parallel = parallel
        self.calls: list[ToolCall] = []
        self.content = ""  # all content said so far
        self._buffer = ""  # text not yet decided
        self._mode = "start"  # start | text | tagged | bare
        self._pending_ws = ""  # trailing whitespace of the content, said once text follows
        # the call being read: its index in self.calls once its name is known
        self._current: int | None = None
        self._said_arguments = 0  # characters of the current call's arguments already said
        self._cut = False  # the reply was cut off by max_tokens

    def feed(self, text: str, final: bool = False,
             cut: bool = False) -> tuple[str, list[ToolCallDelta]]:
        """Add new model text; returns the content and the tool-call deltas it decides. With
        ``final`` everything still held back is decided; ``cut`` says max_tokens ended it."""
        self._buffer += text
        self._cut = cut
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        while True:
            progressed = {"start": self._start, "text": self._text, "tagged": self._call,
                          "bare": self._call}[self._mode](content, deltas, final)
            if not progressed:
                break
        said = self._content("".join(content), final)
        return said, deltas

    # ---- modes: each consumes from the buffer and says whether it made progress -------------
    def _start(self, content, deltas, final) -> bool:
        stripped = self._buffer.lstrip(WS)
        if not stripped:
            return False
        self._buffer = stripped
        bare = stripped[0] == "{" and bool(self.tool_names)
        self._mode = "bare" if bare else "text"
        return True

    def _text(self, content, deltas, final) -> bool:
        at = self._buffer.find(TOOL_CALL_OPEN)
        if at >= 0:
            content.append(self._buffer[:at])
            self._buffer = self._buffer[at + len(TOOL_CALL_OPEN):]
            self._mode = "tagged"
            return True
        keep = 0 if final and not self._cut else _partial_suffix(self._buffer, TOOL_CALL_OPEN)
        content.append(self._buffer[:len(self._buffer) - keep])
        self._buffer = "" if final else self._buffer[len(self._buffer) - keep:]
        return False

    def _call(self, content, deltas, final) -> bool:
        """Reading one call object (after <tool_call>, or bare at the start of the reply)."""
        tagged = self._mode == "tagged"
        start = skip_ws(self._buffer, 0)
        if start >= len(self._buffer):
            if final:
                return self._cut_off(content, tagged)
            return False
        try:
            if self._buffer[start] != "{":
                raise InvalidJSON
            scan = scan_object(self._buffer, start)
            name = self._name(scan)
        except (InvalidJSON, json.JSONDecodeError):
            return self._give_up(content, tagged)
        if not tagged and self._current is None and not _CALL_KEYS.issuperset(scan.values):
            return self._give_up(content, tagged)  # a key no call has: JSON content
        if self._current is None and name is not None:
            if not tagged and name not in self.tool_names:
                return self._give_up(content, tagged)  # JSON content, not a call
            if self.parallel or not self.calls:
                self.calls.append(ToolCall(new_call_id(), name, ""))
                self._current = len(self.calls) - 1
                deltas.append(ToolCallDelta(self._current, self.calls[-1].id, name))
            else:
                self._current = -1  # a second call when only one is allowed: read, then drop
        if self._current is not None:
            self._say_arguments(scan, deltas, complete=scan.end is not None)
        if scan.end is None:
            if final:
                if self._current is None:
                    return self._cut_off(content, tagged)
                self._drop_unfinished(scan)
            return False
        if self._current is None:  # a whole object without a name
            return self._give_up(content, tagged)
        rest = scan.end
        if tagged:
            close = skip_ws(self._buffer, rest)
            tail = self._buffer[close:]
            if tail.startswith(TOOL_CALL_CLOSE):
                rest = close + len(TOOL_CALL_CLOSE)
            elif TOOL_CALL_CLOSE.startswith(tail):
                if not final:
                    return False  # the closing tag may be arriving
                rest = len(self._buffer)  # the call is whole; only its closing tag was cut
        self._end_call(rest)
        return True

    # ---- helpers -----------------------------------------------------------------------------
    def _name(self, scan: ObjectScan) -> str | None:
        span = scan.values.get("name")
        if span is None or span[1] is None:
            return None
        name = json.loads(self._buffer[span[0]:span[1]])
        if not isinstance(name, str):
            raise InvalidJSON
        return name

    def _arguments_span(self, scan: ObjectScan) -> tuple[int, int | None] | None:
        for key in _ARGUMENT_KEYS:
            if key in scan.values:
                return scan.values[key]
        return None

    def _say_arguments(self, scan: ObjectScan, deltas: list[ToolCallDelta],
                       complete: bool) -> None:
        span = self._arguments_span(scan)
        if span is not None:
            start, end = span
            arguments = self._buffer[start:len(self._buffer) if end is None else end]
        elif complete:
            arguments = "{}"  # a call without arguments
        else:
            return
        if self._current < 0:
            return
        new = arguments[self._said_arguments:]
        if new:
            self.calls[self._current].arguments += new
            self._said_arguments = len(arguments)
            deltas.append(ToolCallDelta(self._current, arguments=new))

    def _end_call(self, consumed: int) -> None:
        self._buffer = self._buffer[consumed:]
        self._current = None
        self._said_arguments = 0
        self._mode = "text"

    def _drop_unfinished(self, scan: ObjectScan) -> None:
        """The reply ended inside an announced call: kept only if its arguments are whole."""
        span = self._arguments_span(scan)
        if self._current >= 0 and (span is None or span[1] is None):
            del self.calls[self._current]
        self._end_call(len(self._buffer))

    def _give_up(self, content: list[str], tagged: bool) -> bool:
        """What looked like a call is not one: it is content after all."""
        if self._current is not None and self._current >= 0:  # already announced: keep it
            self._end_call(len(self._buffer))
            return False
        content.append((TOOL_CALL_OPEN if tagged else "") + self._buffer)
        self._buffer = ""
        self._current = None
        self._mode = "text"
        return False

    def _cut_off(self, content: list[str], tagged: bool) -> bool:
        """The reply ended inside a call before its name was whole (max_tokens): a tagged block
        was meant as a call, so it is dropped rather than shown as content."""
        if not tagged:
            return self._give_up(content, tagged)
        self._end_call(len(self._buffer))
        return False

    def _content(self, text: str, final: bool) -> str:
        """Content with leading and trailing whitespace held back or dropped."""
        if not self.content:
            text = text.lstrip(WS)
        text = self._pending_ws + text
        kept = text.rstrip(WS)
        self._pending_ws = "" if final else text[len(kept):]
        self.content += kept
        return kept


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of text that begins tag (the tag may be arriving)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def parse_tool_calls(text: str, tool_names: frozenset[str] | set[str],
                     parallel: bool = True) -> tuple[str | None, list[ToolCall]]:
    """A whole reply: its content (None when empty) and its tool calls."""
    parser = ToolCallParser(tool_names, parallel)
    parser.feed(text, final=True)
    return parser.content or None, parser.calls
