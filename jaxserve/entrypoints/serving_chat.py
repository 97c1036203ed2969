"""``POST /v1/chat/completions``: messages -> chat template -> engine -> a reply or an SSE stream.

A streamed reply goes: for each of the n choices a first chunk with ``delta.role``; then content
chunks (with their logprobs when asked); exactly one chunk per choice carrying its
``finish_reason``; with ``include_usage`` a last chunk with ``choices: []`` and the usage; then
``data: [DONE]``. An error after the first byte is sent as an error event, then ``[DONE]``.
"""

from __future__ import annotations

import logging
import time
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
    DeltaMessage,
)
from jaxserve.entrypoints.errors import APIError, decode_request
from jaxserve.entrypoints.logprobs import chat_logprobs
from jaxserve.entrypoints.prompts import template_messages
from jaxserve.entrypoints.protocol import UsageInfo
from jaxserve.entrypoints.responses import (
    DONE,
    json_response,
    sse_event,
    sse_response,
    unless_disconnected,
)
from jaxserve.entrypoints.sampling import chat_params, validate
from jaxserve.entrypoints.state import ServerState, random_id
from jaxserve.llm import merge_delta
from jaxserve.outputs import RequestOutput

log = logging.getLogger("jaxserve.server")


async def create_chat_completion(state: ServerState, request: Request) -> Response:
    req = decode_request(await request.body(), ChatCompletionRequest)
    state.check_model(req.model)
    state.require_ready()  # before tokenizing: a loading server answers 503 at once
    params = validate(chat_params(req, state.defaults, state.info.vocab_size),
                      state.info.vocab_size)
    messages = template_messages(req.messages)
    prompt_ids = await state.prompts.encode_chat(
        messages, add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message, tools=req.tools,
        template_kwargs=req.chat_template_kwargs)
    (stream,) = await state.submit([prompt_ids], params)
    reply = _Reply(state, req, f"chatcmpl-{req.request_id or random_id()}", len(prompt_ids))
    if req.stream:
        return sse_response(reply.stream(stream))
    try:
        total = await unless_disconnected(request, lambda: _collect(stream))
    except BaseException:
        stream.abort()
        raise
    return json_response(reply.response(total))


async def _collect(stream: RequestStream) -> RequestOutput:
    total = None
    try:
        async for delta in stream:
            total = merge_delta(total, delta)
    finally:
        stream.abort()
    return total


class _Reply:
    """Builds the response, or the chunks, of one chat request."""

    def __init__(self, state: ServerState, req: ChatCompletionRequest, response_id: str,
                 num_prompt_tokens: int):
        self.state = state
        self.req = req
        self.id = response_id
        self.created = int(time.time())
        self.model = state.config.model.model_name
        self.num_prompt_tokens = num_prompt_tokens
        self.want_logprobs = bool(req.logprobs)

    def _usage(self, completion_tokens: int) -> UsageInfo:
        return UsageInfo(self.num_prompt_tokens, completion_tokens,
                         self.num_prompt_tokens + completion_tokens)

    def _logprobs(self, steps) -> ChoiceLogprobs | None:
        if not self.want_logprobs or steps is None:
            return None
        return ChoiceLogprobs(content=chat_logprobs(steps, self.state.token_str))

    def response(self, total: RequestOutput) -> ChatCompletionResponse:
        choices = [
            ChatCompletionChoice(
                index=c.index, message=ChatCompletionMessage(content=c.text),
                logprobs=self._logprobs(c.logprobs), finish_reason=c.finish_reason,
                stop_reason=c.stop_reason)
            for c in total.outputs
        ]
        completion_tokens = sum(len(c.token_ids) for c in total.outputs)
        return ChatCompletionResponse(id=self.id, created=self.created, model=self.model,
                                      choices=choices, usage=self._usage(completion_tokens))

    def _chunk(self, choices: list[ChatStreamChoice], usage=UNSET) -> bytes:
        return sse_event(ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                             choices=choices, usage=usage))

    async def stream(self, stream: RequestStream) -> AsyncIterator[bytes]:
        options = self.req.stream_options
        include_usage = bool(options and options.include_usage)
        continuous = bool(options and options.continuous_usage_stats)
        n = self.req.n or 1
        generated = [0] * n  # tokens per choice so far

        def usage():
            return self._usage(sum(generated)) if continuous else UNSET

        try:
            for index in range(n):
                delta = DeltaMessage(role="assistant", content="")
                yield self._chunk([ChatStreamChoice(index=index, delta=delta)], usage())
            async for out in stream:
                for c in out.outputs:
                    generated[c.index] = c.num_output_tokens
                    with_logprobs = self.want_logprobs and bool(c.logprobs)
                    if not (c.text or with_logprobs or c.finish_reason):
                        continue  # tokens whose text is held back (a partial character, a stop)
                    # a chunk that carries only logprobs still says content "", a final one {}
                    content = c.text if (c.text or c.finish_reason is None) else UNSET
                    choice = ChatStreamChoice(
                        index=c.index, delta=DeltaMessage(content=content),
                        logprobs=self._logprobs(c.logprobs), finish_reason=c.finish_reason,
                        stop_reason=c.stop_reason)
                    yield self._chunk([choice], usage())
            if include_usage:
                yield self._chunk([], self._usage(sum(generated)))
        except APIError as exc:
            yield sse_event(exc.body())
        except Exception as exc:  # headers are sent: report in-band, then [DONE]
            log.exception("chat stream %s failed", self.id)
            yield sse_event(APIError(f"generation failed: {exc}", status=500).body())
        finally:
            stream.abort()
        yield DONE
