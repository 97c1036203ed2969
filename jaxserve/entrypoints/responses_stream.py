"""A response's output items, built as the text arrives, and the stream's events for them.

One ``ResponseOutput`` serves both replies: a stream sends the events each piece yields, a plain
reply feeds the whole text at once and keeps only the items, so the two agree. The events go:

    response.created, response.in_progress
    for the text: response.output_item.added (a message), response.content_part.added,
        response.output_text.delta ..., then at the end response.output_text.done,
        response.content_part.done, response.output_item.done
    for each tool call: response.output_item.added (a function_call), then
        response.function_call_arguments.delta ..., then at the end
        response.function_call_arguments.done, response.output_item.done
    response.completed (also when the response is incomplete, as vLLM does)

each with the next ``sequence_number``, sent as ``event: <type>`` and ``data: <json>`` lines
(vLLM's framing; no ``[DONE]``). An item's id is the same in its events and in the final
response, which the SDK's ``responses.stream`` checks.
"""

from __future__ import annotations

import uuid

import msgspec

from jaxserve.entrypoints.chat_protocol import TokenLogprobEntry
from jaxserve.entrypoints.responses_protocol import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartAddedEvent,
    ContentPartDoneEvent,
    FunctionCallItem,
    OutputItem,
    OutputItemAddedEvent,
    OutputItemDoneEvent,
    OutputMessage,
    OutputText,
    TextDeltaEvent,
    TextDoneEvent,
)
from jaxserve.structured.tool_parser import ToolCallDelta, ToolCallParser

_encoder = msgspec.json.Encoder()


def sse(event: msgspec.Struct) -> bytes:
    kind = type(event).__struct_config__.tag
    return b"event: " + kind.encode() + b"\ndata: " + _encoder.encode(event) + b"\n\n"


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseOutput:
    """The output items of one response and the sequence numbers of its stream."""

    def __init__(self, parser: ToolCallParser | None, want_logprobs: bool):
        self.parser = parser
        self.want_logprobs = want_logprobs
        self.items: list[OutputItem] = []  # in output_index order
        self.sequence_number = 0
        self._message: OutputMessage | None = None  # the text's item, once text came
        self._calls: dict[int, FunctionCallItem] = {}  # by the parser's call index
        self._pending_logprobs: list[TokenLogprobEntry] = []  # of text not said yet

    def number(self, event_type: type, **fields) -> msgspec.Struct:
        event = event_type(sequence_number=self.sequence_number, **fields)
        self.sequence_number += 1
        return event

    def feed(self, text: str, logprobs: list[TokenLogprobEntry] | None, final: bool,
             cut: bool) -> list[msgspec.Struct]:
        """New model text (and its tokens' logprobs); the events it decides."""
        deltas: list[ToolCallDelta] = []
        if self.parser is not None:
            text, deltas = self.parser.feed(text, final=final, cut=cut)
        if self.want_logprobs and logprobs:
            self._pending_logprobs += logprobs
        events = self._text(text) if text else []
        for delta in deltas:
            events += self._call(delta)
        return events

    def finish(self, incomplete: bool) -> list[msgspec.Struct]:
        """The done events of every item, in output order."""
        finished = {c.id: c for c in self.parser.calls} if self.parser is not None else {}
        events: list[msgspec.Struct] = []
        for index, item in enumerate(self.items):
            if isinstance(item, OutputMessage):
                part = item.content[0]
                item.status = "incomplete" if incomplete else "completed"
                events += [
                    self.number(TextDoneEvent, item_id=item.id, output_index=index,
                                content_index=0, text=part.text,
                                logprobs=part.logprobs or []),
                    self.number(ContentPartDoneEvent, item_id=item.id, output_index=index,
                                content_index=0, part=part)]
            else:
                call = finished.get(item.call_id)  # a call cut off by max_output_tokens: none
                item.status = "completed" if call is not None else "incomplete"
                if call is not None:
                    item.arguments = call.arguments
                events.append(self.number(ArgumentsDoneEvent, item_id=item.id,
                                          output_index=index, name=item.name,
                                          arguments=item.arguments))
            events.append(self.number(OutputItemDoneEvent, output_index=index, item=item))
        return events

    # ---- items -------------------------------------------------------------------------------
    def _text(self, text: str) -> list[msgspec.Struct]:
        events: list[msgspec.Struct] = []
        if self._message is None:
            part = OutputText(text="", logprobs=[] if self.want_logprobs else msgspec.UNSET)
            self._message = OutputMessage(id=_item_id("msg"), status="in_progress",
                                          content=[part])
            self.items.append(self._message)
            index = len(self.items) - 1
            added = OutputMessage(id=self._message.id, status="in_progress", content=[])
            events += [self.number(OutputItemAddedEvent, output_index=index, item=added),
                       self.number(ContentPartAddedEvent, item_id=self._message.id,
                                   output_index=index, content_index=0,
                                   part=OutputText(text="", logprobs=part.logprobs))]
        part = self._message.content[0]
        part.text += text
        logprobs, self._pending_logprobs = self._pending_logprobs, []
        if self.want_logprobs:
            part.logprobs += logprobs
        events.append(self.number(TextDeltaEvent, item_id=self._message.id,
                                  output_index=self.items.index(self._message),
                                  content_index=0, delta=text, logprobs=logprobs))
        return events

    def _call(self, delta: ToolCallDelta) -> list[msgspec.Struct]:
        events: list[msgspec.Struct] = []
        item = self._calls.get(delta.index)
        if item is None:
            item = self._calls[delta.index] = FunctionCallItem(
                id=_item_id("fc"), call_id=delta.id, name=delta.name, arguments="",
                status="in_progress")
            self.items.append(item)
            added = FunctionCallItem(id=item.id, call_id=item.call_id, name=item.name,
                                     arguments="", status="in_progress")
            events.append(self.number(OutputItemAddedEvent, output_index=len(self.items) - 1,
                                      item=added))
        if delta.arguments:
            item.arguments += delta.arguments
            events.append(self.number(ArgumentsDeltaEvent, item_id=item.id,
                                      output_index=self.items.index(item),
                                      delta=delta.arguments))
        return events
