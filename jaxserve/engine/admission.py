"""Admission: every check a request passes before the engine takes it, in one place, once.

    prompt ids + SamplingParams -> validate the params -> the engine's limits (n, logit_bias,
    stop ids, bad words, prompt ids, context length, KV pages) -> compile the grammar and copy it
    per sample -> an ``AdmittedRequest``

It runs on the caller's thread (an HTTP worker thread, or the offline ``LLM``'s), never on the
event loop and never on the engine thread: ``LLMEngine.add_request`` takes what it returns and only
checks that the request id is new. Cheap checks come first, so a refused request compiles nothing.
Every refusal is a ``ParamError`` naming its field, or the factory's ``ValueError`` (a
``GrammarError`` naming the constraint's part) for a grammar that does not compile.
"""

from __future__ import annotations

import msgspec

from jaxserve.engine.constraints import Constraint, ConstraintFactory
from jaxserve.engine.step_inputs import MAX_BIAS_ENTRIES
from jaxserve.sampling_params import ParamError, SamplingParams

MAX_LOGIT_BIAS = 300  # entries per request; the rest of a row's bias slots go to stop and eos ids


class EngineLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What an engine can take, as admission needs it."""

    vocab_size: int  # the model's, padding included
    max_model_len: int
    max_num_seqs: int
    page_size: int
    num_pages: int
    eos_token_ids: tuple[int, ...]
    prompt_logprobs: bool = True  # whether steps can carry them (not across processes)


class AdmittedRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A request that passed admission: the engine adds it as it is. Its constraints belong to
    its samples, so add it to an engine once."""

    prompt_token_ids: list[int]
    params: SamplingParams  # validated
    max_tokens: int  # resolved: never past the model's context
    constraints: list[Constraint | None]  # one per sample, fresh; None when unconstrained

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


class Admission:
    """Turns prompts and params into admitted requests for one engine; safe on any thread."""

    def __init__(self, limits: EngineLimits, constraint_factory: ConstraintFactory | None = None):
        self.limits = limits
        self.constraint_factory = constraint_factory

    def admit(self, prompt_token_ids: list[int], params: SamplingParams) -> AdmittedRequest:
        return self.admit_all([prompt_token_ids], params)[0]

    def admit_all(self, prompts: list[list[int]], params: SamplingParams
                  ) -> list[AdmittedRequest]:
        """One admitted request per prompt, all with the same params: checked once, the grammar
        compiled once. Raises ParamError (or the factory's ValueError) for the first fault."""
        self.check_params(params)
        max_tokens = [self._max_tokens(list(p), params) for p in prompts]
        constraints = self._constraints(params, len(prompts) * params.n)
        n = params.n
        return [AdmittedRequest(prompt_token_ids=list(p), params=params, max_tokens=m,
                                constraints=constraints[i * n:(i + 1) * n])
                for i, (p, m) in enumerate(zip(prompts, max_tokens))]

    def check_params(self, params: SamplingParams) -> None:
        limits = self.limits
        params.validate(limits.vocab_size)
        if params.n > limits.max_num_seqs:
            raise ParamError(f"n must be at most {limits.max_num_seqs} (max_num_seqs), "
                             f"got {params.n}", param="n")
        if params.prompt_logprobs is not None and not limits.prompt_logprobs:
            raise ParamError("prompt_logprobs are not available on an engine that spans several "
                             "processes", param="prompt_logprobs")
        if len(params.logit_bias or {}) > MAX_LOGIT_BIAS:
            raise ParamError(f"logit_bias may hold at most {MAX_LOGIT_BIAS} entries",
                             param="logit_bias")
        room = MAX_BIAS_ENTRIES - MAX_LOGIT_BIAS - len(limits.eos_token_ids)
        if len(params.stop_token_ids) > room:
            raise ParamError("too many stop_token_ids", param="stop_token_ids")
        # each bad word bans at most one token a step, in the bias slots stop ids leave
        if len(params.bad_words_token_ids or ()) > room - len(params.stop_token_ids):
            raise ParamError(f"too many bad_words: at most {room - len(params.stop_token_ids)} "
                             "tokenized words", param="bad_words")

    def _max_tokens(self, prompt_token_ids: list[int], params: SamplingParams) -> int:
        """The output budget of one prompt, checked against the context and the KV cache."""
        limits = self.limits
        num_prompt = len(prompt_token_ids)
        if num_prompt == 0:
            raise ParamError("the prompt is empty", param="prompt")
        if any(not 0 <= t < limits.vocab_size for t in prompt_token_ids):
            raise ParamError(f"prompt token ids must be in [0, {limits.vocab_size})",
                             param="prompt")
        room = limits.max_model_len - num_prompt
        if room < 1 or (params.max_tokens is not None and params.max_tokens > room):
            asked = num_prompt + (params.max_tokens or 1)
            raise ParamError(
                f"This model's maximum context length is {limits.max_model_len} tokens. However, "
                f"you requested {asked} tokens ({num_prompt} in the messages, "
                f"{params.max_tokens or 1} in the completion). Please reduce the length of the "
                "messages or completion.", code="context_length_exceeded", param="messages")
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        pages = -(-(num_prompt + max_tokens) // limits.page_size)
        if pages > limits.num_pages:
            raise ParamError(f"the request needs {pages} KV pages but the cache has only "
                             f"{limits.num_pages}", code="context_length_exceeded")
        return max_tokens

    def _constraints(self, params: SamplingParams, count: int) -> list[Constraint | None]:
        so = params.structured_outputs
        if so is None:
            return [None] * count
        if self.constraint_factory is None:
            raise ParamError("structured outputs are not available on this engine",
                             param="structured_outputs")
        return list(self.constraint_factory.constraints(so, count))
