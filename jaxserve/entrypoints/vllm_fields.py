"""vLLM's extra request fields beyond sampling: each served, or refused with a 400 naming it.

msgspec drops a field a Struct does not declare, so every field vLLM's ChatCompletionRequest and
CompletionRequest know is declared (here, or in the chat and completion protocols) and either
reaches the engine or is refused below; none is accepted and ignored. The table in docs/api.md
lists them with the tests that cover each.

Served here: ``truncate_prompt_tokens`` (keep the last k prompt tokens), ``allowed_token_ids`` and
``cache_salt`` (onto ``SamplingParams``; ``bad_words`` too, tokenized by ``prompts.py``),
``return_tokens_as_token_ids`` (the token strings of logprobs). ``return_token_ids`` is the
replies' (``serving_chat.py``, ``serving_completion.py``);
``chat_template``, ``documents`` and ``reasoning_effort`` go to the chat template
(``prompts.py``), a request's own template only when the server trusts it, as vLLM's
``--trust-request-chat-template``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from jaxserve.config import ServerConfig
from jaxserve.engine.step_inputs import MAX_BIAS_ENTRIES
from jaxserve.sampling_params import ParamError, SamplingParams


class VllmFields(msgspec.Struct, kw_only=True):
    """The extras chat and completions share (vLLM's names and defaults)."""

    spaces_between_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None  # -1: as many as the context leaves
    allowed_token_ids: list[int] | None = None
    return_tokens_as_token_ids: bool | None = None  # logprob tokens as "token_id:N"
    return_token_ids: bool | None = None  # prompt_token_ids and token_ids in the reply
    cache_salt: str | None = None
    priority: int = 0
    bad_words: list[str] | None = None  # vLLM's chat field; completions take it too
    # refused unless left at their defaults: see _REFUSED
    use_beam_search: bool = False
    length_penalty: float = 1.0
    logits_processors: list[Any] | None = None
    vllm_xargs: dict[str, Any] | None = None
    kv_transfer_params: dict[str, Any] | None = None
    repetition_detection: dict[str, Any] | None = None
    max_repetition_pattern_size: int = 0
    min_repetition_pattern_size: int = 0
    repetition_min_count: int = 0


def _given(value: Any) -> bool:
    """Set to something: None, False, 0 and empty containers ask for nothing."""
    return bool(value)


# field -> (is it asking for something, why jaxserve cannot serve it)
_FCFS = ("needs priority scheduling; jaxserve's scheduler serves requests first come, first "
         "served (vLLM's fcfs policy, which refuses it too), so it must be 0")
_NO_LOGITS_PROCESSORS = ("custom logits processors are not supported (vLLM also refuses them "
                         "unless started with --logits-processor-pattern)")
_NO_REASONING_PARSER = ("jaxserve has no reasoning parser: reasoning stays in content and "
                        "cannot be left out")
_NO_REPETITION_DETECTION = "repetition detection is not supported"

# field -> (is it asking for something, why jaxserve cannot serve it)
_REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "priority": (_given, _FCFS),
    "use_beam_search": (_given, "beam search is not supported"),
    "length_penalty": (lambda v: v != 1.0, "only scores beams, and beam search is not supported"),
    "logits_processors": (_given, _NO_LOGITS_PROCESSORS),
    "vllm_xargs": (_given, "no extension in jaxserve reads vllm_xargs"),
    "kv_transfer_params": (_given, "disaggregated serving (KV transfer) is not supported"),
    "repetition_detection": (_given, _NO_REPETITION_DETECTION),
    "max_repetition_pattern_size": (_given, _NO_REPETITION_DETECTION),
    "min_repetition_pattern_size": (_given, _NO_REPETITION_DETECTION),
    "repetition_min_count": (_given, _NO_REPETITION_DETECTION),
    # chat only
    "mm_processor_kwargs": (_given, "the served model takes text only"),
    "media_io_kwargs": (_given, "the served model takes text only"),
    "structural_tag": (_given, "structural tags are not supported; use structured_outputs"),
    "guided_whitespace_pattern": (_given, "the llguidance backend has no whitespace pattern"),
    "guided_decoding_backend": (lambda v: v not in (None, "auto", "guidance", "llguidance"),
                                "jaxserve's one backend is llguidance ('guidance')"),
    "include_reasoning": (lambda v: v is False, _NO_REASONING_PARSER),
    # completions only
    "prompt_embeds": (lambda v: v is not None, "prompt embeddings are not supported"),
}


