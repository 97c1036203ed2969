"""What the scheduler decides for one step: which sequences compute how many tokens, and which
get a next token (host side, no jax)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from jaxserve.engine.sequence import Sequence


@dataclass
class ScheduledSeq:
    seq: Sequence
    start: int  # num_computed_tokens before this step
    num_new_tokens: int  # tokens computed this step; 0 for a fork row
    sample: bool  # this row yields the sequence's next token
    logits_from: Sequence | None = None  # a fork row samples from its leader's last-token logits
    # prompt positions [prompt_logprob_start, + num_prompt_logprobs) whose logprobs this step
    # computes (engine/prompt_logprobs.py)
    prompt_logprob_start: int = 0
    num_prompt_logprobs: int = 0
    # draft tokens this decode row verifies (engine/speculation.py): they follow its last token
    # in the row's queries, and the row takes len + 1 sample rows
    draft_tokens: list[int] = field(default_factory=list)

    @property
    def num_sample_slots(self) -> int:
        return 1 + len(self.draft_tokens) if self.sample else 0


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    page_copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst), run first
    preempted: list[Sequence] = field(default_factory=list)
    num_steps: int = 1  # > 1: a decode-only batch runs this many steps in one device call

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def num_prompt_logprobs(self) -> int:
        return sum(s.num_prompt_logprobs for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @cached_property
    def attention_rows(self) -> list[ScheduledSeq]:
        """The rows that compute tokens this step, in the step's attention row order."""
        return [s for s in self.scheduled if s.num_new_tokens > 0]

    @cached_property
    def sample_rows(self) -> list[ScheduledSeq]:
        """The rows that get a next token, in the step's sample row order."""
        return [s for s in self.scheduled if s.sample]

    @cached_property
    def sample_row_starts(self) -> list[int]:
        """Each sample row's first row in the step's sample row space (a row with d drafts
        takes d + 1), and the rows in use last."""
        starts = [0]
        for s in self.sample_rows:
            starts.append(starts[-1] + s.num_sample_slots)
        return starts

    @property
    def has_drafts(self) -> bool:
        return any(s.draft_tokens for s in self.scheduled)
