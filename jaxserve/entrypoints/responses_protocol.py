"""Wire schemas of ``/v1/responses``: the request, the response and its output items, and the
stream's events, in the shapes of OpenAI's Responses API (``openai.types.responses``) as vLLM
serves them.

The request keeps ``input``, ``tools``, ``tool_choice`` and ``text`` loose (dicts) and
``responses_input.py`` reads them, so a malformed item is a 400 naming it (``input[2].content``)
rather than msgspec's guess at a union.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from jaxserve.entrypoints.chat_protocol import TokenLogprobEntry
from jaxserve.sampling_params import StructuredOutputs

_Summary = Literal["auto", "concise", "detailed"]
# OpenAI's tiers, typed so a value outside them is a 400 rather than echoed back
ServiceTier = Literal["auto", "default", "flex", "scale", "priority", "fast", "ultrafast"]


class Reasoning(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """OpenAI's reasoning options, typed so a value outside their enums is a 400, not echoed."""

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: _Summary | None = None
    generate_summary: _Summary | None = None  # deprecated by OpenAI for summary
    context: Literal["auto", "current_turn", "all_turns"] | None = None
    mode: str | UnsetType = UNSET  # a string in OpenAI's schema, never null


class ResponsesRequest(msgspec.Struct, kw_only=True):
    input: str | list[dict[str, Any]]
    model: str | None = None
    instructions: str | None = None  # a system message before the input; not carried over
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = False
    store: bool | None = True
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = "auto"
    parallel_tool_calls: bool | None = True
    text: dict[str, Any] | None = None  # {"format": {"type": text | json_object | json_schema}}
    metadata: dict[str, str] | None = None
    user: str | None = None
    include: list[str] | None = None
    top_logprobs: int | None = None
    reasoning: Reasoning | None = None  # its effort goes to the chat template (vLLM)
    service_tier: ServiceTier | None = "auto"
    # refused when set: served by OpenAI, not here (responses_input.refuse_unsupported)
    background: bool | None = False
    truncation: str | None = "disabled"
    prompt: dict[str, Any] | None = None
    conversation: str | dict[str, Any] | None = None
    max_tool_calls: int | None = None
    # vLLM's extras
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured_outputs: StructuredOutputs | None = None
    request_id: str | None = None  # becomes the response id's suffix, as in chat
    # vLLM's ResponsesRequest extras, checked as chat's are (entrypoints/vllm_fields.py)
    cache_salt: str | None = None  # prefix-cache pages are shared only under the same salt
    priority: int = 0  # refused unless 0: first come, first served
    logit_bias: dict[str, float] | None = None  # token id (as a JSON key) -> bias, as chat's
    prompt_cache_key: str | None = None  # OpenAI's caching hint: the prefix cache needs none
    # refused when set (vllm_fields.py, responses_options.refuse_unsupported)
    mm_processor_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, Any] | None = None
    kv_transfer_params: dict[str, Any] | None = None
    vllm_xargs: dict[str, Any] | None = None
    enable_response_messages: bool = False
    previous_input_messages: list[Any] | None = None


# ---- output items -------------------------------------------------------------------------------
class OutputText(msgspec.Struct, kw_only=True, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    # filled with include: ["message.output_text.logprobs"]; OpenAI's schema requires the field
    logprobs: list[TokenLogprobEntry] = msgspec.field(default_factory=list)


class OutputMessage(msgspec.Struct, kw_only=True, tag_field="type", tag="message"):
    id: str  # msg_...
    status: str  # in_progress | completed | incomplete
    content: list[OutputText]
    role: str = "assistant"


class FunctionCallItem(msgspec.Struct, kw_only=True, tag_field="type", tag="function_call"):
    id: str  # fc_...
    call_id: str  # call_...: what a function_call_output answers
    name: str
    arguments: str  # JSON text, as the model wrote it
    status: str


OutputItem = OutputMessage | FunctionCallItem


# ---- the response -------------------------------------------------------------------------------
class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0  # read from the prefix cache
    cache_write_tokens: int = 0  # computed, so written to the K/V cache


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(msgspec.Struct):
    reason: str  # max_output_tokens


class ResponseError(msgspec.Struct):
    code: str
    message: str


class ResponsesResponse(msgspec.Struct, kw_only=True):
    id: str  # resp_...
    object: str = "response"
    created_at: int
    model: str
    status: str  # in_progress | completed | incomplete | failed
    output: list[OutputItem]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = msgspec.field(default_factory=list)
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    reasoning: Reasoning | None = None
    service_tier: ServiceTier | None = "auto"
    store: bool = True
    text: dict[str, Any] | None = None
    top_logprobs: int | None = None
    truncation: str = "disabled"
    background: bool = False
    usage: ResponseUsage | None = None
    user: str | UnsetType = UNSET  # absent unless given: OpenAI's schema has no null here


class ResponseDeleted(msgspec.Struct):
    id: str
    object: str = "response"
    deleted: bool = True


# ---- the stream's events ------------------------------------------------------------------------
class _Event(msgspec.Struct, kw_only=True, tag_field="type"):
    sequence_number: int


class _LifecycleEvent(_Event):
    response: ResponsesResponse  # the whole response as it stands


class CreatedEvent(_LifecycleEvent, tag="response.created"):
    pass


class InProgressEvent(_LifecycleEvent, tag="response.in_progress"):
    pass


class CompletedEvent(_LifecycleEvent, tag="response.completed"):
    """Also for an incomplete response (its status says so), as vLLM sends it: the SDK's
    ``responses.stream`` assembles its final response only from this event."""


class OutputItemAddedEvent(_Event, tag="response.output_item.added"):
    output_index: int
    item: OutputItem


class OutputItemDoneEvent(_Event, tag="response.output_item.done"):
    output_index: int
    item: OutputItem


class ContentPartAddedEvent(_Event, tag="response.content_part.added"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class ContentPartDoneEvent(_Event, tag="response.content_part.done"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class TextDeltaEvent(_Event, tag="response.output_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[TokenLogprobEntry] = msgspec.field(default_factory=list)


class TextDoneEvent(_Event, tag="response.output_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[TokenLogprobEntry] = msgspec.field(default_factory=list)


class ArgumentsDeltaEvent(_Event, tag="response.function_call_arguments.delta"):
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(_Event, tag="response.function_call_arguments.done"):
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(_Event, tag="error"):
    message: str
    code: str | None = None
    param: str | None = None
