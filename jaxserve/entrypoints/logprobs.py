"""Engine logprobs (token ids) to the API's two logprob shapes: chat's ``content`` list and the
legacy completions' parallel arrays.

A token is shown as its own decoded text, and ``bytes`` as that text's UTF-8 bytes, as vLLM does;
a token holding part of a multi-byte character therefore shows as U+FFFD.
"""

from __future__ import annotations

import math

from jaxserve.entrypoints.chat_protocol import TokenLogprobEntry, TopLogprob
from jaxserve.entrypoints.completion_protocol import CompletionLogprobs
from jaxserve.outputs import StepLogprobs

# JSON has no -inf: a token that top-k or a bias ruled out would be sent as null and break
# clients that parse a float. vLLM sends the same stand-in.
_FLOOR = -9999.0


def finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) and logprob > _FLOOR else _FLOOR


class TokenStrings:
    """Decoded text of single tokens, cached: the same few thousand ids recur in every reply."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self._tokenizer.decode([token_id])
        return text


def chat_logprobs(steps: list[StepLogprobs], token_str: TokenStrings) -> list[TokenLogprobEntry]:
    entries = []
    for step in steps:
        token = token_str(step.token_id)
        top = []
        for alt in step.top:
            alt_token = token_str(alt.token_id)
            top.append(TopLogprob(alt_token, finite(alt.logprob), list(alt_token.encode())))
        entries.append(TokenLogprobEntry(token, finite(step.logprob), list(token.encode()), top))
    return entries


def completion_logprobs(steps: list[StepLogprobs], token_str: TokenStrings,
                        text_offset: int) -> tuple[CompletionLogprobs, int]:
    """The arrays for ``steps``, with offsets counted from ``text_offset`` (characters of text
    already sent for this choice); returns them and the offset after the last token."""
    out = CompletionLogprobs(text_offset=[], token_logprobs=[], tokens=[], top_logprobs=[])
    for step in steps:
        token = token_str(step.token_id)
        # the chosen token plus the top-k, as vLLM: up to k + 1 entries. Tokens that decode to
        # the same string share a key; the likeliest keeps it (the top-k come best first).
        top: dict[str, float] = {}
        for alt in step.top:
            top.setdefault(token_str(alt.token_id), finite(alt.logprob))
        top.setdefault(token, finite(step.logprob))
        out.tokens.append(token)
        out.token_logprobs.append(finite(step.logprob))
        out.top_logprobs.append(top)
        out.text_offset.append(text_offset)
        text_offset += len(token)
    return out, text_offset