def check_fields(req: Any, server: ServerConfig) -> None:
    """A ParamError (a 400) for the first field the request sets that jaxserve cannot serve;
    raised as ParamError since errors.py imports the protocol that imports this module."""
    for name, (asks, why) in _REFUSED.items():
        if hasattr(req, name) and asks(getattr(req, name)):
            raise ParamError(f"{name} {why}", param=name)
    best_of = getattr(req, "best_of", None)
    if best_of is not None and best_of != (req.n or 1):
        raise ParamError("best_of is not supported unless it equals n", param="best_of")
    spaces = getattr(req, "spaces_between_special_tokens", True)
    if not spaces and not getattr(req, "skip_special_tokens", True):
        raise ParamError("spaces_between_special_tokens: false is only served with "
                          "skip_special_tokens: true (the detokenizer keeps the tokenizer's own "
                          "spacing between special tokens)", param="spaces_between_special_tokens")
    if len(getattr(req, "bad_words", None) or ()) > MAX_BIAS_ENTRIES:  # before tokenizing them
        raise ParamError(f"bad_words may hold at most {MAX_BIAS_ENTRIES} words", param="bad_words")
    if getattr(req, "cache_salt", None) == "":
        raise ParamError("cache_salt must be a non-empty string", param="cache_salt")
    check_template(req, server)


def check_template(req: Any, server: ServerConfig) -> None:
    """A request's own chat template is rendered only when the server trusts request
    templates: a Jinja template runs on the tokenizer thread every request shares."""
    kwargs = getattr(req, "chat_template_kwargs", None) or {}
    for name, given in (("chat_template", getattr(req, "chat_template", None)),
                        ("chat_template_kwargs", kwargs.get("chat_template"))):
        if given is not None and not server.trust_request_chat_template:
            raise ParamError(f"{name}: a chat template in the request is refused; start the "
                              "server with --trust-request-chat-template "
                              "(server.trust_request_chat_template) to allow it", param=name)


def request_template(req: Any) -> str | None:
    """The chat template the request brings, if any (checked by check_template)."""
    return req.chat_template or (req.chat_template_kwargs or {}).get("chat_template")


def template_kwargs(req: Any) -> dict[str, Any]:
    """chat_template_kwargs, with reasoning_effort as a template variable (vLLM's merge: a
    field left out does not override the kwargs)."""
    kwargs = dict(req.chat_template_kwargs or {})
    if req.reasoning_effort is not None:
        kwargs["reasoning_effort"] = req.reasoning_effort
    return kwargs


def apply_fields(params: SamplingParams, req: Any) -> None:
    """The fields the engine reads, onto the params (getattr: a request type may lack them)."""
    params.allowed_token_ids = getattr(req, "allowed_token_ids", None)
    params.cache_salt = getattr(req, "cache_salt", None)


def truncate_prompts(prompts: list[list[int]], k: int | None, max_model_len: int,
                     max_tokens: int | None) -> list[list[int]]:
    """vLLM's truncate_prompt_tokens: keep each prompt's last k tokens; -1 keeps as many as the
    context leaves beside max_tokens."""
    if k is None:
        return prompts
    room = max_model_len - (max_tokens or 0)
    if k == -1:
        k = room
    elif k < 1:
        raise ParamError(f"truncate_prompt_tokens must be -1 or at least 1, got {k}",
                          param="truncate_prompt_tokens")
    elif k > room:
        raise ParamError(f"truncate_prompt_tokens={k} cannot be greater than max_model_len - "
                          f"max_tokens = {room}; ask for a smaller truncation",
                          param="truncate_prompt_tokens")
    return [p[-k:] if len(p) > k else p for p in prompts]


def token_strings(req: Any, token_str: Callable[[int], str]) -> Callable[[int], str]:
    """How logprobs show a token: its text, or "token_id:N" when the request asks."""
    if getattr(req, "return_tokens_as_token_ids", False):
        return lambda token_id: f"token_id:{token_id}"
    return token_str
