"""What the engine hands back for a request (host side, no jax).

The engine emits one ``RequestOutput`` per request per step in which anything changed; each
``CompletionOutput`` carries the *new* tokens and text of one of the n samples since the last
output (a delta), so streaming layers forward them as they come and non-streaming layers
concatenate them.
"""

from __future__ import annotations

import msgspec


class TokenLogprob(msgspec.Struct, array_like=True):
    token_id: int
    logprob: float


class StepLogprobs(msgspec.Struct):
    """Logprob of the sampled token and the top-k alternatives at one position."""

    token_id: int
    logprob: float
    top: list[TokenLogprob]  # the top-k, best first (empty when k == 0)
    rank: int | None = None  # a prompt token's rank in its distribution (1: the likeliest)


class CompletionOutput(msgspec.Struct, kw_only=True):
    index: int  # which of the n samples
    text: str  # new text since the previous output of this sample
    token_ids: list[int]  # new tokens since the previous output
    logprobs: list[StepLogprobs] | None = None  # one per token in token_ids, when asked
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: str | int | None = None  # the stop string or stop token id that matched
    num_output_tokens: int = 0  # total so far for this sample


class RequestOutput(msgspec.Struct, kw_only=True):
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    # when asked: one per prompt token, None for the first (it has no context), in the first
    # output that has them all
    prompt_logprobs: list[StepLogprobs | None] | None = None


def merge_delta(total: RequestOutput | None, delta: RequestOutput) -> RequestOutput:
    """Fold an engine delta into the running total of a request."""
    if total is None:
        total = RequestOutput(request_id=delta.request_id, prompt_token_ids=delta.prompt_token_ids,
                              outputs=[], finished=False)
    by_index = {c.index: c for c in total.outputs}
    for c in delta.outputs:
        acc = by_index.get(c.index)
        if acc is None:
            acc = by_index[c.index] = CompletionOutput(
                index=c.index, text="", token_ids=[], logprobs=[] if c.logprobs is not None else None)
        acc.text += c.text
        acc.token_ids += c.token_ids
        if c.logprobs is not None:
            acc.logprobs = (acc.logprobs or []) + c.logprobs
        acc.finish_reason = c.finish_reason or acc.finish_reason
        acc.stop_reason = c.stop_reason if c.finish_reason else acc.stop_reason
        acc.num_output_tokens = c.num_output_tokens
    total.outputs = [by_index[i] for i in sorted(by_index)]
    total.finished = delta.finished
    if delta.prompt_logprobs is not None:
        total.prompt_logprobs = delta.prompt_logprobs
    total.num_cached_tokens = delta.num_cached_tokens
    return total
