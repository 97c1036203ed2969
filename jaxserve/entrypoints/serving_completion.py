"""``POST /v1/completions``: one engine request per prompt, n choices each.

Choice ``i`` of prompt ``p`` is numbered ``p * n + i``, as OpenAI numbers them. With ``echo`` the
prompt's text starts each choice (in a stream, each choice's first chunk), and with ``logprobs``
too the prompt's tokens head its logprobs (entrypoints/prompt_logprobs.py). ``echo`` with
``max_tokens: 0`` returns the prompt alone: the engine computes one token, which is dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from litestar import Request, Response
from msgspec import UNSET

from jaxserve.entrypoints.async_engine import RequestStream, merge_streams
from jaxserve.entrypoints.completion_protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
)
from jaxserve.entrypoints.limits import check_prompt_count
from jaxserve.entrypoints.logprobs import completion_logprobs
from jaxserve.entrypoints.prompt_logprobs import echo_logprobs, join, prompt_logprobs_entries
from jaxserve.entrypoints.prompts import completion_prompts
from jaxserve.entrypoints.protocol import UsageInfo
from jaxserve.entrypoints.sampling import completion_params
from jaxserve.entrypoints.serving_common import ReplyBase, admit_request, respond
from jaxserve.entrypoints.state import ServerState
from jaxserve.outputs import CompletionOutput, RequestOutput


async def create_completion(state: ServerState, request: Request) -> Response:
    admitted = await admit_request(state, request, CompletionRequest, completion_params,
                                   lambda req, _: _prompt_ids(state, req))
    req = admitted.req
    prompt_ids = [r.prompt_token_ids for r in admitted.requests]
    echoes = await _echoes(state, req, prompt_ids)
    reply = _Reply(state, req, f"cmpl-{admitted.request_id}",
                   admitted.num_prompt_tokens, echoes, prompt_ids)
    return await respond(request, lambda: state.submit(admitted.requests), reply, req.stream)


async def _prompt_ids(state: ServerState, req: CompletionRequest) -> list[list[int]]:
    prompts = completion_prompts(req.prompt, state.info.vocab_size)
    check_prompt_count(len(prompts), state.config.server)  # before any is tokenized
    return [await state.prompts.encode(p, req.add_special_tokens) if isinstance(p, str) else p
            for p in prompts]


async def _echoes(state: ServerState, req: CompletionRequest,
                  prompt_ids: list[list[int]]) -> list[str]:
    """The text each choice starts with: the prompt as given, or its ids decoded."""
    if not req.echo:
        return [""] * len(prompt_ids)
    if isinstance(req.prompt, str):
        return [req.prompt]
    if all(isinstance(p, str) for p in req.prompt):  # checked non-empty when encoded
        return list(req.prompt)
    return [await state.prompts.decode(ids) for ids in prompt_ids]


class _Reply(ReplyBase):
    """Builds the response, or the chunks, of one completions request."""

    response_type = chunk_type = CompletionResponse

    def __init__(self, state: ServerState, req: CompletionRequest, response_id: str,
                 num_prompt_tokens: int, echoes: list[str], prompt_ids: list[list[int]]):
        super().__init__(state, req, response_id, num_prompt_tokens)
        self.n = req.n or 1
        self.cached_tokens: dict[int, int] = {}  # prompt position -> tokens from the prefix cache
        self.echoes = echoes
        self.prompt_ids = prompt_ids
        self.echo_only = bool(req.echo) and req.max_tokens == 0  # the one token computed is dropped
        # prompt position -> the engine's prompt logprobs, kept from the output that brought them
        self.prompt_lps: dict[int, list] = {}
        self.offsets: dict[int, int] = {}  # choice -> characters sent so far (logprob offsets)

    def _usage(self, completion_tokens: int) -> UsageInfo:
        return self.usage(completion_tokens, sum(self.cached_tokens.values()))

    def _choice(self, position: int, c: CompletionOutput) -> CompletionChoice:
        index = position * self.n + c.index
        text, steps, prompt_ids = c.text, c.logprobs, UNSET
        if self.echo_only:
            text, steps = "", []
        head = None
        if index not in self.offsets:  # this choice's first text: the echo goes before it
            text = self.echoes[position] + text
            self.offsets[index] = len(self.echoes[position])
            if self.return_token_ids:
                prompt_ids = self.prompt_ids[position]
            if self.echoes[position] and self.req.logprobs is not None:
                head, self.offsets[index] = echo_logprobs(
                    self.prompt_ids[position], self.prompt_lps.get(position) or [],
                    self.req.logprobs, self.token_str)
        logprobs = None
        if self.req.logprobs is not None and steps is not None:
            logprobs, self.offsets[index] = completion_logprobs(
                steps, self.token_str, self.offsets[index])
        if head is not None:
            logprobs = join(head, logprobs)
        return CompletionChoice(index=index, text=text, logprobs=logprobs,
                                finish_reason=c.finish_reason, stop_reason=c.stop_reason,
                                prompt_token_ids=prompt_ids,
                                token_ids=self.take_ids(index, [] if self.echo_only
                                                        else c.token_ids))

    def response(self, totals: list[RequestOutput]) -> CompletionResponse:
        self.prompt_lps = {p: t.prompt_logprobs for p, t in enumerate(totals)
                           if t.prompt_logprobs is not None}
        choices = []
        for p, total in enumerate(totals):
            entries = None if total.prompt_logprobs is None else prompt_logprobs_entries(
                total.prompt_logprobs, self.token_str)
            for c in total.outputs:
                choices.append(self._choice(p, c))
                if entries is not None:  # vLLM: on every choice of the prompt
                    choices[-1].prompt_logprobs = entries
        completion_tokens = 0 if self.echo_only else sum(
            len(c.token_ids) for t in totals for c in t.outputs)
        self.cached_tokens = {p: t.num_cached_tokens for p, t in enumerate(totals)}
        return self.body(choices, self._usage(completion_tokens))

    async def events(self, streams: list[RequestStream]) -> AsyncIterator[bytes]:
        generated: dict[int, int] = {}  # choice -> tokens so far
        async for position, out in merge_streams(streams):
            self.cached_tokens[position] = out.num_cached_tokens
            if out.prompt_logprobs is not None:
                self.prompt_lps[position] = out.prompt_logprobs
            for c in out.outputs:
                generated[position * self.n + c.index] = 0 if self.echo_only else c.num_output_tokens
                with_logprobs = self.req.logprobs is not None and bool(c.logprobs)
                index = position * self.n + c.index
                echo_due = self.echoes[position] and index not in self.offsets
                if not (c.text or with_logprobs or echo_due or c.finish_reason):
                    self.hold_ids(index, c.token_ids)
                    continue  # tokens whose text is held back (a partial character, a stop)
                usage = self._usage(sum(generated.values())) if self.continuous_usage else UNSET
                yield self.chunk([self._choice(position, c)], usage)
        if self.include_usage:
            yield self.chunk([], self._usage(sum(generated.values())))
