"""Speculative decoding by prompt lookup: which sequences draft, how many tokens, and what the
device's samples accept (host side, no jax).

A decoding sequence with d draft tokens is one attention row of d + 1 queries (its last token, then
the drafts) and d + 1 sample rows: position j samples with the request's own parameters and the
random stream of output index ``num_sampled + j``, exactly as plain decoding would sample that
token. The host keeps the drafts while they equal the samples, then takes the sample after the
last kept draft too, so the tokens are those speculation-off decoding gives (greedy or seeded). The
K/V of rejected positions are rolled back by shrinking the sequence's computed length; the next
step overwrites them, and pages that only they filled are freed.

Rows the host must prepare token by token (a grammar, penalties, bad words) never draft. A
sequence whose lookups keep missing or whose drafts keep being rejected stops drafting for a
number of steps that doubles with each miss (``MAX_BACKOFF``), so a workload with nothing to look
up runs as without speculation. Draft lengths start short and grow once a whole draft is accepted
(``FIRST_LENGTH``), so a miss costs a short verification row, a long copy a long one.

Drafts take sample rows, and a step has as many as its widest sequence bucket: the rows the
running sequences leave over are shared among them, so a full batch does not draft.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxserve.config import SpeculativeConfig
from jaxserve.engine.ngram_proposer import NgramIndex
from jaxserve.engine.sequence import Sequence

MAX_BACKOFF = 128  # steps a sequence sits out after repeated misses, at most
FIRST_LENGTH = 3  # drafts at first and after a miss: with its own token, a 4-token row


@dataclass
class DraftState:
    """One sequence's lookup index and back-off."""

    index: NgramIndex
    length: int  # drafts it proposes next, at most
    misses: int = 0  # consecutive steps whose lookup failed or whose drafts were all rejected
    wait: int = 0  # decode steps left before it looks up again


@dataclass
class SpecStats:
    """vLLM's spec_decode counters."""

    num_drafts: int = 0  # verification rows run
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)


class Speculator:
    def __init__(self, config: SpeculativeConfig, max_model_len: int, max_rows: int):
        """max_rows: the sample rows a step can have (the widest sequence bucket)."""
        self.config = config
        self.k = config.num_speculative_tokens
        self.max_model_len = max_model_len
        self.max_rows = max_rows
        self.stats = SpecStats(accepted_per_position=[0] * self.k)

    def _state(self, seq: Sequence) -> DraftState:
        if seq.draft_state is None:
            seq.draft_state = DraftState(NgramIndex(self.config.prompt_lookup_min,
                                                    self.config.prompt_lookup_max),
                                         length=min(self.k, FIRST_LENGTH))
        return seq.draft_state

    def may_draft(self, seq: Sequence, num_running: int) -> bool:
        """Whether seq would look up drafts at its next decode step: the engine then keeps the
        step after this one until its token is on the host, rather than launching it blind."""
        limit = self.config.disable_by_batch_size
        if (seq.host_feeds_each_step or (limit is not None and num_running > limit)
                or self.rows_each(num_running) < 1):
            return False
        return seq.draft_state is None or seq.draft_state.wait == 0

    def rows_each(self, num_running: int) -> int:
        """The draft rows each running sequence may take."""
        return (self.max_rows - num_running) // max(num_running, 1)

    def propose(self, seq: Sequence, budget: int, num_running: int,
                look_ahead: bool = False) -> list[int]:
        """Drafts for seq's decode step, within budget tokens beside its own one and its
        max_tokens and context; counts down a back-off instead. A look-ahead step drafts
        nothing: its last token is still on the device."""
        if look_ahead or not self.may_draft(seq, num_running):
            if seq.draft_state is not None and seq.draft_state.wait > 0:
                seq.draft_state.wait -= 1
            return []
        state = self._state(seq)
        room = min(state.length, self.rows_each(num_running), budget - 1,
                   seq.request.max_tokens - seq.num_sampled_tokens - 1,
                   self.max_model_len - seq.num_scheduled_tokens - 1)
        if room <= 0:
            return []
        drafts = state.index.propose(seq.token_ids, room)
        if not drafts:
            self._missed(seq.draft_state)
        return drafts

    def accepted(self, seq: Sequence, drafts: list[int], num_accepted: int) -> None:
        """Count a verification row whose first num_accepted drafts the samples matched."""
        stats = self.stats
        stats.num_drafts += 1
        stats.num_draft_tokens += len(drafts)
        stats.num_accepted_tokens += num_accepted
        for j in range(num_accepted):
            stats.accepted_per_position[j] += 1
        state = self._state(seq)
        if num_accepted == len(drafts):  # a whole draft: try one that fills the next rung
            state.length = min(self.k, 4 * (state.length + 1) - 1)
        if num_accepted:
            state.misses = 0
        else:
            state.length = min(self.k, FIRST_LENGTH)
            self._missed(state)

    @staticmethod
    def _missed(state: DraftState) -> None:
        state.misses += 1
        state.wait = min(2 ** (state.misses - 1), MAX_BACKOFF) if state.misses > 1 else 0
