"""Wire schemas of ``POST /v1/chat/completions``: the request, the response and the stream chunk.

Shapes follow OpenAI's ``ChatCompletion`` and ``ChatCompletionChunk``, plus vLLM's extensions
(``stop_reason``, the sampling extras in ``SamplingFields``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from jaxserve.entrypoints.protocol import PromptLogprob, SamplingFields, UsageInfo
from jaxserve.sampling_params import StructuredOutputs

ROLES = ("system", "developer", "user", "assistant", "tool")


class ContentPart(msgspec.Struct, kw_only=True):
    type: str  # only "text" is served; images and audio are refused with a 400
    text: str | None = None


class MessageFunctionCall(msgspec.Struct):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class MessageToolCall(msgspec.Struct, kw_only=True):
    """A call an assistant made earlier in the conversation; typed so that a malformed one is a
    400 here rather than a surprise for the chat template."""

    id: str
    type: str = "function"
    function: MessageFunctionCall


class ChatMessage(msgspec.Struct, kw_only=True):
    role: str  # checked against ROLES by the handler, so the 400 can name the message
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant's earlier calls, into the prompt
    tool_call_id: str | None = None  # which call a tool message answers


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: list[ChatMessage]
    max_tokens: int | None = None  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    echo: bool = False  # vLLM: the reply starts with the last message's content when it is the reply's role
    chat_template_kwargs: dict[str, Any] | None = None
    # tools and output constraints: checked and combined in entrypoints/structured.py
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # none | auto | required | a named function
    parallel_tool_calls: bool | None = True
    response_format: dict[str, Any] | None = None  # text | json_object | json_schema
    structured_outputs: StructuredOutputs | None = None  # vLLM
    guided_json: dict[str, Any] | str | None = None  # vLLM's older fields
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    # vLLM's chat extras; served or refused in entrypoints/vllm_fields.py
    add_special_tokens: bool = False  # the template adds them; true adds the tokenizer's too
    chat_template: str | None = None  # needs server.trust_request_chat_template
    documents: list[dict[str, str]] | None = None  # for RAG templates
    reasoning_effort: str | None = None  # a template variable, as in vLLM
    include_reasoning: bool = True
    mm_processor_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, Any] | None = None
    structural_tag: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None
    best_of: int | None = None  # older vLLM's; refused unless equal to n, as in completions


# ---- logprobs -----------------------------------------------------------------------------------
class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobEntry(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(msgspec.Struct):
    content: list[TokenLogprobEntry] | None
    refusal: None = None


# ---- the response -------------------------------------------------------------------------------
class FunctionCall(msgspec.Struct):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(msgspec.Struct, kw_only=True):
    id: str  # call_...
    type: str = "function"
    function: FunctionCall


class ChatCompletionMessage(msgspec.Struct):
    content: str | None  # None when the reply is only tool calls
    role: str = "assistant"
    refusal: None = None
    tool_calls: list[ToolCall] | UnsetType = UNSET  # absent when the reply calls no tool


class ChatCompletionChoice(msgspec.Struct, kw_only=True):
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None
    stop_reason: int | str | None = None  # vLLM: the stop string or token id that ended it
    token_ids: list[int] | UnsetType = UNSET  # vLLM's return_token_ids: the choice's tokens


class ChatCompletionResponse(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    prompt_token_ids: list[int] | UnsetType = UNSET  # with return_token_ids (vLLM)
    # vLLM's, when asked: entrypoints/prompt_logprobs.py
    prompt_logprobs: list[dict[int, PromptLogprob] | None] | UnsetType = UNSET


# ---- the stream ---------------------------------------------------------------------------------
class DeltaFunctionCall(msgspec.Struct, kw_only=True):
    name: str | UnsetType = UNSET  # in a call's first chunk only
    arguments: str = ""  # the next fragment of the arguments' JSON text


class DeltaToolCall(msgspec.Struct, kw_only=True):
    index: int  # which call of the choice; id, type and name come in its first chunk
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: DeltaFunctionCall


class DeltaMessage(msgspec.Struct, kw_only=True):
    # absent, not null, when a chunk does not carry it: OpenAI's final chunk has "delta": {}
    role: str | UnsetType = UNSET
    content: str | UnsetType = UNSET
    tool_calls: list[DeltaToolCall] | UnsetType = UNSET


class ChatStreamChoice(msgspec.Struct, kw_only=True):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | UnsetType = UNSET  # return_token_ids: the tokens since the last chunk


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    # present only with stream_options: in the final chunk, or in every chunk when continuous
    usage: UsageInfo | None | UnsetType = UNSET
    prompt_token_ids: list[int] | UnsetType = UNSET  # return_token_ids: in the role chunks
