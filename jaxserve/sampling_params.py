"""Per-request sampling and stopping parameters (host side, no jax).

The names and meanings follow vLLM's ``SamplingParams`` so that values from an OpenAI request map
one to one. ``validate`` raises ``ParamError``, which carries the field as ``param`` and says the
allowed range in its message; the HTTP layer turns it into a 400 naming that field.
"""

from __future__ import annotations

import msgspec

MAX_TOP_LOGPROBS = 20


class ParamError(ValueError):
    """A request value that cannot be served; ``param`` names its field and ``code`` follows
    OpenAI (e.g. context_length_exceeded), so no caller reads them out of the message."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class StructuredOutputs(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One constraint on the output (vLLM's ``structured_outputs``); exactly one field is set."""

    json: dict | str | None = None  # a JSON schema
    json_object: bool = False  # any JSON object
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None  # Lark (or GBNF) grammar text
    # vLLM's options: one backend (llguidance) and no fallback, so disable_fallback is what
    # happens anyway; the others are refused when set, never ignored
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None

    def validate(self) -> StructuredOutputs:
        for name in ("disable_any_whitespace", "disable_additional_properties",
                     "whitespace_pattern", "structural_tag"):
            if getattr(self, name):
                raise ParamError(f"structured_outputs.{name} is not supported by jaxserve's "
                                 "llguidance backend", param=f"structured_outputs.{name}")
        given = [name for name in ("json", "regex", "choice", "grammar")
                 if getattr(self, name) is not None] + (["json_object"] if self.json_object else [])
        if len(given) != 1:
            raise ParamError(f"structured_outputs must set exactly one constraint, got "
                             f"{given or 'none'}", param="structured_outputs")
        if self.choice is not None and not self.choice:
            raise ParamError("structured_outputs.choice must not be empty",
                             param="structured_outputs.choice")
        return self


class SamplingParams(msgspec.Struct, kw_only=True):
    n: int = 1
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) disables top-k
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    max_tokens: int | None = None  # None: up to the model's context length
    min_tokens: int = 0
    stop: list[str] = msgspec.field(default_factory=list)
    stop_token_ids: list[int] = msgspec.field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None  # None: no logprobs; k >= 0: chosen token plus top-k
    prompt_logprobs: int | None = None  # None: none; k >= 0: each prompt token's plus top-k
    structured_outputs: StructuredOutputs | None = None  # constrained decoding
    allowed_token_ids: list[int] | None = None  # sampling keeps to these ids (vLLM)
    cache_salt: str | None = None  # prefix-cache pages are shared only under the same salt
    # vLLM's bad_words, tokenized: a word's last token is banned once its others were generated
    bad_words_token_ids: list[list[int]] | None = None

    @property
    def has_penalties(self) -> bool:
        """Penalties read the token history, which the host builds before each step."""
        return bool(self.presence_penalty or self.frequency_penalty
                    or self.repetition_penalty != 1.0)

    @property
    def bans_by_history(self) -> bool:
        """A bad word of several tokens: whether its last is banned depends on the output."""
        return any(len(ids) > 1 for ids in self.bad_words_token_ids or ())

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int | None = None) -> SamplingParams:
        def bad(field: str, why: str) -> ParamError:
            return ParamError(f"{field} {why}", param=field)

        if self.n < 1:
            raise bad("n", f"must be at least 1, got {self.n}")
        if not 0.0 <= self.temperature <= 2.0:
            raise bad("temperature", f"must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if not -1 <= self.top_k < 2**31:
            raise bad("top_k", f"must be -1 (disabled), 0 (disabled) or positive, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", f"must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise bad(name, f"must be in [-2, 2], got {value}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise bad("repetition_penalty", f"must be in (0, 2], got {self.repetition_penalty}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", f"must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            raise bad("min_tokens", f"must be non-negative, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise bad("logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS:
            raise bad("prompt_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}], got "
                      f"{self.prompt_logprobs}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise bad("seed", "must fit in 64 bits")
        if vocab_size is not None:
            for token_id in (self.logit_bias or {}):
                if not 0 <= token_id < vocab_size:
                    raise bad("logit_bias", f"has token id {token_id} outside [0, {vocab_size})")
            for token_id in self.stop_token_ids:
                if not 0 <= token_id < vocab_size:
                    raise bad("stop_token_ids", f"has token id {token_id} outside [0, {vocab_size})")
            for ids in self.bad_words_token_ids or ():
                if not ids or any(not 0 <= t < vocab_size for t in ids):
                    raise bad("bad_words", f"has a word whose token ids {ids} are not all in "
                              f"[0, {vocab_size})")
            for token_id in self.allowed_token_ids or ():
                if not 0 <= token_id < vocab_size:
                    raise bad("allowed_token_ids",
                              f"has token id {token_id} outside [0, {vocab_size})")
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            raise bad("allowed_token_ids", "must not be empty")
        if self.cache_salt is not None and not self.cache_salt:
            raise bad("cache_salt", "must be a non-empty string")
        if self.structured_outputs is not None:
            self.structured_outputs.validate()
        if self.logit_bias:
            for token_id, bias in self.logit_bias.items():
                if not -100.0 <= bias <= 100.0:
                    raise bad("logit_bias", f"value for token {token_id} must be in [-100, 100], got {bias}")
        return self
