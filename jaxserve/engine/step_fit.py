"""How a scheduled step fits the compiled buckets (host side, no jax).

- ``token_budget``: a step whose tokens pass a token rung by a few takes that rung's worth
  instead; the few wait a step rather than pad this one up a whole rung (``buckets.snap_down``).
- ``extend_decodes``: a decode-only batch runs ``num_decode_steps`` steps in one device call when
  every sequence can, so the host is visited once per K tokens.
"""

from __future__ import annotations

from jaxserve.config import SchedulerConfig
from jaxserve.engine.buckets import snap_down
from jaxserve.engine.page_allocator import PageAllocator
from jaxserve.engine.scheduler_output import SchedulerOutput


def token_budget(token_buckets: list[int], max_tokens: int, wants: list[int]) -> int:
    """The step's token budget: ``max_tokens``, or the rung just below the tokens the step would
    take when it passes that rung by a few and the last chunk (``wants[-1]``, what the last
    sequence in scheduling order wants) can give them up."""
    if not wants:
        return max_tokens
    wanted = sum(wants)
    total = min(wanted, max_tokens)
    last_chunk = wants[-1] - (wanted - total)  # what the budget leaves the last one
    target = snap_down(token_buckets, total)
    return target if total - target < last_chunk else max_tokens


def extend_decodes(out: SchedulerOutput, config: SchedulerConfig, allocator: PageAllocator,
                   max_model_len: int) -> None:
    """Let a decode-only batch run num_decode_steps steps per device call, when every sequence
    can: no grammar or penalty (the host sets those between steps), no pending min_tokens, room
    in its context and pages for the extra tokens."""
    k, limit = config.num_decode_steps, config.multi_step_max_seqs
    if k == 1 or not out.scheduled or out.page_copies or (
            limit is not None and len(out.scheduled) > limit):
        return
    for s in out.scheduled:
        seq, p = s.seq, s.seq.params
        if (s.num_new_tokens != 1 or not s.sample or s.logits_from is not None
                or seq.host_feeds_each_step or seq.num_sampled_tokens < p.min_tokens
                or seq.num_scheduled_tokens + k - 1 > max_model_len):
            return
    extra = [allocator.pages_needed(s.seq.num_computed_tokens + k - 1) - len(s.seq.pages)
             for s in out.scheduled]
    if not allocator.can_allocate(sum(extra)):
        return
    for s, n in zip(out.scheduled, extra):
        s.seq.pages += allocator.allocate(n)
        s.seq.num_computed_tokens += k - 1  # the k - 1 tokens sampled inside the call
    out.num_steps = k
