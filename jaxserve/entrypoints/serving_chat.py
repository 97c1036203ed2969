"""``POST /v1/chat/completions``: messages -> chat template -> engine -> a reply or an SSE stream.

With ``echo`` (vLLM's) the last message's content starts the reply when that message has the
reply's role (the assistant's, or with ``add_generation_prompt: false`` the last message's own),
as ``continue_final_message`` uses it; ``prompt_logprobs`` go on the response, never in a stream.

A streamed reply goes: for each of the n choices a first chunk with ``delta.role`` (with ``echo``,
then one with the echoed content); then content
chunks (with their logprobs when asked); exactly one chunk per choice carrying its
``finish_reason``; with ``include_usage`` a last chunk with ``choices: []`` and the usage; then
``data: [DONE]``. An error after the first byte is sent as an error event, then ``[DONE]``.

With tools, the reply's text is read for tool calls (``structured/tool_parser.py``): a call's
first chunk carries its index, id and name, later chunks fragments of its arguments, and a choice
that called a tool finishes with ``tool_calls``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from litestar import Request, Response
from msgspec import UNSET

from jaxserve.entrypoints.async_engine import RequestStream
from jaxserve.entrypoints.chat_protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatStreamChoice,
    ChoiceLogprobs,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
)
from jaxserve.entrypoints.logprobs import chat_logprobs
from jaxserve.entrypoints.prompt_logprobs import prompt_logprobs_entries
from jaxserve.entrypoints.prompts import template_messages
from jaxserve.entrypoints.protocol import UsageInfo
from jaxserve.entrypoints.sampling import chat_params
from jaxserve.entrypoints.serving_common import ReplyBase, admit_request, respond
from jaxserve.entrypoints.state import ServerState
from jaxserve.entrypoints.structured import RequestStructure
from jaxserve.entrypoints.vllm_fields import request_template, template_kwargs
from jaxserve.outputs import RequestOutput
from jaxserve.structured.tool_parser import ToolCallDelta, ToolCallParser
from jaxserve.structured.tool_prompt import prompt_messages, template_supports_tools


async def create_chat_completion(state: ServerState, request: Request) -> Response:
    admitted = await admit_request(state, request, ChatCompletionRequest, chat_params,
                                   lambda req, structure: _prompt_ids(state, req, structure))
    req, structure = admitted.req, admitted.structure
    reply = _Reply(state, req, f"chatcmpl-{admitted.request_id}",
                   admitted.num_prompt_tokens, _echo(req))
    reply.prompt_ids = [r.prompt_token_ids for r in admitted.requests]
    if structure.reads_tool_calls:
        reply.read_tool_calls(structure.tools.names, structure.tools.parallel)
    return await respond(request, lambda: state.submit(admitted.requests), reply, req.stream)


async def _prompt_ids(state: ServerState, req: ChatCompletionRequest,
                      structure: RequestStructure) -> list[list[int]]:
    """The messages, and the tools the template cannot take itself, through the template."""
    template = request_template(req)
    messages, tools = prompt_messages(
        template_messages(req.messages), structure.tools,
        template_supports_tools(template or state.prompts.tokenizer.chat_template))
    prompt_ids = await state.prompts.encode_chat(
        messages, add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message, tools=tools,
        template_kwargs=template_kwargs(req), add_special_tokens=req.add_special_tokens,
        chat_template=template, documents=req.documents)
    return [prompt_ids]


def _echo(req: ChatCompletionRequest) -> str:
    """What an echo starts the reply with: the last message's content when its role is the
    reply's (vLLM's rule), its text parts joined by newlines."""
    if not req.echo or not req.messages:
        return ""
    last = req.messages[-1]
    role = "assistant" if req.add_generation_prompt else last.role
    if last.role != role or last.content is None:
        return ""
    if isinstance(last.content, str):
        return last.content
    return "\n".join(part.text or "" for part in last.content if part.type == "text")


class _Reply(ReplyBase):
    """Builds the response, or the chunks, of one chat request."""

    response_type = ChatCompletionResponse
    chunk_type = ChatCompletionChunk

    def __init__(self, state: ServerState, req: ChatCompletionRequest, response_id: str,
                 num_prompt_tokens: int, echo: str = ""):
        super().__init__(state, req, response_id, num_prompt_tokens)
        self.echo = echo
        self.num_cached_tokens = 0
        self.want_logprobs = bool(req.logprobs)
        self.tool_names: frozenset[str] | None = None  # set when the text is read for calls
        self.parallel_tool_calls = True

    def read_tool_calls(self, names: frozenset[str], parallel: bool) -> None:
        self.tool_names = names
        self.parallel_tool_calls = parallel

    def _parser(self) -> ToolCallParser | None:
        if self.tool_names is None:
            return None
        return ToolCallParser(self.tool_names, self.parallel_tool_calls)

    def _usage(self, completion_tokens: int) -> UsageInfo:
        return self.usage(completion_tokens, self.num_cached_tokens)

    def _logprobs(self, steps) -> ChoiceLogprobs | None:
        if not self.want_logprobs or steps is None:
            return None
        return ChoiceLogprobs(content=chat_logprobs(steps, self.token_str))

    def response(self, totals: list[RequestOutput]) -> ChatCompletionResponse:
        (total,) = totals
        choices = []
        for c in total.outputs:
            message, finish_reason = ChatCompletionMessage(content=c.text), c.finish_reason
            parser = self._parser()
            if parser is not None:
                parser.feed(c.text, final=True, cut=c.finish_reason == "length")
                message = _message(parser)
                finish_reason = _finish_reason(parser, c.finish_reason)
            if self.echo:
                message.content = self.echo + (message.content or "")
            choices.append(ChatCompletionChoice(
                index=c.index, message=message, logprobs=self._logprobs(c.logprobs),
                finish_reason=finish_reason, stop_reason=c.stop_reason,
                token_ids=self.take_ids(c.index, c.token_ids)))
        completion_tokens = sum(len(c.token_ids) for c in total.outputs)
        self.num_cached_tokens = total.num_cached_tokens
        body = self.body(choices, self._usage(completion_tokens))
        if self.return_token_ids:
            body.prompt_token_ids = total.prompt_token_ids
        if total.prompt_logprobs is not None:
            body.prompt_logprobs = prompt_logprobs_entries(total.prompt_logprobs,
                                                           self.token_str)
        return body

    async def events(self, streams: list[RequestStream]) -> AsyncIterator[bytes]:
        (stream,) = streams
        n = self.req.n or 1
        generated = [0] * n  # tokens per choice so far
        parsers = [self._parser() for _ in range(n)]

        def usage():
            return self._usage(sum(generated)) if self.continuous_usage else UNSET

        prompt_ids = self.prompt_ids[0] if self.return_token_ids else UNSET
        for index in range(n):
            delta = DeltaMessage(role="assistant", content="")
            yield self.chunk([ChatStreamChoice(index=index, delta=delta)], usage(),
                             prompt_token_ids=prompt_ids)
        for index in range(n if self.echo else 0):
            delta = DeltaMessage(content=self.echo)
            yield self.chunk([ChatStreamChoice(index=index, delta=delta)], usage())
        async for out in stream:
            self.num_cached_tokens = out.num_cached_tokens
            for c in out.outputs:
                generated[c.index] = c.num_output_tokens
                with_logprobs = self.want_logprobs and bool(c.logprobs)
                text, calls, finish_reason = c.text, UNSET, c.finish_reason
                parser = parsers[c.index]
                if parser is not None:
                    text, deltas = parser.feed(c.text, final=c.finish_reason is not None,
                                               cut=c.finish_reason == "length")
                    calls = _delta_tool_calls(deltas) or UNSET
                    finish_reason = _finish_reason(parser, c.finish_reason)
                if not (text or calls or with_logprobs or c.finish_reason):
                    self.hold_ids(c.index, c.token_ids)
                    continue  # text held back (a partial character, a stop, a tool call)
                # a chunk that carries only logprobs still says content "", a final one {}
                content = text if (text or (c.finish_reason is None and not calls)) else UNSET
                choice = ChatStreamChoice(
                    index=c.index, delta=DeltaMessage(content=content, tool_calls=calls),
                    logprobs=self._logprobs(c.logprobs), finish_reason=finish_reason,
                    stop_reason=c.stop_reason, token_ids=self.take_ids(c.index, c.token_ids))
                yield self.chunk([choice], usage())
        if self.include_usage:
            yield self.chunk([], self._usage(sum(generated)))


def _message(parser: ToolCallParser) -> ChatCompletionMessage:
    if not parser.calls:
        return ChatCompletionMessage(content=parser.content)
    calls = [ToolCall(id=c.id, function=FunctionCall(c.name, c.arguments)) for c in parser.calls]
    return ChatCompletionMessage(content=parser.content or None, tool_calls=calls)


def _finish_reason(parser: ToolCallParser, finish_reason: str | None) -> str | None:
    """A reply that called a tool and stopped by itself finishes with tool_calls (OpenAI)."""
    return "tool_calls" if finish_reason == "stop" and parser.calls else finish_reason


def _delta_tool_calls(deltas: list[ToolCallDelta]) -> list[DeltaToolCall]:
    """Parser deltas in OpenAI's shape, the fragments of one call in one chunk joined."""
    out: list[DeltaToolCall] = []
    for d in deltas:
        if out and out[-1].index == d.index:
            out[-1].function.arguments += d.arguments
        elif d.id is not None:
            out.append(DeltaToolCall(index=d.index, id=d.id, type="function",
                                     function=DeltaFunctionCall(name=d.name,
                                                                arguments=d.arguments)))
        else:
            out.append(DeltaToolCall(index=d.index,
                                     function=DeltaFunctionCall(arguments=d.arguments)))
    return out
