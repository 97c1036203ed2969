"""Continuous batching with chunked prefill and preemption by recompute (host side, no jax).

Each step has a token budget (``max_num_batched_tokens``) and a sequence budget
(``max_num_seqs``). Running sequences go first, decodes before prefill chunks, so a long prompt
never stalls the tokens already streaming; then waiting sequences are admitted in arrival order
while budget and pages last. When a running sequence needs a page and none is free, the most
recently admitted running sequence is preempted: its pages are freed and it will recompute its
prompt and output so far when readmitted. How a step fits the compiled buckets (the rung-below
budget, multi-step decode) is ``step_fit.py``'s.

With async scheduling the engine asks for step N+1 while step N still runs (``look_ahead``): the
tokens step N samples are then ``num_pending`` on their sequences, counted here but not yet known,
and the device feeds them to step N+1 itself. Such a step preempts nobody (a preempted sequence
would need the tokens it has not got yet to recompute) and skips sequences that step N surely
finishes (their max_tokens reached).
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from jaxserve.config import SchedulerConfig
from jaxserve.engine import prompt_logprobs
from jaxserve.engine.page_allocator import PageAllocator
from jaxserve.engine.scheduler_output import ScheduledSeq, SchedulerOutput
from jaxserve.engine.sequence import Sequence, Status
from jaxserve.engine.speculation import Speculator
from jaxserve.engine.step_fit import extend_decodes, token_budget

__all__ = ["ScheduledSeq", "Scheduler", "SchedulerOutput"]


class Scheduler:
    def __init__(self, config: SchedulerConfig, allocator: PageAllocator, max_model_len: int,
                 speculator: Speculator | None = None):
        self.config = config
        self.speculator = speculator  # drafts decode rows when speculative decoding is on
        self.max_model_len = max_model_len
        self.allocator = allocator
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.pending_copies: list[tuple[int, int]] = []
        self.num_preemptions = 0

    # ---- queue management -------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Take a sequence out of the queues for good and give its pages back."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        self._release_pages(seq)
        seq.status = Status.FINISHED

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def _pending_forks(self, seq: Sequence) -> list[Sequence]:
        if seq.index != 0:
            return []
        return [s for s in seq.request.seqs if s.status is Status.FORK_PENDING]

    def _reserved_slots(self) -> int:
        return sum(len(self._pending_forks(s)) for s in self.running)

    # ---- the step -----------------------------------------------------------------------------
    def schedule(self, look_ahead: bool = False) -> SchedulerOutput:
        out = SchedulerOutput(scheduled=[], page_copies=self.pending_copies)
        self.pending_copies = []
        scheduled_ids: set[int] = set()
        short_of_pages = False

        running = [s for s in self.running if not (look_ahead and self._surely_done(s))]
        decodes = [s for s in running if s.num_uncomputed_tokens == 1]
        prefills = [s for s in running if s.num_uncomputed_tokens > 1]
        drafts = self._drafts(decodes, look_ahead)
        budget = self._budget(decodes + prefills, drafts)
        for seq in decodes + prefills:
            if budget == 0:
                break
            if seq.status is not Status.RUNNING:  # preempted earlier in this loop
                continue
            num_new = min(seq.num_uncomputed_tokens, budget)
            if not self._make_room(seq, num_new, scheduled_ids, out, preempt=not look_ahead):
                short_of_pages = True
                continue
            extra = self._room_for_drafts(seq, drafts.get(seq.seq_id, [])[:budget - num_new])
            self._schedule(seq, num_new, out, scheduled_ids, extra)
            budget -= num_new + len(extra)

        # vLLM's rule: admit nobody in a step that had to preempt, pages are short
        while self.waiting and budget > 0 and not (out.preempted or short_of_pages):
            seq = self.waiting[0]
            slots = 1 + len(self._pending_forks(seq))
            if len(self.running) + self._reserved_slots() + slots > self.config.max_num_seqs:
                break
            if not seq.pages and not prompt_logprobs.pending(seq):
                self._take_cached_prefix(seq)
            num_new = min(seq.num_uncomputed_tokens, budget)
            needed = self.allocator.pages_needed(seq.num_computed_tokens + num_new) - len(seq.pages)
            if not self.allocator.can_allocate(needed):
                self._release_pages(seq)  # give the cached prefix back; it stays cached
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            seq.pages += self.allocator.allocate(needed)
            self._schedule(seq, num_new, out, scheduled_ids)
            budget -= num_new
        self._fit_drafts(out)
        extend_decodes(out, self.config, self.allocator, self.max_model_len)
        return out

    def _drafts(self, decodes: list[Sequence], look_ahead: bool) -> dict[int, list[int]]:
        """seq_id -> the draft tokens each decode would verify this step (speculation.py)."""
        if self.speculator is None:
            return {}
        # each decode's share of the sample rows keeps their drafts within the widest bucket
        budget, num_running = self.config.max_num_batched_tokens, len(self.running)
        drafts = {}
        for seq in decodes:
            proposed = self.speculator.propose(seq, budget, num_running, look_ahead)
            if proposed:
                drafts[seq.seq_id] = proposed
        return drafts

    def _fit_drafts(self, out: SchedulerOutput) -> None:
        """Drop the last drafts of the step when its sample rows (the rows that joined after the
        drafts were picked too) pass the widest sequence bucket, and the pages they took."""
        over = sum(s.num_sample_slots for s in out.scheduled) - self.config.seq_buckets[-1]
        for s in reversed(out.scheduled):
            if over <= 0:
                return
            cut = min(over, len(s.draft_tokens))
            if cut:
                del s.draft_tokens[-cut:]
                s.num_new_tokens -= cut
                over -= cut
                self.roll_back(s.seq, s.seq.num_computed_tokens - cut)

    def _room_for_drafts(self, seq: Sequence, drafts: list[int]) -> list[int]:
        """The drafts whose pages are free now: a draft never preempts anyone."""
        needed = self.allocator.pages_needed(seq.num_computed_tokens + 1 + len(drafts))
        return drafts if self.allocator.can_allocate(needed - len(seq.pages)) else []

    def _budget(self, running: list[Sequence], drafts: dict[int, list[int]]) -> int:
        """This step's token budget (``step_fit.token_budget``), from what the running
        sequences (their drafts too) and then the waiting ones that have a seat want, in
        scheduling order."""
        budget = self.config.max_num_batched_tokens
        wants = [s.num_uncomputed_tokens + len(drafts.get(s.seq_id, ())) for s in running]
        wanted = sum(wants)
        seats = self.config.max_num_seqs - len(self.running) - self._reserved_slots()
        for seq in islice(self.waiting, max(seats, 0)):
            if wanted >= budget:
                break
            cached = 0 if seq.pages or prompt_logprobs.pending(seq) \
                else self.allocator.cached_prefix_len(seq.token_ids[:-1], seq.params.cache_salt)
            wants.append(seq.num_uncomputed_tokens - cached)
            wanted += wants[-1]
        return token_budget(self.config.token_buckets, budget, wants)

    def _surely_done(self, seq: Sequence) -> bool:
        """A token on the device is this sequence's last: no step after it is worth running."""
        return seq.num_pending > 0 and (seq.num_sampled_tokens >= seq.request.max_tokens
                                        or seq.num_scheduled_tokens >= self.max_model_len)

    def _take_cached_prefix(self, seq: Sequence) -> None:
        # the last token is always computed: its logits are what the step is for
        pages, keys = self.allocator.lookup(seq.token_ids[:-1], seq.params.cache_salt)
        seq.pages, seq.page_keys = pages, keys
        seq.num_computed_tokens = len(pages) * self.allocator.page_size
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = seq.num_computed_tokens

    def _release_pages(self, seq: Sequence) -> None:
        self.allocator.free(seq.pages)
        seq.pages, seq.page_keys = [], []
        seq.num_computed_tokens = 0

    def _schedule(self, seq: Sequence, num_new: int, out: SchedulerOutput, ids: set[int],
                  drafts: list[int] = ()) -> None:
        """drafts: tokens a decode row verifies after its own (its pages are allocated here)."""
        sample = seq.num_computed_tokens + num_new == seq.num_scheduled_tokens
        first, count = prompt_logprobs.chunk_positions(seq, seq.num_computed_tokens, num_new)
        out.scheduled.append(ScheduledSeq(
            seq, seq.num_computed_tokens, num_new + len(drafts), sample,
            prompt_logprob_start=first, num_prompt_logprobs=count, draft_tokens=list(drafts)))
        ids.add(seq.seq_id)
        if drafts:
            needed = self.allocator.pages_needed(seq.num_computed_tokens + num_new + len(drafts))
            seq.pages += self.allocator.allocate(needed - len(seq.pages))
        # the drafts' K/V count as computed until the host accepts or rolls them back
        seq.num_computed_tokens += num_new + len(drafts)
        # pages this step fills are offered to the prefix cache now: a sequence that finds one
        # later (or later in this step: every layer writes K/V before it attends) reads it after
        # this step wrote it, since steps run in order
        full = min(seq.num_computed_tokens, len(seq.token_ids)) // self.allocator.page_size
        self.allocator.register(seq.page_keys, seq.token_ids, seq.pages, full,
                                seq.params.cache_salt)
        if sample:
            for fork in self._pending_forks(seq):
                out.scheduled.append(ScheduledSeq(fork, 0, 0, True, logits_from=seq))

    def _make_room(self, seq: Sequence, num_new: int, scheduled_ids: set[int],
                   out: SchedulerOutput, preempt: bool = True) -> bool:
        """Allocate pages for num_new more tokens of seq, preempting others if needed (and
        allowed; if not, seq waits for a step that may)."""
        needed = self.allocator.pages_needed(seq.num_computed_tokens + num_new) - len(seq.pages)
        while not self.allocator.can_allocate(needed):
            if not preempt:
                return False
            victims = [s for s in self.running if s.seq_id not in scheduled_ids]
            victim = victims[-1]  # the latest admitted; seq itself is among them
            self.preempt(victim)
            out.preempted.append(victim)
            if victim is seq:
                return False
        seq.pages += self.allocator.allocate(needed)
        return True

    def roll_back(self, seq: Sequence, num_computed: int) -> None:
        """After verification: keep the K/V of num_computed tokens (the rest held rejected
        drafts, which later steps overwrite) and free the pages only those filled."""
        seq.num_computed_tokens = num_computed
        # the pages of every known token (the next step writes the last) and of drafts kept
        keep = self.allocator.pages_needed(max(seq.num_scheduled_tokens, num_computed))
        if len(seq.pages) > keep:
            self.allocator.free(seq.pages[keep:])
            del seq.pages[keep:]

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release_pages(seq)
        seq.num_preemptions += 1
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def fork(self, leader: Sequence, fork: Sequence) -> None:
        """After the leader's prompt is computed: a fork shares its full pages and copies the
        partial last page (copy-on-write done eagerly, since the leader writes there next)."""
        page_size = self.allocator.page_size
        num_full = fork.num_prompt_tokens // page_size
        fork.pages = self.allocator.share(leader.pages[:num_full])
        fork.page_keys = leader.page_keys[:num_full]
        fork.status = Status.RUNNING
        if fork.num_prompt_tokens % page_size:
            if not self.allocator.can_allocate(1):  # no page for the copy: recompute later
                self._release_pages(fork)
                fork.status = Status.WAITING
                self.waiting.appendleft(fork)
                return
            (copy,) = self.allocator.allocate(1)
            self.pending_copies.append((leader.pages[num_full], copy))
            fork.pages.append(copy)
        fork.num_computed_tokens = fork.num_prompt_tokens
        self.running.append(fork)
