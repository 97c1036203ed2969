"""From request fields to the engine's ``SamplingParams``.

Fields a request leaves out take the model's ``generation_config.json`` values first (vLLM's
``--generation-config auto``), then OpenAI's defaults. Range checks live in
``SamplingParams.validate`` and the engine's admission (``engine/admission.py``), which run once,
later; here are only the rules that belong to the API (``top_logprobs`` needs ``logprobs``,
``stream_options`` needs ``stream``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxserve.entrypoints.chat_protocol import ChatCompletionRequest
from jaxserve.entrypoints.completion_protocol import CompletionRequest
from jaxserve.entrypoints.errors import bad_request
from jaxserve.entrypoints.protocol import SamplingFields
from jaxserve.sampling_params import MAX_TOP_LOGPROBS, SamplingParams

_GENERATION_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
_OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                    "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}


def generation_defaults(model_dir: Path) -> dict[str, Any]:
    """The sampling values a model's authors recommend, from its generation_config.json."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    if config.get("do_sample") is False:  # transformers would decode greedily
        return {"temperature": 0.0}
    return {key: config[key] for key in _GENERATION_KEYS if config.get(key) is not None}


def _stream_rules(req: SamplingFields) -> None:
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options can only be set when stream is true",
                          param="stream_options")


def logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    try:
        return {int(token): float(value) for token, value in bias.items()}
    except ValueError:
        raise bad_request("logit_bias keys must be token ids (integers as strings)",
                          param="logit_bias") from None


def _common(req: SamplingFields, defaults: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    values = {**_OPENAI_DEFAULTS, **defaults}
    for key in _OPENAI_DEFAULTS:
        given = getattr(req, key)
        if given is not None:
            values[key] = given
    top_k = values["top_k"]
    if top_k >= vocab_size:  # keeps every token: the same as no top-k, and fits the int32 row
        values["top_k"] = 0
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return dict(
        values,
        n=1 if req.n is None else req.n,
        seed=req.seed,
        stop=[s for s in stop if s],  # an empty stop string would end every output at once
        stop_token_ids=list(req.stop_token_ids or []),
        logit_bias=logit_bias(req.logit_bias),
        ignore_eos=req.ignore_eos,
        min_tokens=req.min_tokens,
        skip_special_tokens=req.skip_special_tokens,
        include_stop_str_in_output=req.include_stop_str_in_output,
    )


def chat_params(req: ChatCompletionRequest, defaults: dict[str, Any],
                vocab_size: int) -> SamplingParams:
    _stream_rules(req)
    top = req.top_logprobs
    if top is not None and not req.logprobs:
        raise bad_request("top_logprobs can only be set when logprobs is true",
                          param="top_logprobs")
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise bad_request(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {top}",
                          param="top_logprobs")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None \
        else req.max_tokens
    logprobs = (top or 0) if req.logprobs else None
    return SamplingParams(**_common(req, defaults, vocab_size), max_tokens=max_tokens,
                          logprobs=logprobs, prompt_logprobs=req.prompt_logprobs)


def completion_params(req: CompletionRequest, defaults: dict[str, Any],
                      vocab_size: int) -> SamplingParams:
    _stream_rules(req)
    if req.logprobs is not None and not 0 <= req.logprobs <= MAX_TOP_LOGPROBS:
        raise bad_request(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {req.logprobs}",
                          param="logprobs")
    if req.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    if req.best_of is not None and req.best_of != (req.n or 1):
        raise bad_request("best_of is not supported unless it equals n", param="best_of")
    # echo with logprobs: the prompt's logprobs head the choice's (vLLM: prompt_logprobs
    # defaults to logprobs); echo with max_tokens 0 computes one token and the reply drops it
    prompt_logprobs = req.prompt_logprobs
    if prompt_logprobs is None and req.echo:
        prompt_logprobs = req.logprobs
    max_tokens = 1 if req.echo and req.max_tokens == 0 else req.max_tokens
    return SamplingParams(**_common(req, defaults, vocab_size), max_tokens=max_tokens,
                          logprobs=req.logprobs, prompt_logprobs=prompt_logprobs)

