"""Wire schemas of ``POST /v1/completions`` (OpenAI's legacy ``Completion``, plus vLLM's extras)."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from jaxserve.entrypoints.protocol import PromptLogprob, SamplingFields, UsageInfo
from jaxserve.sampling_params import StructuredOutputs


class CompletionRequest(SamplingFields, kw_only=True):
    # a string, a list of strings, a list of token ids, or a list of token-id lists; msgspec
    # allows one array type per union, so the handler checks that a list is all of one kind
    prompt: str | list[str | int | list[int]]
    max_tokens: int | None = 16  # OpenAI's and vLLM's default for completions
    echo: bool | None = False
    logprobs: int | None = None
    suffix: str | None = None  # refused: no fill-in-the-middle
    best_of: int | None = None  # refused unless equal to n
    add_special_tokens: bool = True  # vLLM: completions tokenize with the BOS when a model has one
    # output constraints, as in chat (vLLM accepts them here too); see entrypoints/structured.py
    response_format: dict[str, Any] | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None  # vLLM's older fields, as in chat
    guided_whitespace_pattern: str | None = None
    prompt_embeds: Any = None  # refused: entrypoints/vllm_fields.py


class CompletionLogprobs(msgspec.Struct, kw_only=True):
    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(msgspec.Struct, kw_only=True):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None
    stop_reason: int | str | None = None
    # vLLM's return_token_ids: the prompt's ids (in a stream, in the choice's first chunk) and
    # the choice's tokens (in a stream, those since its last chunk)
    prompt_token_ids: list[int] | UnsetType = UNSET
    token_ids: list[int] | UnsetType = UNSET
    # vLLM's, when asked, never in a stream: entrypoints/prompt_logprobs.py
    prompt_logprobs: list[dict[int, PromptLogprob] | None] | UnsetType = UNSET


class CompletionResponse(msgspec.Struct, kw_only=True):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None | UnsetType = UNSET  # always set in a response; in a chunk, see chat
