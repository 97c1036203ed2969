"""Prompt logprobs on the wire, as vLLM sends them, and the prompt part of an echo.

``prompt_logprobs`` (chat: on the response; completions: on each choice) is a list with one entry
per prompt token: ``null`` for the first (nothing precedes it), then ``{token_id: {logprob, rank,
decoded_token}}`` holding the prompt token itself first, then the top-k (ranks 1..k). A stream
does not carry them, as vLLM's does not; completions ``echo`` with ``logprobs`` puts them at the
head of ``logprobs`` instead, where the first token's logprob and top_logprobs are null (OpenAI's
legacy API).
"""

from __future__ import annotations

from jaxserve.entrypoints.completion_protocol import CompletionLogprobs
from jaxserve.entrypoints.logprobs import TokenStrings, finite
from jaxserve.entrypoints.protocol import PromptLogprob
from jaxserve.outputs import StepLogprobs

PromptLogprobs = list[dict[int, PromptLogprob] | None]  # JSON turns the ids into string keys


def prompt_logprobs_entries(steps: list[StepLogprobs | None],
                            token_str: TokenStrings) -> PromptLogprobs:
    entries: PromptLogprobs = []
    for step in steps:
        if step is None:
            entries.append(None)
            continue
        entry = {step.token_id: PromptLogprob(finite(step.logprob), step.rank,
                                              token_str(step.token_id))}
        for rank, alt in enumerate(step.top, 1):
            entry.setdefault(alt.token_id, PromptLogprob(finite(alt.logprob), rank,
                                                         token_str(alt.token_id)))
        entries.append(entry)
    return entries


def echo_logprobs(prompt_ids: list[int], steps: list[StepLogprobs | None], k: int,
                  token_str: TokenStrings) -> tuple[CompletionLogprobs, int]:
    """The legacy arrays of the prompt (an echo's head), with at most k + 1 top entries per
    token (the prompt token and the top k, as for generated ones); returns them and the text
    offset after the last prompt token."""
    out = CompletionLogprobs(text_offset=[], token_logprobs=[], tokens=[], top_logprobs=[])
    offset = 0
    for token_id, step in zip(prompt_ids, steps):
        token = token_str(token_id)
        out.tokens.append(token)
        out.text_offset.append(offset)
        offset += len(token)
        if step is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        top: dict[str, float] = {}
        for alt in step.top[:k]:
            top.setdefault(token_str(alt.token_id), finite(alt.logprob))
        top.setdefault(token, finite(step.logprob))
        out.token_logprobs.append(finite(step.logprob))
        out.top_logprobs.append(top)
    return out, offset


def join(head: CompletionLogprobs, tail: CompletionLogprobs | None) -> CompletionLogprobs:
    """An echo's prompt arrays, then the generated tokens' (their offsets already follow)."""
    if tail is None:
        return head
    return CompletionLogprobs(text_offset=head.text_offset + tail.text_offset,
                              token_logprobs=head.token_logprobs + tail.token_logprobs,
                              tokens=head.tokens + tail.tokens,
                              top_logprobs=head.top_logprobs + tail.top_logprobs)
