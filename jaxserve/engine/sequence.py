"""Requests and their sequences: the state the scheduler and the postprocessor share.

A request with n samples owns n sequences. Only the first is scheduled at first; the others wait
as ``forks`` until its prompt is computed, then sample their first token from the same logits
and take its pages (shared full pages, a copy of the partial last one).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from jaxserve.engine.constraints import Constraint
from jaxserve.outputs import StepLogprobs
from jaxserve.sampling_params import SamplingParams

if TYPE_CHECKING:  # speculation.py imports this module
    from jaxserve.engine.speculation import DraftState


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FORK_PENDING = "fork_pending"  # a sample of an n>1 request whose prompt is not computed yet
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    seq_id: int
    request: Request
    index: int  # which of the request's n samples
    token_ids: list[int]  # prompt, then output
    num_prompt_tokens: int
    rng_key: np.ndarray  # u32[2]: this sample's own random stream
    status: Status = Status.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    # tokens sampled by a step still on the device: counted by the scheduler (which may schedule
    # the next one before they reach the host), not yet in token_ids
    num_pending: int = 0
    pages: list[int] = field(default_factory=list)
    page_keys: list = field(default_factory=list)  # prefix-cache keys of the full pages computed
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    finish_reason: str | None = None
    finish_emitted: bool = False  # the delta carrying finish_reason has gone out
    stop_reason: str | int | None = None
    logprobs: list[StepLogprobs] | None = None
    num_preemptions: int = 0
    constraint: Constraint | None = None  # built at admission, on the caller's thread
    draft_state: DraftState | None = None  # its lookup index and back-off, once it drafts
    # filled by the detokenizer
    output_text: str = ""
    num_emitted_tokens: int = 0
    num_emitted_chars: int = 0

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_scheduled_tokens(self) -> int:
        """Known tokens plus those still on the device: the scheduler's view of the length."""
        return len(self.token_ids) + self.num_pending

    @property
    def num_sampled_tokens(self) -> int:
        """Output tokens sampled so far, including those still on the device."""
        return self.num_output_tokens + self.num_pending

    @property
    def host_feeds_each_step(self) -> bool:
        """Its next step needs its last token on the host first: a grammar's mask, a
        penalty's history or a bad word's prefix. Such a sequence gets neither multi-step decode
        nor a look-ahead."""
        p = self.params
        return self.constraint is not None or p.has_penalties or p.bans_by_history

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_scheduled_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved: never past the model's context
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    last_token_time: float | None = None
    seqs: list[Sequence] = field(default_factory=list)
    # prompt_logprobs asked: [None] then each prompt token's, as collected (prompt_logprobs.py)
    prompt_logprobs: list[StepLogprobs | None] | None = None
    prompt_logprobs_emitted: bool = False

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return all(seq.is_finished for seq in self.seqs)
