"""Prompt logprobs on the host: which positions of a step's chunks need them, the arrays that
name them, and the results back onto their request (no jax).

Position p of a prompt predicts prompt token p + 1, so a prompt of N tokens has N - 1 logprobs and
token 0 has none (None first, as vLLM). A chunk [start, start + n) computes positions start ..
start + n - 1: the last position of chunk i gives the logprob of chunk i + 1's first token. The
leader sequence of a request computes them and ``Request.prompt_logprobs`` collects them in
position order (steps are postprocessed in launch order); a recompute after a preemption skips the
positions already collected.

A request that still needs them takes nothing from the prefix cache (vLLM's rule): a cached
position is never computed, so it would have no hidden state to read a logprob from. Its pages are
still offered to the cache, and once its logprobs are all in (a preempted request readmitted),
it looks the cache up again.

The device computes them only in a step that carries such positions, with the prompt-logprob
program of the bucket(s) ``buckets.prompt_logprob_buckets`` names (``runner/prompt_logprobs.py``).
"""

from __future__ import annotations

import numpy as np

from jaxserve.engine.scheduler_output import SchedulerOutput
from jaxserve.engine.sequence import Sequence
from jaxserve.interfaces import PromptLogprobArrays, PromptLogprobResult
from jaxserve.outputs import StepLogprobs, TokenLogprob

# positions per block the device takes through the LM head at once: its [block, vocab] logits
# are the most that exist at one time
BLOCK = 64


def capacity(num_tokens: int) -> int:
    """Q, the positions a step of ``num_tokens`` tokens can carry, in whole blocks."""
    return -(-num_tokens // BLOCK) * BLOCK


def pending(seq: Sequence) -> bool:
    """Whether seq has prompt positions whose logprobs are not collected yet."""
    collected = seq.request.prompt_logprobs
    return seq.index == 0 and collected is not None and len(collected) < seq.num_prompt_tokens


def chunk_positions(seq: Sequence, start: int, num_new: int) -> tuple[int, int]:
    """(first position, count) of the chunk [start, start + num_new) whose logprobs are due."""
    collected = seq.request.prompt_logprobs
    if seq.index != 0 or collected is None:
        return start, 0
    # positions below len(collected) - 1 are in already (a recompute after a preemption)
    first = max(start, len(collected) - 1)
    end = min(start + num_new, seq.num_prompt_tokens - 1)
    return first, max(0, end - first)


def build_arrays(sched: SchedulerOutput, row_offsets: list[int], q: int) -> PromptLogprobArrays:
    """The step's positions packed into Q slots; row_offsets: each attention row's first token
    row in the step."""
    token_rows = np.zeros(q, np.int32)
    targets = np.zeros(q, np.int32)
    used = 0
    for s, offset in zip(sched.attention_rows, row_offsets):
        count = s.num_prompt_logprobs
        if not count:
            continue
        first = s.prompt_logprob_start
        token_rows[used:used + count] = np.arange(count) + offset + (first - s.start)
        targets[used:used + count] = s.seq.token_ids[first + 1:first + 1 + count]
        used += count
    assert used <= q, (used, q)
    return PromptLogprobArrays(token_rows=token_rows, targets=targets,
                               num_positions=np.array([used], np.int32))


def collect(sched: SchedulerOutput, result: PromptLogprobResult) -> None:
    """Append each row's logprobs to its request, with as many top entries as it asked for."""
    slot = 0
    for s in sched.attention_rows:
        count = s.num_prompt_logprobs
        if not count:
            continue
        seq, k = s.seq, s.seq.params.prompt_logprobs
        collected = seq.request.prompt_logprobs
        for j in range(count):
            pos = s.prompt_logprob_start + j
            if len(collected) == pos + 1:  # in order, once each
                ids, lps = result.top_ids[slot + j], result.top_logprobs[slot + j]
                top = [TokenLogprob(int(ids[i]), float(lps[i])) for i in range(k)]
                collected.append(StepLogprobs(seq.token_ids[pos + 1],
                                              float(result.logprobs[slot + j]), top,
                                              rank=int(result.ranks[slot + j])))
        slot += count
