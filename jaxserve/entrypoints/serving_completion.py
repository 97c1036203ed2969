"""``POST /v1/completions``: one engine request per prompt, n choices each.

Choice ``i`` of prompt ``p`` is numbered ``p * n + i``, as OpenAI numbers them. With ``echo`` the
prompt's text starts each choice (in a stream, each choice's first chunk). Prompt logprobs are not
computed yet, so ``echo`` with ``logprobs`` is refused up front.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from litestar import Request, Response
from msgspec import UNSET

from jaxserve.entrypoints.async_engine import RequestStream, merge_streams
from jaxserve.entrypoints.completion_protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
)
from jaxserve.entrypoints.errors import APIError, decode_request
from jaxserve.entrypoints.logprobs import completion_logprobs
from jaxserve.entrypoints.prompts import completion_prompts
from jaxserve.entrypoints.protocol import PromptTokensDetails, UsageInfo
from jaxserve.entrypoints.responses import (
    DONE,
    json_response,
    sse_event,
    sse_response,
    unless_disconnected,
)
from jaxserve.entrypoints.sampling import completion_params, validate
from jaxserve.entrypoints.state import ServerState, random_id
from jaxserve.entrypoints.structured import compile_constraint, request_structure
from jaxserve.outputs import CompletionOutput, RequestOutput, merge_delta

log = logging.getLogger("jaxserve.server")


async def create_completion(state: ServerState, request: Request) -> Response:
    req = decode_request(await request.body(), CompletionRequest)
    state.check_model(req.model)
    state.require_ready()
    params = completion_params(req, state.defaults, state.info.vocab_size)
    structure = request_structure(req)
    params.structured_outputs = structure.constraint
    params = validate(params, state.info.vocab_size)
    await compile_constraint(state.engine.engine.constraint_factory, structure)
    prompts = completion_prompts(req.prompt, state.info.vocab_size)
    prompt_ids = [await state.prompts.encode(p, req.add_special_tokens) if isinstance(p, str)
                  else p for p in prompts]
    echoes = [""] * len(prompts)
    if req.echo:
        echoes = [p if isinstance(p, str) else await state.prompts.decode(p) for p in prompts]
    streams = await state.submit(prompt_ids, params)
    reply = _Reply(state, req, f"cmpl-{req.request_id or random_id()}",
                   sum(len(ids) for ids in prompt_ids), echoes)
    if req.stream:
        return sse_response(reply.stream(streams))
    try:
        totals = await unless_disconnected(request, lambda: _collect(streams))
    except BaseException:
        for stream in streams:
            stream.abort()
        raise
    return json_response(reply.response(totals))


async def _collect(streams: list[RequestStream]) -> list[RequestOutput]:
    totals: list[RequestOutput | None] = [None] * len(streams)
    async for position, delta in merge_streams(streams):
        totals[position] = merge_delta(totals[position], delta)
    return totals


class _Reply:
    """Builds the response, or the chunks, of one completions request."""

    def __init__(self, state: ServerState, req: CompletionRequest, response_id: str,
                 num_prompt_tokens: int, echoes: list[str]):
        self.state = state
        self.req = req
        self.id = response_id
        self.created = int(time.time())
        self.model = state.config.model.model_name
        self.n = req.n or 1
        self.num_prompt_tokens = num_prompt_tokens
        self.cached_tokens: dict[int, int] = {}  # prompt position -> tokens from the prefix cache
        self.echoes = echoes
        self.offsets: dict[int, int] = {}  # choice -> characters sent so far (logprob offsets)

    def _usage(self, completion_tokens: int) -> UsageInfo:
        return UsageInfo(self.num_prompt_tokens, completion_tokens,
                         self.num_prompt_tokens + completion_tokens,
                         PromptTokensDetails(cached_tokens=sum(self.cached_tokens.values())))

    def _choice(self, position: int, c: CompletionOutput) -> CompletionChoice:
        index = position * self.n + c.index
        text = c.text
        if index not in self.offsets:  # this choice's first text: the echo goes before it
            text = self.echoes[position] + text
            self.offsets[index] = len(self.echoes[position])
        logprobs = None
        if self.req.logprobs is not None and c.logprobs is not None:
            logprobs, self.offsets[index] = completion_logprobs(
                c.logprobs, self.state.token_str, self.offsets[index])
        return CompletionChoice(index=index, text=text, logprobs=logprobs,
                                finish_reason=c.finish_reason, stop_reason=c.stop_reason)

    def response(self, totals: list[RequestOutput]) -> CompletionResponse:
        choices = [self._choice(p, c) for p, total in enumerate(totals) for c in total.outputs]
        completion_tokens = sum(len(c.token_ids) for t in totals for c in t.outputs)
        self.cached_tokens = {p: t.num_cached_tokens for p, t in enumerate(totals)}
        return CompletionResponse(id=self.id, created=self.created, model=self.model,
                                  choices=choices, usage=self._usage(completion_tokens))

    def _chunk(self, choices: list[CompletionChoice], usage=UNSET) -> bytes:
        return sse_event(CompletionResponse(id=self.id, created=self.created, model=self.model,
                                            choices=choices, usage=usage))

    async def stream(self, streams: list[RequestStream]) -> AsyncIterator[bytes]:
        options = self.req.stream_options
        include_usage = bool(options and options.include_usage)
        continuous = bool(options and options.continuous_usage_stats)
        generated: dict[int, int] = {}  # choice -> tokens so far
        try:
            async for position, out in merge_streams(streams):
                self.cached_tokens[position] = out.num_cached_tokens
                for c in out.outputs:
                    generated[position * self.n + c.index] = c.num_output_tokens
                    with_logprobs = self.req.logprobs is not None and bool(c.logprobs)
                    index = position * self.n + c.index
                    echo_due = self.echoes[position] and index not in self.offsets
                    if not (c.text or with_logprobs or echo_due or c.finish_reason):
                        continue  # tokens whose text is held back (a partial character, a stop)
                    usage = self._usage(sum(generated.values())) if continuous else UNSET
                    yield self._chunk([self._choice(position, c)], usage)
            if include_usage:
                yield self._chunk([], self._usage(sum(generated.values())))
        except APIError as exc:
            yield sse_event(exc.body())
        except Exception as exc:  # headers are sent: report in-band, then [DONE]
            log.exception("completion stream %s failed", self.id)
            yield sse_event(APIError(f"generation failed: {exc}", status=500).body())
        finally:
            for stream in streams:
                stream.abort()
        yield DONE
