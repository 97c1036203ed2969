"""``POST /v1/responses`` (OpenAI's Responses API, as vLLM serves it) on the chat path, and
``GET``/``DELETE /v1/responses/{id}`` over the store.

    decode (responses_protocol) -> refusals, tools and text.format to the chat constraint and
    tool plan, sampling params (responses_options) -> the previous response's conversation and
    the input as chat messages (responses_input) -> the chat template -> admission, the engine
    -> output items and stream events (responses_stream) -> stored when ``store`` (default true)

The request id, API key, access log, limits and error shapes are chat's (``serving_common``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response

from jaxserve.entrypoints.async_engine import RequestStream
from jaxserve.entrypoints.errors import APIError
from jaxserve.entrypoints.logprobs import chat_logprobs
from jaxserve.entrypoints.responses import json_response
from jaxserve.entrypoints.responses_input import (
    continues_final_message,
    conversation,
    input_messages,
    output_messages,
)
from jaxserve.entrypoints.responses_options import (
    refuse_unsupported,
    renamed,
    responses_params,
    responses_structure,
    wants_logprobs,
)
from jaxserve.entrypoints.responses_protocol import (
    CompletedEvent,
    CreatedEvent,
    ErrorEvent,
    IncompleteDetails,
    InProgressEvent,
    InputTokensDetails,
    OutputTokensDetails,
    ResponseDeleted,
    ResponsesRequest,
    ResponsesResponse,
    ResponseUsage,
)
from jaxserve.entrypoints.responses_stream import ResponseOutput, sse
from jaxserve.entrypoints.serving_common import admit_request, respond
from jaxserve.entrypoints.state import ServerState
from jaxserve.entrypoints.structured import RequestStructure
from jaxserve.outputs import RequestOutput, merge_delta
from jaxserve.sampling_params import SamplingParams
from jaxserve.structured.tool_parser import ToolCallParser
from jaxserve.structured.tool_prompt import prompt_messages, template_supports_tools
from jaxserve.structured.tools import ToolPlan

log = logging.getLogger("jaxserve.server")


def not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(f"Response with id '{response_id}' not found.", status=404, param=param)


async def create_response(state: ServerState, request: Request) -> Response:
    history: list[list[dict[str, Any]]] = []  # the conversation, set while tokenizing

    async def prompt_ids(req: ResponsesRequest, structure: RequestStructure) -> list[list[int]]:
        kept, messages = _conversation(state, req)
        history.append(kept)
        rendered, tools = prompt_messages(
            messages, structure.tools,
            template_supports_tools(state.prompts.tokenizer.chat_template))
        effort = (req.reasoning or {}).get("effort")
        continued = continues_final_message(req.input)
        ids = await state.prompts.encode_chat(
            rendered, add_generation_prompt=not continued, continue_final_message=continued,
            tools=tools, template_kwargs={"reasoning_effort": effort} if effort else None)
        return [ids]

    try:
        admitted = await admit_request(state, request, ResponsesRequest, responses_params,
                                       prompt_ids, structure_of=_structure)
    except APIError as exc:
        raise renamed(exc) from None
    req, structure = admitted.req, admitted.structure
    reply = _Reply(state, req, f"resp_{admitted.request_id}", admitted.num_prompt_tokens,
                   admitted.requests[0].params, history[0],
                   structure.tools if structure.reads_tool_calls else None)
    return await respond(request, lambda: state.submit(admitted.requests), reply,
                         bool(req.stream))


def retrieve_response(state: ServerState, response_id: str) -> Response:
    stored = state.responses.get(response_id)
    if stored is None:
        raise not_found(response_id)
    return json_response(stored.response)


def delete_response(state: ServerState, response_id: str) -> Response:
    if not state.responses.delete(response_id):
        raise not_found(response_id)
    return json_response(ResponseDeleted(id=response_id))


def cancel_response(state: ServerState, response_id: str) -> Response:
    if state.responses.get(response_id) is None:
        raise not_found(response_id)
    # every response here ran in the foreground and is finished (vLLM's answer)
    raise APIError("Cannot cancel a synchronous response.", status=400)


def _structure(req: ResponsesRequest) -> RequestStructure:
    refuse_unsupported(req)
    return responses_structure(req)


def _conversation(state: ServerState, req: ResponsesRequest
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    previous: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        stored = state.responses.get(req.previous_response_id)
        if stored is None:
            raise not_found(req.previous_response_id, param="previous_response_id")
        previous = [*stored.messages, *output_messages(stored.response.output)]
    return conversation(previous, input_messages(req.input), req.instructions)


class _Reply:
    """The response, or the events, of one request; ``respond`` calls ``response`` or
    ``stream``."""

    def __init__(self, state: ServerState, req: ResponsesRequest, response_id: str,
                 num_prompt_tokens: int, params: SamplingParams,
                 history: list[dict[str, Any]], tools: ToolPlan | None):
        self.state = state
        self.req = req
        self.id = response_id
        self.created_at = int(time.time())
        self.num_prompt_tokens = num_prompt_tokens
        self.params = params
        self.history = history
        self.tools = tools  # set when the text is read for tool calls

    def _output(self) -> ResponseOutput:
        parser = None if self.tools is None else ToolCallParser(self.tools.names,
                                                               self.tools.parallel)
        return ResponseOutput(parser, wants_logprobs(self.req))

    def _logprobs(self, steps):
        return chat_logprobs(steps, self.state.token_str) if steps else None

    def _body(self, status: str, output: list, usage: ResponseUsage | None = None,
              incomplete: bool = False) -> ResponsesResponse:
        req = self.req
        return ResponsesResponse(
            id=self.id, created_at=self.created_at, model=self.state.config.model.model_name,
            status=status, output=output,
            incomplete_details=IncompleteDetails("max_output_tokens") if incomplete else None,
            instructions=req.instructions, metadata=req.metadata,
            parallel_tool_calls=req.parallel_tool_calls is not False,
            temperature=self.params.temperature, top_p=self.params.top_p,
            tool_choice=req.tool_choice or "auto", tools=req.tools or [],
            max_output_tokens=req.max_output_tokens,
            previous_response_id=req.previous_response_id, reasoning=req.reasoning,
            service_tier=req.service_tier, store=req.store is not False,
            text=req.text or {"format": {"type": "text"}}, top_logprobs=req.top_logprobs,
            user=req.user, usage=usage)

    def _final(self, out: ResponseOutput, total: RequestOutput | None) -> ResponsesResponse:
        """The finished response, stored when asked."""
        completion = total.outputs[0] if total is not None and total.outputs else None
        incomplete = completion is not None and completion.finish_reason == "length"
        output_tokens = len(completion.token_ids) if completion is not None else 0
        usage = ResponseUsage(
            input_tokens=self.num_prompt_tokens,
            input_tokens_details=InputTokensDetails(total.num_cached_tokens if total else 0),
            output_tokens=output_tokens, output_tokens_details=OutputTokensDetails(),
            total_tokens=self.num_prompt_tokens + output_tokens)
        response = self._body("incomplete" if incomplete else "completed", out.items, usage,
                              incomplete)
        if self.req.store is not False:
            self.state.responses.put(response.id, response, self.history)
        return response

    def response(self, totals: list[RequestOutput]) -> ResponsesResponse:
        (total,) = totals
        (completion,) = total.outputs
        out = self._output()
        out.feed(completion.text, self._logprobs(completion.logprobs), final=True,
                 cut=completion.finish_reason == "length")
        out.finish(completion.finish_reason == "length")
        return self._final(out, total)

    async def stream(self, streams: list[RequestStream]) -> AsyncIterator[bytes]:
        (stream,) = streams
        out = self._output()
        try:
            start = self._body("in_progress", [])
            yield sse(out.number(CreatedEvent, response=start))
            yield sse(out.number(InProgressEvent, response=start))
            total: RequestOutput | None = None
            async for delta in stream:
                total = merge_delta(total, delta)
                for c in delta.outputs:
                    cut = c.finish_reason == "length"
                    for event in out.feed(c.text, self._logprobs(c.logprobs),
                                          final=c.finish_reason is not None, cut=cut):
                        yield sse(event)
            incomplete = bool(total and total.outputs
                              and total.outputs[0].finish_reason == "length")
            for event in out.finish(incomplete):
                yield sse(event)
            yield sse(out.number(CompletedEvent, response=self._final(out, total)))
        except APIError as exc:  # headers are sent: OpenAI's error event
            yield sse(out.number(ErrorEvent, message=exc.message, code=exc.code,
                                 param=exc.param))
        except Exception as exc:
            log.exception("stream %s failed", self.id)
            yield sse(out.number(ErrorEvent, message=f"generation failed: {exc}",
                                 code="server_error"))
        finally:
            stream.abort()
