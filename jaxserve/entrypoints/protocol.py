"""Wire schemas shared by the endpoints: errors, usage, models, version, and the sampling fields
that chat and completion requests have in common.

Requests ignore unknown fields (msgspec's default), as OpenAI and vLLM do, so a client that sends
a newer field still gets served; every field vLLM defines is declared, and served or refused
(``vllm_fields.py``). Optional response fields the client should not see at all are
``msgspec.UNSET`` (left out of the JSON); fields OpenAI sends as ``null`` default to ``None``.
"""

from __future__ import annotations

import msgspec

from jaxserve.entrypoints.vllm_fields import VllmFields


# ---- errors -------------------------------------------------------------------------------------
class ErrorInfo(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(msgspec.Struct):
    error: ErrorInfo


# ---- shared pieces ------------------------------------------------------------------------------
class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache


class UsageInfo(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | None = True  # as vLLM: sending stream_options asks for usage
    continuous_usage_stats: bool | None = False  # vLLM: usage in every chunk


class SamplingFields(VllmFields, kw_only=True):
    """What chat and completion requests share: model, limits, sampling, stopping, streaming.

    None means "not given", so the model's generation_config.json defaults can fill it in.
    """

    model: str | None = None  # vLLM serves its one model when this is left out
    n: int | None = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a JSON key) -> bias in [-100, 100]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    prompt_logprobs: int | None = None  # vLLM: each prompt token's logprob and the top-k
    user: str | None = None
    request_id: str | None = None  # vLLM: becomes the response id's suffix


class PromptLogprob(msgspec.Struct):
    """One token of a ``prompt_logprobs`` entry (vLLM's ``Logprob``)."""

    logprob: float
    rank: int | None  # 1: the likeliest token at that position
    decoded_token: str | None


# ---- /v1/models ---------------------------------------------------------------------------------
class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "jaxserve"
    root: str  # the model folder the served name stands for (vLLM)
    parent: str | None = None
    max_model_len: int


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


# ---- /version -----------------------------------------------------------------------------------
class VersionResponse(msgspec.Struct):
    version: str

