"""What the chat and completion handlers share: every step before the engine, and the reply.

    decode the body -> the model's name -> ready -> vLLM's fields checked -> sampling params
    (with allowed ids, cache salt, bad words) -> the output constraint -> prompt ids (the
    endpoint's own step), truncated when asked -> admission on a worker thread (every check, the
    grammar compiled once, one constraint per sample) -> submit -> one JSON reply or an SSE stream

The endpoints differ only in how a request becomes sampling params and prompt ids, and in the
chunks and body of the reply (each one's ``_Reply``, on ``ReplyBase``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
from litestar import Request, Response
from msgspec import UNSET

from jaxserve.engine.admission import Admission, AdmittedRequest
from jaxserve.entrypoints.async_engine import RequestStream, merge_streams
from jaxserve.entrypoints.errors import APIError, from_param_error
from jaxserve.entrypoints.limits import check_request
from jaxserve.entrypoints.protocol import PromptTokensDetails, UsageInfo
from jaxserve.entrypoints.request_body import read_request
from jaxserve.entrypoints.request_log import record_of, resolve_request_id
from jaxserve.entrypoints.responses import (
    DONE,
    json_response,
    sse_event,
    sse_response,
    unless_disconnected,
)
from jaxserve.entrypoints.state import ServerState
from jaxserve.entrypoints.structured import RequestStructure, constraint_error, request_structure
from jaxserve.entrypoints.vllm_fields import (
    apply_fields,
    check_fields,
    token_strings,
    truncate_prompts,
)
from jaxserve.outputs import RequestOutput, merge_delta
from jaxserve.sampling_params import ParamError, SamplingParams
from jaxserve.structured import GrammarError

log = logging.getLogger("jaxserve.server")

Req = TypeVar("Req")
ParamsOf = Callable[[Any, dict, int], SamplingParams]  # (request, defaults, vocab size)
PromptsOf = Callable[[Any, RequestStructure], Awaitable[list[list[int]]]]
StructureOf = Callable[[Any], RequestStructure]


@dataclass(frozen=True)
class Admitted(Generic[Req]):
    req: Req
    structure: RequestStructure
    requests: list[AdmittedRequest]  # one per prompt
    request_id: str  # the response id's suffix, and the x-request-id header

    @property
    def num_prompt_tokens(self) -> int:
        return sum(r.num_prompt_tokens for r in self.requests)


async def admit_request(state: ServerState, request: Request, request_type: type[Req],
                        params_of: ParamsOf, prompts_of: PromptsOf,
                        structure_of: StructureOf = request_structure) -> Admitted[Req]:
    """The request decoded, checked and admitted; every mistake an APIError naming its field.
    ``structure_of`` reads the output constraint and tools (the Responses API's differ)."""
    req = await read_request(request, request_type, state.config.server)
    check_request(req, state.config.server)
    request_id = resolve_request_id(request, req.request_id)
    state.check_model(req.model)
    state.require_ready()  # before tokenizing: a loading server answers 503 at once
    _as_400(check_fields, req, state.config.server)
    params = params_of(req, state.defaults, state.info.vocab_size)
    apply_fields(params, req)
    if getattr(req, "bad_words", None):
        params.bad_words_token_ids = await state.prompts.bad_words_ids(req.bad_words)
    structure = structure_of(req)
    params.structured_outputs = structure.constraint
    prompt_ids = _as_400(truncate_prompts, await prompts_of(req, structure),
                         getattr(req, "truncate_prompt_tokens", None), state.info.max_model_len,
                         params.max_tokens)
    requests = await asyncio.to_thread(_admit, state.admission, prompt_ids, params, structure)
    admitted = Admitted(req, structure, requests, request_id)
    record_of(request).prompt_tokens = admitted.num_prompt_tokens
    return admitted


def _as_400(fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except ParamError as exc:
        raise from_param_error(exc) from None


def _admit(admission: Admission, prompts: list[list[int]], params: SamplingParams,
           structure: RequestStructure) -> list[AdmittedRequest]:
    """On a worker thread, since compiling a grammar must not stall the event loop."""
    try:
        return admission.admit_all(prompts, params)
    except ParamError as exc:
        raise from_param_error(exc) from None
    except GrammarError as exc:
        raise constraint_error(admission.constraint_factory, structure, exc) from None


class ReplyBase:
    """What both endpoints' replies carry, and the frame of a stream: ``events`` yields the
    chunks; an error after the first byte goes out in-band, then ``[DONE]``, and leaving the
    stream for any reason aborts its engine requests."""

    response_type: type[msgspec.Struct]  # the JSON body
    chunk_type: type[msgspec.Struct]  # one SSE event's body

    def __init__(self, state: ServerState, req: Any, response_id: str, num_prompt_tokens: int):
        self.state = state
        self.req = req
        self.id = response_id
        self.created = int(time.time())
        self.model = state.config.model.model_name
        self.num_prompt_tokens = num_prompt_tokens
        self.token_str = token_strings(req, state.token_str)  # for logprobs
        self.return_token_ids = bool(getattr(req, "return_token_ids", False))
        self.held_ids: dict[int, list[int]] = {}  # choice -> token ids of chunks not sent
        self.prompt_ids: list[list[int]] = []  # each prompt's ids, as admitted
        options = req.stream_options
        self.include_usage = bool(options and options.include_usage)
        self.continuous_usage = bool(options and options.continuous_usage_stats)

    def usage(self, completion_tokens: int, cached_tokens: int) -> UsageInfo:
        return UsageInfo(self.num_prompt_tokens, completion_tokens,
                         self.num_prompt_tokens + completion_tokens,
                         PromptTokensDetails(cached_tokens=cached_tokens))

    def body(self, choices: list, usage: Any = UNSET) -> msgspec.Struct:
        return self.response_type(id=self.id, created=self.created, model=self.model,
                                  choices=choices, usage=usage)

    def chunk(self, choices: list, usage: Any = UNSET, **fields: Any) -> bytes:
        return sse_event(self.chunk_type(id=self.id, created=self.created, model=self.model,
                                         choices=choices, usage=usage, **fields))

    def hold_ids(self, index: int, token_ids: list[int]) -> None:
        """A chunk of choice index is not sent (its text held back): its ids go with the next."""
        if self.return_token_ids:
            self.held_ids.setdefault(index, []).extend(token_ids)

    def take_ids(self, index: int, token_ids: list[int]) -> list[int] | Any:
        """return_token_ids: the ids a chunk (or a whole choice) of index carries; else UNSET."""
        if not self.return_token_ids:
            return UNSET
        return self.held_ids.pop(index, []) + token_ids

    def response(self, totals: list[RequestOutput]) -> msgspec.Struct:
        raise NotImplementedError

    def events(self, streams: list[RequestStream]) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def stream(self, streams: list[RequestStream]) -> AsyncIterator[bytes]:
        try:
            async for event in self.events(streams):
                yield event
        except APIError as exc:
            yield sse_event(exc.body())
        except Exception as exc:  # headers are sent: report in-band, then [DONE]
            log.exception("stream %s failed", self.id)
            yield sse_event(APIError(f"generation failed: {exc}", status=500).body())
        finally:
            for s in streams:
                s.abort()
        yield DONE


async def respond(request: Request, submit: Callable[[], Awaitable[list[RequestStream]]],
                  reply: ReplyBase, stream: bool) -> Response:
    """An SSE stream, or one JSON body once every stream finished; a client that leaves before
    that, even while its requests are being added, has them all aborted."""
    observe = record_of(request).observe  # the access line's tokens and first token

    async def submitted() -> list[RequestStream]:
        added = await submit()
        for s in added:
            s.observer = observe
        return added

    if stream:
        return sse_response(reply.stream(await submitted()))
    streams: list[RequestStream] = []

    async def run() -> list[RequestOutput]:
        streams.extend(await submitted())
        return await collect(streams)

    try:
        totals = await unless_disconnected(request, run)
    except BaseException:
        for s in streams:
            s.abort()
        raise
    return json_response(reply.response(totals))


async def collect(streams: list[RequestStream]) -> list[RequestOutput]:
    """Each stream's deltas merged into its whole output."""
    totals: list[RequestOutput | None] = [None] * len(streams)
    async for position, delta in merge_streams(streams):
        totals[position] = merge_delta(totals[position], delta)
    return totals
